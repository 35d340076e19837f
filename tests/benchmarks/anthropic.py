"""`python -m tests.benchmarks.anthropic`: the router's CPU per Anthropic request, translation vs passthrough.

One Pier stack (redis-server, the health worker, one router) in front of two nginx upstreams answering a fixed
chat completion: `native` is a DMR (its `/anthropic/v1/messages` is relayed as it is: passthrough) and `oai`
an `openai-compatible` endpoint (the request is translated to `/v1/chat/completions` and the answer back:
translation). The same Anthropic body is posted to `/v1/messages` with `wrk`, alternating the two models in
each repetition; the difference in router CPU per request is the cost of translation. Streams the same way:
two paced upstreams (20 chat chunks 20 ms apart), `STREAMS` concurrent streamed requests per mode, router CPU
per stream, and whether events still leave one per read (a translated stream has a few more events than its
upstream, and some leave together by design: message_start with the first block's start, the closing
events with the last chunk; that is its `coalesced` share). Writes anthropic.md and anthropic.json into the
results folder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import statistics
import time
from pathlib import Path
from typing import Any

from tests.benchmarks import measure, nginx, pier, report, wrk
from tests.benchmarks.contenders import post_ok
from tests.benchmarks.layout import SSE_EVENTS, SSE_INTERVAL_MS, Cores, Target, base_env, pinned, python_module
from tests.benchmarks.stream_client import StreamSample, stream_once
from tests.harness import ProcessFactory, free_port, http_ok, wait_for_sync

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
MODES = ("passthrough", "translation")
MODELS = {"passthrough": "bench-native", "translation": "bench-translate"}
SSE_MODELS = {"passthrough": "bench-native-sse", "translation": "bench-translate-sse"}
STREAMS = 64  # concurrent streamed requests per mode and repetition
MESSAGES_PATH = "/v1/messages"


def body(model: str, *, stream: bool = False) -> bytes:
    data: dict[str, Any] = {
        "model": model,
        "max_tokens": 16,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Say hello."}],
    }
    if stream:
        data["stream"] = True
    return json.dumps(data, separators=(",", ":")).encode()


def _nginx(procs: ProcessFactory, workdir: Path, cores: Cores, name: str, model: str) -> tuple[str, int]:
    port = free_port()
    work = workdir / f"nginx-{name}"
    work.mkdir(parents=True, exist_ok=True)
    conf = nginx.upstream_config(work, port, [model], 1)
    argv = pinned(cores.aux, nginx.argv(conf, work))
    proc = procs.start(f"upstream-{name}", argv, port=port, ready=lambda p: http_ok(f"{p.url}/v1/models"))
    return proc.url, proc.pid


def _paced(procs: ProcessFactory, cores: Cores, name: str, model: str) -> tuple[str, int]:
    port = free_port()
    argv = python_module(
        "tests.benchmarks.paced_upstream",
        *("--port", str(port), "--events", str(SSE_EVENTS), "--interval-ms", str(SSE_INTERVAL_MS)),
        *("--model", model),
    )
    proc = procs.start(
        f"upstream-{name}", pinned(cores.aux, argv), port=port, ready=lambda p: http_ok(f"{p.url}/v1/models")
    )
    return proc.url, proc.pid


def _streams(
    target: Target, upstream_roots: list[int], payload: bytes, count: int, duration_s: float
) -> dict[str, Any]:
    """Batches of `count` concurrent streamed requests for `duration_s` (CPU time is counted in clock ticks: a
    few batches make the figure meaningful): router CPU per stream, and how the events arrived."""

    async def batches() -> list[StreamSample]:
        samples: list[StreamSample] = []
        deadline = time.monotonic() + duration_s
        while not samples or time.monotonic() < deadline:
            samples += await asyncio.gather(*(stream_once(target.sse_url, payload) for _ in range(count)))
        return samples

    meter = measure._Meter(target, upstream_roots)
    samples = asyncio.run(batches())
    ok = [s for s in samples if s.status == 200]
    events = sum(s.events for s in ok)
    cpu = meter.read(len(ok) or 1)
    return {
        "streams": len(ok),
        "stream_errors": len(samples) - len(ok),
        "stream_events_min": min((s.events for s in ok), default=0),
        "stream_coalesced_pct": 100 * sum(s.coalesced for s in ok) / events if events else 0.0,
        "stream_first_event_ms": statistics.median(s.first_event_s for s in ok) * 1000 if ok else 0.0,
        "cpu_us_per_stream": cpu["cpu_us_per_req"],
        "foreign_cpu_share": cpu["foreign_cpu_share"],
    }


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rounds": rows,
        "rps": statistics.median(r["rps"] for r in rows),
        "cpu_us_per_req": statistics.median(r["cpu_us_per_req"] for r in rows),
        "p50_us": statistics.median(r["p50_us"] for r in rows),
        "foreign_cpu_share": max(
            statistics.median(r["foreign_cpu_share"] for r in rows),
            statistics.median(r["sse"]["foreign_cpu_share"] for r in rows),
        ),
        "errors": sum(r["errors"] + r["non_2xx"] for r in rows),
        "sse_cpu_us_per_stream": statistics.median(r["sse"]["cpu_us_per_stream"] for r in rows),
        "sse_coalesced_pct": max(r["sse"]["stream_coalesced_pct"] for r in rows),
        "sse_events_min": min(r["sse"]["stream_events_min"] for r in rows),
        "sse_errors": sum(r["sse"]["stream_errors"] for r in rows),
    }


def run(out: Path, *, reps: int, duration_s: float, connections: int, pin: bool) -> dict[str, Any]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = out / f"work-anthropic-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    cores = Cores.detect(pin)
    plan = measure.Plan(duration_s, connections, 1, cores)
    procs = ProcessFactory(workdir, base_env())
    rounds: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with contextlib.ExitStack() as exits:
        exits.callback(procs.close)
        upstreams = {
            "native": _nginx(procs, workdir, cores, "native", MODELS["passthrough"]),
            "oai": _nginx(procs, workdir, cores, "oai", MODELS["translation"]),
            "native-sse": _paced(procs, cores, "native-sse", SSE_MODELS["passthrough"]),
            "oai-sse": _paced(procs, cores, "oai-sse", SSE_MODELS["translation"]),
        }
        upstream_pids = [pid for _, pid in upstreams.values()]
        endpoints = [(name, url) for name, (url, _) in upstreams.items()]
        types = {"oai": "openai-compatible", "oai-sse": "openai-compatible"}
        stack = exits.enter_context(pier.stack(procs, workdir / "pier", cores, endpoints, types=types))
        router = stack.router(pier.PIER_SETTINGS[0], ready_model=MODELS["passthrough"])
        url = router.json_url.removesuffix("/v1/chat/completions") + MESSAGES_PATH
        target = Target("pier", url, url, router.roots, "Pier router, Anthropic routes", aux_roots=router.aux_roots)
        scripts: dict[str, Path] = {}
        for mode in MODES:
            for payload in (body(MODELS[mode]), body(SSE_MODELS[mode], stream=True)):
                ready = functools.partial(post_ok, url, payload)
                wait_for_sync(ready, timeout_s=60, what=f"{mode} requests to succeed")
            scripts[mode] = wrk.write_script(workdir / f"post-{mode}.lua", body(MODELS[mode]))
            measure.warm_up_json(target, scripts[mode], plan)
        for rep in range(reps):
            print(f"repetition {rep + 1}/{reps} …", flush=True)
            for mode in MODES:
                row = measure.throughput(target, upstream_pids, scripts[mode], plan)
                row["sse"] = _streams(target, upstream_pids, body(SSE_MODELS[mode], stream=True), STREAMS, duration_s)
                rounds[mode].append(row)
    results: dict[str, Any] = {"stamp": stamp, "modes": {mode: _summary(rows) for mode, rows in rounds.items()}}
    passthrough, translation = (results["modes"][m] for m in MODES)
    for key, out_key in (("cpu_us_per_req", ""), ("sse_cpu_us_per_stream", "sse_")):
        results[f"{out_key}added_cpu_us"] = translation[key] - passthrough[key]
        results[f"{out_key}ratio"] = translation[key] / passthrough[key] if passthrough[key] else None
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Anthropic run {results['stamp']}: one router, `POST /v1/messages`, the same body in both modes; "
        f"streams: {STREAMS} concurrent, {SSE_EVENTS} chunks {SSE_INTERVAL_MS:g} ms apart.",
        "",
        "| mode | req/s | router CPU µs/req | p50 | router CPU µs/stream | events min | coalesced "
        "| other load | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, row in results["modes"].items():
        lines.append(
            f"| {mode} | {row['rps']:,.0f} | {row['cpu_us_per_req']:,.0f} | {row['p50_us'] / 1000:.2f} ms "
            f"| {row['sse_cpu_us_per_stream']:,.0f} | {row['sse_events_min']} | {row['sse_coalesced_pct']:.1f} % "
            f"| {100 * row['foreign_cpu_share']:.0f} % | {row['errors'] + row['sse_errors']} |"
        )
    worst = max(row["foreign_cpu_share"] for row in results["modes"].values())
    if worst >= report.NOISY_SHARE:
        lines += ["", f"**Noisy run:** other work used up to {100 * worst:.0f} % of a core; compare the ratio only."]
    lines.append("")
    if results.get("ratio"):
        lines.append(
            f"Translation costs {results['added_cpu_us']:,.0f} µs of router CPU per request more than "
            f"passthrough ({results['ratio']:.2f}x)."
        )
    if results.get("sse_ratio"):
        lines.append(
            f"A translated stream costs {results['sse_added_cpu_us']:,.0f} µs of router CPU more than "
            f"a passthrough one ({results['sse_ratio']:.2f}x)."
        )
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
