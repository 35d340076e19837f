"""What every contender shares: the request bodies, the core layout, and the `Target` a contender exposes."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

from tests.harness import system_binary

JSON_MODEL = "bench-json"  # served by nginx (fixed chat completion)
SSE_MODEL = "bench-sse"  # served by the paced upstream (20 events, 20 ms apart)
SSE_EVENTS = 20  # data events per stream, the final `data: [DONE]` included
SSE_INTERVAL_MS = 20.0

JSON_BODY = json.dumps(
    {"model": JSON_MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16},
    separators=(",", ":"),
).encode()
SSE_BODY = json.dumps(
    {"model": SSE_MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16, "stream": True},
    separators=(",", ":"),
).encode()

DMR_CHAT_PATH = "/engines/v1/chat/completions"  # what DMR answers (direct, nginx, minimal proxy)
OPENAI_CHAT_PATH = "/v1/chat/completions"  # what gateways answer (LiteLLM, Pier)


@dataclass(frozen=True, slots=True)
class Cores:
    """taskset CPU lists. On 2 cores: the proxy under test alone on core 1, everything else on core 0."""

    loadgen: str | None
    proxy: str | None
    aux: str | None  # upstreams, Redis, the health worker, the OTLP sink
    both: str | None

    @classmethod
    def detect(cls, pin: bool) -> Cores:
        cpus = sorted(os.sched_getaffinity(0))
        if not pin or len(cpus) < 2:
            return cls(None, None, None, None)
        return cls(str(cpus[0]), str(cpus[1]), str(cpus[0]), ",".join(str(c) for c in cpus))


def base_env() -> dict[str, str]:
    """The environment for every process started: this one's, minus any PIER_/OTEL_ settings of the caller's
    shell (each contender gets exactly the settings the suite gives it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIER_", "OTEL_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def pinned(cpus: str | None, argv: list[str]) -> list[str]:
    return argv if cpus is None else [system_binary("taskset", "util-linux"), "-c", cpus, *argv]


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@dataclass(slots=True)
class Target:
    """One way to reach the upstream: direct, or through a proxy whose process tree is measured."""

    name: str
    json_url: str
    sse_url: str
    roots: list[int]  # pids of the proxy's process tree (empty for direct)
    description: str
    headers: dict[str, str] = field(default_factory=dict)
    aux_roots: list[int] = field(default_factory=list)  # helpers off the request path (Redis, health worker)
