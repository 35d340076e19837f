"""`python -m tests.benchmarks.memory`: the router's memory targets (issue 6), with the minimal proxy as reference.

1. Many slow streams through one router process: 1,000 concurrent streams (30 events, 500 ms apart) held
   open together; the router's peak RSS must stay under 150 MB.
2. One 1 GiB streamed response (16 KiB events, unpaced): the router's RSS may grow by under 20 MB.

RSS is the sum of VmRSS over the proxy's process tree, sampled every 100 ms; MB here is 10^6 bytes.
Writes memory.md and memory.json into the results folder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.benchmarks import contenders, pier, procstat
from tests.benchmarks.layout import Cores, Target, base_env, pinned, python_module
from tests.benchmarks.stream_client import EVENT_END
from tests.harness import ProcessFactory, free_port, http_ok

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
SLOW_MODEL, BULK_MODEL = "bench-slow", "bench-bulk"
MB = 1_000_000
RSS_LIMIT_MB = 150.0
GROWTH_LIMIT_MB = 20.0


@dataclass(slots=True)
class _Counter(asyncio.Protocol):
    """Counts a response's bytes (keeping them only when asked) and tells when it ended."""

    done: asyncio.Future[None]
    keep: bool
    state: _Flight
    data: list[bytes] = field(default_factory=list)
    size: int = 0
    tail: bytes = b""

    def data_received(self, data: bytes) -> None:
        if self.size == 0:
            self.state.active += 1
            self.state.max_active = max(self.state.max_active, self.state.active)
        self.size += len(data)
        if self.keep:
            self.data.append(data)
        self.tail = (self.tail + data)[-7:]
        if self.tail.endswith(b"\r\n0\r\n\r\n"):
            self._finish()

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            if self.size:
                self.state.active -= 1
            self.done.set_result(None)


@dataclass(slots=True)
class _Flight:
    active: int = 0
    max_active: int = 0


