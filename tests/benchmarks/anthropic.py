"""`python -m tests.benchmarks.anthropic`: the router's CPU per Anthropic request, translation vs passthrough.

One Pier stack (redis-server, the health worker, one router) in front of two nginx upstreams answering a fixed
chat completion: `native` is a DMR (its `/anthropic/v1/messages` is relayed as it is: passthrough) and `oai`
an `openai-compatible` endpoint (the request is translated to `/v1/chat/completions` and the answer back:
translation). The same Anthropic body is posted to `/v1/messages` with `wrk`, alternating the two models in
each repetition; the difference in router CPU per request is the cost of translation. Writes anthropic.md and
anthropic.json into the results folder.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import time
from pathlib import Path
from typing import Any

from tests.benchmarks import measure, nginx, pier, report, wrk
from tests.benchmarks.contenders import post_ok
from tests.benchmarks.layout import Cores, Target, base_env, pinned
from tests.harness import ProcessFactory, free_port, http_ok, wait_for_sync

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
MODELS = {"passthrough": "bench-native", "translation": "bench-translate"}
MESSAGES_PATH = "/v1/messages"


def body(model: str) -> bytes:
    return json.dumps(
        {
            "model": model,
            "max_tokens": 16,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "Say hello."}],
        },
        separators=(",", ":"),
    ).encode()


def _upstream(procs: ProcessFactory, workdir: Path, cores: Cores, name: str, model: str) -> tuple[str, int]:
    port = free_port()
    work = workdir / f"nginx-{name}"
    work.mkdir(parents=True, exist_ok=True)
    conf = nginx.upstream_config(work, port, [model], 1)
    proc = procs.start(
        f"upstream-{name}",
        pinned(cores.aux, nginx.argv(conf, work)),
        port=port,
        ready=lambda p: http_ok(f"{p.url}/v1/models"),
    )
    return proc.url, proc.pid


def run(out: Path, *, reps: int, duration_s: float, connections: int, pin: bool) -> dict[str, Any]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = out / f"work-anthropic-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    cores = Cores.detect(pin)
    plan = measure.Plan(duration_s, connections, 1, cores)
    procs = ProcessFactory(workdir, base_env())
    rounds: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODELS}
    with contextlib.ExitStack() as exits:
        exits.callback(procs.close)
        native_url, native_pid = _upstream(procs, workdir, cores, "native", MODELS["passthrough"])
        oai_url, oai_pid = _upstream(procs, workdir, cores, "oai", MODELS["translation"])
        endpoints = [("native", native_url), ("oai", oai_url)]
        stack = exits.enter_context(
            pier.stack(procs, workdir / "pier", cores, endpoints, types={"oai": "openai-compatible"})
        )
        router = stack.router(pier.PIER_SETTINGS[0], ready_model=MODELS["passthrough"])
        base = router.json_url.removesuffix("/v1/chat/completions")
        targets: dict[str, tuple[Target, Path]] = {}
        for mode, model in MODELS.items():
            payload = body(model)
            url = base + MESSAGES_PATH
            wait_for_sync(functools.partial(post_ok, url, payload), timeout_s=60, what=f"{mode} requests to succeed")
            target = Target(mode, url, url, router.roots, f"Pier router, Anthropic {mode}", aux_roots=router.aux_roots)
            script = wrk.write_script(workdir / f"post-{mode}.lua", payload)
            measure.warm_up_json(target, script, plan)
            targets[mode] = (target, script)
        for rep in range(reps):
            print(f"repetition {rep + 1}/{reps} …", flush=True)
            for mode, (target, script) in targets.items():
                rounds[mode].append(measure.throughput(target, [native_pid, oai_pid], script, plan))
    results: dict[str, Any] = {"stamp": stamp, "modes": {}}
    for mode, rows in rounds.items():
        results["modes"][mode] = {
            "rounds": rows,
            "rps": statistics.median(r["rps"] for r in rows),
            "cpu_us_per_req": statistics.median(r["cpu_us_per_req"] for r in rows),
            "p50_us": statistics.median(r["p50_us"] for r in rows),
            "foreign_cpu_share": statistics.median(r["foreign_cpu_share"] for r in rows),
            "errors": sum(r["errors"] + r["non_2xx"] for r in rows),
        }
    passthrough = results["modes"]["passthrough"]["cpu_us_per_req"]
    translation = results["modes"]["translation"]["cpu_us_per_req"]
    results["added_cpu_us_per_req"] = translation - passthrough
    results["ratio"] = translation / passthrough if passthrough else None
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Anthropic run {results['stamp']}: one router, `POST /v1/messages` (non-streamed), the same body.",
        "",
        "| mode | req/s | router CPU µs/req | p50 | other load | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode, row in results["modes"].items():
        lines.append(
            f"| {mode} | {row['rps']:,.0f} | {row['cpu_us_per_req']:,.0f} | {row['p50_us'] / 1000:.2f} ms "
            f"| {100 * row['foreign_cpu_share']:.0f} % | {row['errors']} |"
        )
    worst = max(row["foreign_cpu_share"] for row in results["modes"].values())
    if worst >= report.NOISY_SHARE:
        lines += ["", f"**Noisy run:** other work used up to {100 * worst:.0f} % of a core; compare the ratio only."]
    ratio = results.get("ratio")
    lines += [
        "",
        f"Translation costs {results['added_cpu_us_per_req']:,.0f} µs of router CPU per request more than "
        f"passthrough ({ratio:.2f}x)."
        if ratio
        else "No ratio (no passthrough figure).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.anthropic", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
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
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = run(out, reps=args.reps, duration_s=args.duration, connections=args.connections, pin=not args.no_pin)
    table = markdown(results)
    (out / "anthropic.json").write_text(json.dumps(results, indent=2))
    (out / "anthropic.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
