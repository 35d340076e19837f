"""`python -m tests.benchmarks.scaling`: the router's CPU per request with 10 vs 200 endpoints in state (issue 6).

Each size gets its own Pier stack (redis-server, the health worker probing every endpoint, one router): N
configured endpoints, all healthy and all serving the benchmark model from the same nginx upstream, so
routing has N candidates for every request. CPU per request must not grow with N. Writes scaling.md and
scaling.json into the results folder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

from shared import statestore
from tests.benchmarks import contenders, measure, pier, procstat, report, wrk
from tests.benchmarks.layout import JSON_BODY, JSON_MODEL, Cores, base_env
from tests.harness import ProcessFactory, wait_for_sync

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
IDLE_WINDOW_S = 10.0  # two health check intervals: covers a resync and a round of probe events
GROWTH_LIMIT = 1.10  # "does not grow": within 10 % (CPU/request figures on a shared machine move that much)


def _healthy_count(redis_url: str) -> int:
    async def count() -> int:
        client = statestore.connect(redis_url)
        try:
            snapshot = await statestore.read_snapshot(client)
        finally:
            await client.aclose()
        return sum(1 for s in snapshot.endpoints.values() if s.status.routable)

    return asyncio.run(count())


def _idle_cpu_us_per_s(roots: list[int], window_s: float) -> float:
    """The router's CPU rate with no requests: its background work (state sync, resyncs) at this size."""
    before = procstat.CpuSnapshot.take(roots)
    started = time.monotonic()
    time.sleep(window_s)  # a measurement window, not a wait for a condition
    used = procstat.CpuSnapshot.take(roots).seconds_since(before)
    return used * 1e6 / (time.monotonic() - started)


def measure_size(
    procs: ProcessFactory,
    workdir: Path,
    cores: Cores,
    up: contenders.Upstreams,
    size: int,
    plan: measure.Plan,
    reps: int,
) -> dict[str, Any]:
    endpoints = [(f"ep{i:03d}", up.json_base) for i in range(size)]
    # The default check interval (5 s), as users run it: probing cost is the health worker's, not the router's.
    with pier.stack(procs, workdir / f"pier-{size}", cores, endpoints, check_interval="5s") as stack:
        redis_url = stack.redis.url
        wait_for_sync(
            lambda: _healthy_count(redis_url) >= size, timeout_s=120, what=f"{size} healthy endpoints in Redis"
        )
        target = stack.router(pier.PIER_SETTINGS[0])
        script = wrk.write_script(workdir / f"post-{size}.lua", JSON_BODY)
        measure.warm_up_json(target, script, plan)
        idle_us_per_s = _idle_cpu_us_per_s(target.roots, IDLE_WINDOW_S)
        rounds = [measure.throughput(target, up.roots, script, plan) for _ in range(reps)]
        for r in rounds:
            # The share of the router's CPU that is background work (state sync), not requests.
            background = idle_us_per_s * r["wall_s"] / r["requests"] if r["requests"] else 0.0
            r["net_cpu_us_per_req"] = r["cpu_us_per_req"] - background
    return {
        "endpoints": size,
        "rounds": rounds,
        "cpu_us_per_req": statistics.median(r["cpu_us_per_req"] for r in rounds),
        "net_cpu_us_per_req": statistics.median(r["net_cpu_us_per_req"] for r in rounds),
        "idle_cpu_us_per_s": idle_us_per_s,
        "rps": statistics.median(r["rps"] for r in rounds),
        "aux_cpu_us_per_req": statistics.median(r["aux_cpu_us_per_req"] for r in rounds),
        "foreign_cpu_share": statistics.median(r["foreign_cpu_share"] for r in rounds),
        "errors": sum(r["errors"] + r["non_2xx"] for r in rounds),
    }


def run(out: Path, *, sizes: list[int], reps: int, duration_s: float, connections: int, pin: bool) -> dict[str, Any]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = out / f"work-scaling-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    cores = Cores.detect(pin)
    plan = measure.Plan(duration_s, connections, 1, cores)
    results: dict[str, Any] = {"stamp": stamp, "model": JSON_MODEL, "sizes": {}}
    upstream_procs = ProcessFactory(workdir, base_env())
    with contextlib.ExitStack() as stack:
        stack.callback(upstream_procs.close)
        up = contenders.start_upstreams(upstream_procs, workdir, cores)
        for size in sizes:
            print(f"{size} endpoints …", flush=True)
            # Each size has its own processes, all stopped before the next size starts.
            procs = ProcessFactory(workdir, base_env())
            try:
                results["sizes"][str(size)] = measure_size(procs, workdir, cores, up, size, plan, reps)
            finally:
                procs.close()
    first, last = results["sizes"][str(sizes[0])], results["sizes"][str(sizes[-1])]
    growth = last["net_cpu_us_per_req"] / first["net_cpu_us_per_req"] if first["net_cpu_us_per_req"] else None
    results["growth"] = growth
    results["met"] = growth is not None and growth <= GROWTH_LIMIT
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Scaling run {results['stamp']}: one router, N healthy endpoints in state, all serving the model.",
        "",
        "| endpoints | req/s | router CPU µs/req | idle router CPU µs/s | net CPU µs/req | Redis + health µs/req "
        "| other load | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, row in results["sizes"].items():
        lines.append(
            f"| {size} | {row['rps']:,.0f} | {row['cpu_us_per_req']:,.0f} | {row['idle_cpu_us_per_s']:,.0f} "
            f"| {row['net_cpu_us_per_req']:,.0f} | {row['aux_cpu_us_per_req']:,.0f} "
            f"| {100 * row['foreign_cpu_share']:.0f} % | {row['errors']} |"
        )
    worst = max(row["foreign_cpu_share"] for row in results["sizes"].values())
    if worst >= report.NOISY_SHARE:
        lines += [
            "",
            f"**Noisy run:** other work used up to {100 * worst:.0f} % of a core; CPU/request moves by tens of "
            "percent between runs at this load. Rerun on a quiet machine before judging the target.",
        ]
    growth = results.get("growth")
    verdict = "met" if results.get("met") else "**not met**"
    lines += [
        "",
        f"Net CPU/request (minus the idle background rate over the run), largest vs smallest: {growth:.2f}x "
        f"(target <= {GROWTH_LIMIT:.2f}x: {verdict}). The health worker's and Redis' CPU grows with N by design "
        "(it probes every endpoint); it runs off the request path.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.scaling", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--sizes", default="10,200", help="comma-separated endpoint counts")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repetition of 2 s")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.duration = 1, 2.0
    reason = pier.available()
    if reason is not None:
        print(f"Pier cannot run here: {reason}")
        return 1
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = run(
        out, sizes=sizes, reps=args.reps, duration_s=args.duration, connections=args.connections, pin=not args.no_pin
    )
    table = markdown(results)
    (out / "scaling.json").write_text(json.dumps(results, indent=2))
    (out / "scaling.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
