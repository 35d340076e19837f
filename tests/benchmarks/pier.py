"""Pier as users run it: a real redis-server, the health worker and the router as processes, state in Redis.

The settings the suite compares are one table (`PIER_SETTINGS`): a new setting is one line. Values may
name `{otlp_url}`; the local OTLP receiver is started only when some enabled setting uses it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.benchmarks.contenders import Upstreams, post_ok
from tests.benchmarks.layout import JSON_MODEL, OPENAI_CHAT_PATH, SSE_MODEL, Cores, Target, pinned, python_module
from tests.harness import ROOT, ProcessFactory, RedisServer, free_port, http_ok, start_redis

# The concurrency cap per endpoint is set far above the load so the figures show proxy cost, not queueing.
ENDPOINT_MAX_CONCURRENT = 4096
CHECK_INTERVAL = "3s"  # above the profile's 2 s check timeout, as the config demands


@dataclass(frozen=True, slots=True)
class PierSetting:
    name: str
    env: dict[str, str]
    cores: str = "proxy"  # "proxy": pinned like every other proxy; "both": all cores (multi-worker)
    note: str = ""


_OTEL_ON = {"OTEL_SDK_DISABLED": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": "{otlp_url}"}

PIER_SETTINGS: tuple[PierSetting, ...] = (
    PierSetting("pier", {}, note="telemetry off"),
    # Every request traced and exported (traces and metrics) to the suite's local OTLP receiver, plus the
    # Prometheus scrape endpoint's instruments: the whole cost of telemetry on.
    PierSetting(
        "pier-otel",
        {**_OTEL_ON, "OTEL_TRACES_SAMPLER": "always_on", "PIER_PROMETHEUS_METRICS": "true"},
        note="telemetry on, 100 % sampled, OTLP + Prometheus metrics",
    ),
    # The same with 10 % of new traces sampled (metrics still record every request).
    PierSetting(
        "pier-otel-10",
        {
            **_OTEL_ON,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
            "PIER_PROMETHEUS_METRICS": "true",
        },
        note="telemetry on, parentbased_traceidratio 0.1",
    ),
    # The same sampling with traces only (no metric reader): an unsampled request then only passes its trace on.
    PierSetting(
        "pier-otel-10-traces",
        {
            **_OTEL_ON,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
            "OTEL_METRICS_EXPORTER": "none",
        },
        note="traces only (OTEL_METRICS_EXPORTER=none), parentbased_traceidratio 0.1",
    ),
    # Tracing on with nothing sampled, metrics on: what every request pays for telemetry before any span (the
    # hooks, the trace context sent on, the metrics). pier-otel-10 is this plus a tenth of pier-otel's span cost.
    PierSetting(
        "pier-otel-0",
        {**_OTEL_ON, "OTEL_TRACES_SAMPLER": "always_off", "PIER_PROMETHEUS_METRICS": "true"},
        note="telemetry on, nothing sampled: hooks, trace context and metrics only",
    ),
    PierSetting("pier-workers2", {"PIER_WORKERS": "2"}, cores="both", note="PIER_WORKERS=2, unpinned (2 cores)"),
)


def available() -> str | None:
    """None when Pier's services can run here, otherwise why not."""
    for service in ("router", "health"):
        if not (ROOT / "services" / service / "__main__.py").exists():
            return f"services/{service}/__main__.py does not exist yet"
    return None


def config_text(
    endpoints: list[tuple[str, str]], check_interval: str = CHECK_INTERVAL, types: Mapping[str, str] | None = None
) -> str:
    """A Pier config file listing `(name, url)` endpoints: DMR unless `types` names another profile."""
    return yaml.safe_dump(
        {
            "endpoints": [
                {
                    "name": name,
                    "url": url,
                    "type": (types or {}).get(name, "docker-model-runner"),
                    "check_interval": check_interval,
                    "max_concurrent_requests": ENDPOINT_MAX_CONCURRENT,
                }
                for name, url in endpoints
            ]
        },
        sort_keys=False,
    )


@dataclass(slots=True)
class PierStack:
    """Redis + the health worker, shared by every router setting started on top."""

    procs: ProcessFactory
    workdir: Path
    cores: Cores
    redis: RedisServer
    config_file: Path
    aux_pids: list[int] = field(default_factory=list)
    otlp_url: str | None = None

    def base_env(self) -> dict[str, str]:
        return {
            "PIER_REDIS_URL": self.redis.url,
            "PIER_CONFIG_FILE": str(self.config_file),
            "PIER_HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }

    def router(self, setting: PierSetting, *, ready_model: str = JSON_MODEL) -> Target:
        port = free_port()
        env = {**self.base_env(), "PIER_PORT": str(port)}
        env.update({k: v.format(otlp_url=self.otlp_url or "") for k, v in setting.env.items()})
        cpus = self.cores.both if setting.cores == "both" else self.cores.proxy
        body = f'{{"model":"{ready_model}","messages":[{{"role":"user","content":"hi"}}]}}'.encode()
        proc = self.procs.start(
            setting.name,
            pinned(cpus, python_module("services.router")),
            env=env,
            port=port,
            # Ready once a real request routes: the router is up AND the health worker's state reached it.
            ready=lambda p: post_ok(p.url + OPENAI_CHAT_PATH, body),
            ready_timeout_s=90,
        )
        return Target(
            name=setting.name,
            json_url=proc.url + OPENAI_CHAT_PATH,
            sse_url=proc.url + OPENAI_CHAT_PATH,
            roots=[proc.pid],
            description=f"Pier router ({setting.note}); Redis + health worker running",
            aux_roots=list(self.aux_pids),
        )


@contextlib.contextmanager
def stack(
    procs: ProcessFactory,
    workdir: Path,
    cores: Cores,
    endpoints: list[tuple[str, str]],
    *,
    otlp: bool = False,
    check_interval: str = CHECK_INTERVAL,
    types: Mapping[str, str] | None = None,
) -> Iterator[PierStack]:
    """Start redis-server and the health worker for `endpoints`; stop Redis on exit (procs stops the rest)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "pier.yaml"
    config_file.write_text(config_text(endpoints, check_interval, types))
    redis = start_redis(workdir=workdir)
    try:
        pier = PierStack(procs, workdir, cores, redis, config_file)
        health = procs.start("pier-health", pinned(cores.aux, python_module("services.health")), env=pier.base_env())
        pier.aux_pids = [redis.popen.pid, health.pid]
        if otlp:
            port = free_port()
            sink = procs.start(
                "otlp-sink",
                pinned(cores.aux, python_module("tests.benchmarks.otlp_sink", "--port", str(port))),
                port=port,
                ready=lambda p: http_ok(f"{p.url}/stats"),
            )
            pier.otlp_url = sink.url
        yield pier
    finally:
        redis.stop()


def bench_endpoints(up: Upstreams) -> list[tuple[str, str]]:
    """The two endpoints of the main suite: nginx serves the JSON model, the paced server the SSE one."""
    return [(JSON_MODEL, up.json_base), (SSE_MODEL, up.sse_base)]


def settings_needing_otlp() -> bool:
    return any("{otlp_url}" in v for s in PIER_SETTINGS for v in s.env.values())
