"""Starting the upstreams and every non-Pier contender as real processes on loopback ports."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.benchmarks import litellm_env, nginx
from tests.benchmarks.layout import (
    DMR_CHAT_PATH,
    JSON_BODY,
    JSON_MODEL,
    OPENAI_CHAT_PATH,
    SSE_EVENTS,
    SSE_INTERVAL_MS,
    SSE_MODEL,
    Cores,
    Target,
    pinned,
    python_module,
)
from tests.harness import ProcessFactory, free_port, http_ok, port_open


@dataclass(frozen=True, slots=True)
class Upstreams:
    json_base: str  # nginx: fixed chat completion, DMR probe routes, fixed SSE body
    sse_base: str  # the paced SSE server
    roots: list[int]


def post_ok(url: str, body: bytes = JSON_BODY, headers: dict[str, str] | None = None) -> bool:
    """One real request answered 200: the readiness check for anything on the request path."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            resp.read()
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_upstreams(procs: ProcessFactory, workdir: Path, cores: Cores) -> Upstreams:
    json_port, sse_port = free_port(), free_port()
    work = workdir / "nginx-up"
    work.mkdir(parents=True, exist_ok=True)
    conf = nginx.upstream_config(work, json_port, [JSON_MODEL], SSE_EVENTS)
    up = procs.start(
        "upstream-nginx",
        pinned(cores.aux, nginx.argv(conf, work)),
        port=json_port,
        ready=lambda p: http_ok(f"{p.url}/engines/v1/models"),
    )
    paced = procs.start(
        "upstream-paced",
        pinned(
            cores.aux,
            python_module(
                "tests.benchmarks.paced_upstream",
                "--port",
                str(sse_port),
                "--events",
                str(SSE_EVENTS),
                "--interval-ms",
                str(SSE_INTERVAL_MS),
                "--model",
                SSE_MODEL,
            ),
        ),
        port=sse_port,
        ready=lambda p: http_ok(f"{p.url}/engines/v1/models"),
    )
    return Upstreams(up.url, paced.url, [up.pid, paced.pid])


def direct(up: Upstreams) -> Target:
    return Target(
        name="direct",
        json_url=up.json_base + DMR_CHAT_PATH,
        sse_url=up.sse_base + DMR_CHAT_PATH,
        roots=[],
        description="client -> upstream, nothing in between (the upstream's own figures)",
    )


def nginx_proxy(procs: ProcessFactory, workdir: Path, up: Upstreams, cores: Cores) -> Target:
    json_port, sse_port = free_port(), free_port()
    work = workdir / "nginx-proxy"
    work.mkdir(parents=True, exist_ok=True)
    conf = nginx.proxy_config(work, [(json_port, up.json_base), (sse_port, up.sse_base)])
    proc = procs.start(
        "nginx-proxy",
        pinned(cores.proxy, nginx.argv(conf, work)),
        port=json_port,
        ready=lambda p: post_ok(p.url + DMR_CHAT_PATH),
    )
    return Target(
        name="nginx",
        json_url=f"http://127.0.0.1:{json_port}{DMR_CHAT_PATH}",
        sse_url=f"http://127.0.0.1:{sse_port}{DMR_CHAT_PATH}",
        roots=[proc.pid],
        description="nginx 1 worker, plain reverse proxy, keep-alive pool, buffering off",
    )


def minimal_proxy(procs: ProcessFactory, up: Upstreams, cores: Cores, *, stream_all: bool = False) -> Target:
    """`minimal`: the floor (one Response for a sized JSON body); `stream_all`: the old floor that streams all."""
    name = "minimal-streaming" if stream_all else "minimal"
    ports = {"json": free_port(), "sse": free_port()}
    pids = []
    for kind, base in (("json", up.json_base), ("sse", up.sse_base)):
        argv = ["--port", str(ports[kind]), "--upstream", base, *(["--stream-all"] if stream_all else [])]
        proc = procs.start(
            f"{name}-{kind}",
            pinned(cores.proxy, python_module("tests.benchmarks.minimal_proxy", *argv)),
            port=ports[kind],
            ready=lambda p: port_open(p.port or 0),
        )
        pids.append(proc.pid)
    what = "streams every answer (the old floor)" if stream_all else "one Response for a sized body: the Python floor"
    return Target(
        name=name,
        json_url=f"http://127.0.0.1:{ports['json']}{DMR_CHAT_PATH}",
        sse_url=f"http://127.0.0.1:{ports['sse']}{DMR_CHAT_PATH}",
        roots=pids,
        description=f"minimal aiohttp proxy (tests/benchmarks/minimal_proxy.py), {what}",
    )


def litellm_proxy(procs: ProcessFactory, workdir: Path, up: Upstreams, cores: Cores, binary: Path) -> Target:
    port = free_port()
    config = workdir / "litellm.yaml"
    config.write_text(
        litellm_env.config_text({JSON_MODEL: up.json_base + "/engines/v1", SSE_MODEL: up.sse_base + "/engines/v1"})
    )
    headers = {"Authorization": f"Bearer {litellm_env.MASTER_KEY}"}
    argv = [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    proc = procs.start(
        "litellm",
        pinned(cores.proxy, [*argv, "--telemetry", "False"]),
        env=litellm_env.env(),
        port=port,
        ready=lambda p: post_ok(p.url + OPENAI_CHAT_PATH, headers=headers),
        ready_timeout_s=180,
    )
    return Target(
        name="litellm",
        json_url=proc.url + OPENAI_CHAT_PATH,
        sse_url=proc.url + OPENAI_CHAT_PATH,
        roots=[proc.pid],
        description=f"LiteLLM proxy {litellm_version(binary)} (1 worker, master key, no DB)",
        headers=headers,
    )


def litellm_version(binary: Path) -> str:
    metadata = list(binary.parent.parent.glob("lib/python*/site-packages/litellm-*.dist-info/METADATA"))
    for line in metadata[0].read_text().splitlines() if metadata else []:
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return "?"