def _request(url: str, model: str) -> tuple[str, int, bytes]:
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    head = (
        f"POST /{path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return host, int(port), head.encode() + body


async def _one(url: str, model: str, flight: _Flight, *, keep: bool, timeout_s: float) -> _Counter:
    host, port, request = _request(url, model)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    transport, counter = await loop.create_connection(lambda: _Counter(done, keep, flight), host, port)
    try:
        transport.write(request)
        await asyncio.wait_for(done, timeout_s)
    finally:
        transport.close()
    return counter


async def _sample_peak(roots: list[int], stop: asyncio.Event, every_s: float = 0.1) -> float:
    peak = 0.0
    while not stop.is_set():
        peak = max(peak, procstat.tree_rss_mib(roots))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
    return max(peak, procstat.tree_rss_mib(roots))


async def _slow_streams(target: Target, count: int, events: int) -> dict[str, Any]:
    flight = _Flight()
    stop = asyncio.Event()
    idle_mib = procstat.tree_rss_mib(target.roots)
    sampler = asyncio.create_task(_sample_peak(target.roots, stop))
    started = time.monotonic()
    results = await asyncio.gather(
        *(_one(target.sse_url, SLOW_MODEL, flight, keep=True, timeout_s=120) for _ in range(count)),
        return_exceptions=True,
    )
    stop.set()
    peak_mib = await sampler
    complete = 0
    for result in results:
        if isinstance(result, _Counter) and len(EVENT_END.findall(b"".join(result.data))) >= events:
            complete += 1
    peak_mb = peak_mib * 1024 * 1024 / MB
    return {
        "streams": count,
        "complete": complete,
        "max_in_flight": flight.max_active,
        "idle_rss_mb": idle_mib * 1024 * 1024 / MB,
        "peak_rss_mb": peak_mb,
        "wall_s": time.monotonic() - started,
        "met": complete == count and flight.max_active >= count * 0.95 and peak_mb < RSS_LIMIT_MB,
    }


async def _bulk(target: Target, total_bytes: int) -> dict[str, Any]:
    flight = _Flight()
    stop = asyncio.Event()
    before_mib = procstat.tree_rss_mib(target.roots)
    sampler = asyncio.create_task(_sample_peak(target.roots, stop, every_s=0.05))
    started = time.monotonic()
    counter = await _one(target.sse_url, BULK_MODEL, flight, keep=False, timeout_s=600)
    wall = time.monotonic() - started
    stop.set()
    peak_mib = await sampler
    growth_mb = (peak_mib - before_mib) * 1024 * 1024 / MB
    return {
        "bytes_received": counter.size,
        "expected_at_least": total_bytes,
        "before_rss_mb": before_mib * 1024 * 1024 / MB,
        "peak_rss_mb": peak_mib * 1024 * 1024 / MB,
        "growth_mb": growth_mb,
        "mb_per_s": counter.size / MB / wall if wall else 0.0,
        "met": counter.size >= total_bytes and growth_mb < GROWTH_LIMIT_MB,
    }


def _paced(procs: ProcessFactory, cores: Cores, name: str, *args: str) -> str:
    port = free_port()
    proc = procs.start(
        name,
        pinned(cores.aux, python_module("tests.benchmarks.paced_upstream", "--port", str(port), *args)),
        port=port,
        ready=lambda p: http_ok(f"{p.url}/engines/v1/models"),
    )
    return proc.url


def run(out: Path, *, streams: int, events: int, interval_ms: float, bulk_bytes: int, pin: bool) -> dict[str, Any]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = out / f"work-memory-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    cores = Cores.detect(pin)
    if cores.loadgen is not None:
        os.sched_setaffinity(0, {int(cores.loadgen)})
    procs = ProcessFactory(workdir, base_env())
    results: dict[str, Any] = {"stamp": stamp, "loadavg_start": Path("/proc/loadavg").read_text().strip()}
    with contextlib.ExitStack() as stack:
        stack.callback(procs.close)
        slow = _paced(
            procs,
            cores,
            "paced-slow",
            "--events",
            str(events),
            "--interval-ms",
            str(interval_ms),
            "--model",
            SLOW_MODEL,
        )
        bulk = _paced(
            procs,
            cores,
            "paced-bulk",
            "--total-bytes",
            str(bulk_bytes),
            "--event-bytes",
            "16384",
            "--model",
            BULK_MODEL,
        )
        targets: list[Target] = []
        for name, base in (("minimal-slow", slow), ("minimal-bulk", bulk)):
            port = free_port()
            proc = procs.start(
                name,
                pinned(
                    cores.proxy,
                    python_module("tests.benchmarks.minimal_proxy", "--port", str(port), "--upstream", base),
                ),
                port=port,
                ready=lambda p: contenders.post_ok(p.url + "/engines/v1/chat/completions"),
            )
            targets.append(Target(name, "", proc.url + "/engines/v1/chat/completions", [proc.pid], "minimal proxy"))
        reason = pier.available()
        if reason is None:
            try:
                pier_stack = stack.enter_context(
                    pier.stack(procs, workdir / "pier", cores, [(SLOW_MODEL, slow), (BULK_MODEL, bulk)])
                )
                router = pier_stack.router(pier.PIER_SETTINGS[0], ready_model=SLOW_MODEL)
            except AssertionError as exc:  # harness.Timeout, with the process output
                reason = str(exc)[-600:]
            else:
                # The big response first, on a fresh router: after the slow streams, memory they freed would
                # hide growth.
                targets.append(Target("pier-bulk", "", router.sse_url, router.roots, router.description))
                targets.append(Target("pier-slow", "", router.sse_url, router.roots, router.description))
        if reason is not None:
            results["pier_unavailable"] = reason
            print(f"Pier not measured: {reason}", flush=True)
        for target in targets:
            print(f"{target.name} …", flush=True)
            if target.name.endswith("-slow"):
                results[target.name] = asyncio.run(_slow_streams(target, streams, events))
            else:
                results[target.name] = asyncio.run(_bulk(target, bulk_bytes))
    results["loadavg_end"] = Path("/proc/loadavg").read_text().strip()
    return results


def markdown(results: dict[str, Any], streams: int, bulk_mib: int) -> str:
    lines = [
        f"Memory run {results['stamp']} (load average {results['loadavg_start']} -> {results['loadavg_end']}).",
        "",
        f"| {streams:,} slow streams | complete | max in flight | idle RSS MB | peak RSS MB | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name in ("minimal-slow", "pier-slow"):
        r = results.get(name)
        if r:
            goal = f"< {RSS_LIMIT_MB:g} MB: {'met' if r['met'] else '**not met**'}" if name.startswith("pier") else "-"
            lines.append(
                f"| {name.removesuffix('-slow')} | {r['complete']:,} | {r['max_in_flight']:,} "
                f"| {r['idle_rss_mb']:.1f} | {r['peak_rss_mb']:.1f} | {goal} |"
            )
    lines += [
        "",
        f"| {bulk_mib:,} MiB streamed response | received MB | RSS before MB | peak MB | growth MB | MB/s | target |",
    ]
    lines += ["|---|---:|---:|---:|---:|---:|---|"]
    for name in ("minimal-bulk", "pier-bulk"):
        r = results.get(name)
        if r:
            ok = "met" if r["met"] else "**not met**"
            goal = f"< {GROWTH_LIMIT_MB:g} MB: {ok}" if name.startswith("pier") else "-"
            lines.append(
                f"| {name.removesuffix('-bulk')} | {r['bytes_received'] / MB:,.0f} | {r['before_rss_mb']:.1f} "
                f"| {r['peak_rss_mb']:.1f} | {r['growth_mb']:.1f} | {r['mb_per_s']:.0f} | {goal} |"
            )
    if "pier_unavailable" in results:
        lines.append(f"\nPier not measured: {results['pier_unavailable']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.memory", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--events", type=int, default=30, help="events per slow stream")
    parser.add_argument("--interval-ms", type=float, default=500.0, help="gap between slow events")
    parser.add_argument("--bulk-mib", type=int, default=1024, help="size of the big streamed response")
    parser.add_argument("--quick", action="store_true", help="smoke run: 100 streams of 10 events, 64 MiB")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.streams, args.events, args.bulk_mib = 100, 10, 64
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = run(
        out,
        streams=args.streams,
        events=args.events,
        interval_ms=args.interval_ms,
        bulk_bytes=args.bulk_mib * 1024 * 1024,
        pin=not args.no_pin,
    )
    table = markdown(results, args.streams, args.bulk_mib)
    (out / "memory.json").write_text(json.dumps(results, indent=2))
    (out / "memory.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
