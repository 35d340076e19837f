"""One measurement round of one target: throughput, latency at concurrency 1, and paced streams."""

from __future__ import annotations

import asyncio
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.benchmarks import procstat, wrk
from tests.benchmarks.layout import SSE_BODY, Cores, Target
from tests.benchmarks.stream_client import run_streams


@dataclass(frozen=True, slots=True)
class Plan:
    duration_s: float
    connections: int
    streams: int
    cores: Cores


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class _Meter:
    """CPU of the target, the upstreams, the helpers, the load generator and everything else, over one run."""

    def __init__(self, target: Target, upstream_roots: list[int]) -> None:
        self.target = target
        self.upstream_roots = upstream_roots
        self.start = time.monotonic()
        self.proxy = procstat.CpuSnapshot.take(target.roots)
        self.upstream = procstat.CpuSnapshot.take(upstream_roots)
        self.aux = procstat.CpuSnapshot.take(target.aux_roots)
        self.loadgen = _children_cpu_s()
        self.system = procstat.system_busy_s()

    def read(self, requests: int) -> dict[str, float]:
        wall = time.monotonic() - self.start
        proxy = procstat.CpuSnapshot.take(self.target.roots).seconds_since(self.proxy)
        upstream = procstat.CpuSnapshot.take(self.upstream_roots).seconds_since(self.upstream)
        aux = procstat.CpuSnapshot.take(self.target.aux_roots).seconds_since(self.aux)
        loadgen = _children_cpu_s() - self.loadgen
        system = procstat.system_busy_s() - self.system
        per = 1e6 / requests if requests else 0.0
        return {
            "cpu_us_per_req": proxy * per,
            "upstream_cpu_us_per_req": upstream * per,
            "aux_cpu_us_per_req": aux * per,
            "proxy_cpu_share": proxy / wall if wall else 0.0,
            "wall_s": wall,
            # Busy CPU that none of the benchmark's processes used: other work on the machine (noise).
            "foreign_cpu_share": max(0.0, system - proxy - upstream - aux - loadgen) / wall if wall else 0.0,
        }


def throughput(target: Target, upstream_roots: list[int], script: Path, plan: Plan) -> dict[str, Any]:
    meter = _Meter(target, upstream_roots)
    result = wrk.run(
        target.json_url, script, connections=plan.connections, duration_s=plan.duration_s, cpus=plan.cores.loadgen
    )
    out: dict[str, Any] = {
        "rps": result.rps,
        "requests": result.requests,
        "p50_us": result.p50_us,
        "p99_us": result.p99_us,
        "errors": result.errors,
        "non_2xx": result.non_2xx,
        **meter.read(result.requests),
        "rss_mib": procstat.tree_rss_mib(target.roots),
    }
    return out


def latency_c1(target: Target, script: Path, plan: Plan) -> dict[str, Any]:
    result = wrk.run(target.json_url, script, connections=1, duration_s=plan.duration_s, cpus=plan.cores.loadgen)
    return {
        "c1_rps": result.rps,
        "c1_p50_us": result.p50_us,
        "c1_p99_us": result.p99_us,
        "c1_errors": result.errors + result.non_2xx,
    }


def streams(target: Target, plan: Plan) -> dict[str, Any]:
    samples = asyncio.run(run_streams(target.sse_url, SSE_BODY, count=plan.streams, headers=target.headers))
    ok = [s for s in samples if s.status == 200]
    if not ok:
        return {"stream_errors": len(samples)}
    events = sum(s.events for s in ok)
    return {
        "stream_ttfb_ms": statistics.median(s.ttfb_s for s in ok) * 1000,
        "stream_first_event_ms": statistics.median(s.first_event_s for s in ok) * 1000,
        "stream_total_ms": statistics.median(s.total_s for s in ok) * 1000,
        # First to last event: ~19 x 20 ms when events pass as produced, ~0 when a proxy buffers the stream.
        "stream_spread_ms": statistics.median(s.last_event_s - s.first_event_s for s in ok) * 1000,
        "stream_events_min": min(s.events for s in ok),
        "stream_max_events_per_read": max(s.max_events_per_read for s in ok),
        # A buffering proxy coalesces nearly every event; a stalled client on a busy machine a stray few.
        "stream_coalesced_pct": 100 * sum(s.coalesced for s in ok) / events if events else 0.0,
        "stream_errors": len(samples) - len(ok),
    }


def round_of(target: Target, upstream_roots: list[int], script: Path, plan: Plan) -> dict[str, Any]:
    """Everything measured for one target in one repetition."""
    return {
        **throughput(target, upstream_roots, script, plan),
        **latency_c1(target, script, plan),
        **streams(target, plan),
    }


def warm_up_json(target: Target, script: Path, plan: Plan) -> None:
    """Open pools and fill caches before anything is recorded."""
    wrk.run(target.json_url, script, connections=min(8, plan.connections), duration_s=1, cpus=plan.cores.loadgen)


def warm_up(target: Target, script: Path, plan: Plan) -> None:
    warm_up_json(target, script, plan)
    asyncio.run(run_streams(target.sse_url, SSE_BODY, count=2, headers=target.headers))
