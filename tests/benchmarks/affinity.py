"""`python -m tests.benchmarks.affinity`: what conversation affinity buys, measured (issue 13).

Three DMR emulators in one priority tier, each modelling llama.cpp's prompt cache per slot (`--parallel` slots,
prefill time proportional to the prompt tokens a slot has not cached: `--prefill-ms-per-token`), the health
worker, and router replicas with affinity on and off. 30 conversations of 8 turns with growing context run at
once (each conversation's turns one after another, each turn to the next router replica in turn), streamed.
For each configuration (affinity off/on x 1/3 replicas) it reports time to first token (TTFT) p50/p95 per turn,
the prompt-cache hit rate (tokens reused / prompt tokens, from llama.cpp's `timings`), and the load spread
over the endpoints: max/mean of the generating+queued requests sampled every 50 ms from the emulators, and of
the requests each endpoint served. Writes affinity.md and affinity.json into the results folder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness import ProcessFactory, start_redis
from tests.router.support import (
    Emu,
    base_env,
    endpoint,
    start_emulator,
    start_health,
    start_router,
    wait_routable_sync,
    write_config,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
NAMES = ("e1", "e2", "e3")
MODEL = "ai/smollm2:latest"
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")


def words(n: int, seed: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] + str((seed + i) % 97) for i in range(n))


@dataclass
class Turn:
    conversation: int
    turn: int
    ttft_s: float
    endpoint: str
    cache_n: int
    prompt_n: int


@dataclass
class Run:
    label: str
    turns: list[Turn] = field(default_factory=list)
    inflight_samples: list[dict[str, int]] = field(default_factory=list)


async def one_turn(
    http: aiohttp.ClientSession, url: str, messages: list[dict[str, str]]
) -> tuple[float, str, str, int, int]:
    """(TTFT, endpoint, reply text, cache_n, prompt_n) of one streamed chat turn."""
    body = {"model": "smollm2", "messages": messages, "stream": True}
    started = time.monotonic()
    ttft = -1.0
    text: list[str] = []
    cache_n = prompt_n = 0
    async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        endpoint_name = resp.headers["X-Pier-Endpoint"]
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or [{}]
            piece = (choices[0].get("delta") or {}).get("content")
            if piece:
                if ttft < 0:
                    ttft = time.monotonic() - started
                text.append(piece)
            timings = chunk.get("timings")
            if timings:
                cache_n, prompt_n = int(timings["cache_n"]), int(timings["prompt_n"])
    return ttft, endpoint_name, "".join(text), cache_n, prompt_n


async def conversation(
    http: aiohttp.ClientSession, routers: list[str], index: int, turns: int, run: Run, tag: str
) -> None:
    messages = [{"role": "system", "content": f"{tag} conversation {index}. " + words(200, index)}]
    for turn in range(turns):
        messages.append({"role": "user", "content": words(120, index * 31 + turn)})
        router = routers[(index + turn) % len(routers)]
        ttft, endpoint_name, reply, cache_n, prompt_n = await one_turn(http, router, messages)
        run.turns.append(Turn(index, turn + 1, ttft, endpoint_name, cache_n, prompt_n))
        messages.append({"role": "assistant", "content": reply})


async def sample_load(http: aiohttp.ClientSession, emus: list[Emu], run: Run, stop: asyncio.Event) -> None:
    while not stop.is_set():
        sample: dict[str, int] = {}
        for emu in emus:
            async with http.get(f"{emu.admin_url}/_emulator/state") as resp:
                state = await resp.json()
            sample[emu.name] = sum(r["generating"] + r["queued"] for r in state["runners"])
        if sum(sample.values()):
            run.inflight_samples.append(sample)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.05)


async def measure(label: str, routers: list[str], emus: list[Emu], conversations: int, turns: int) -> Run:
    run = Run(label)
    timeout = aiohttp.ClientTimeout(total=300)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_load(http, emus, run, stop))
        await asyncio.gather(*(conversation(http, routers, i, turns, run, label) for i in range(conversations)))
        stop.set()
        await sampler
    return run


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summarise(run: Run, turns: int) -> dict[str, Any]:
    per_turn = {}
    for t in range(1, turns + 1):
        ttfts = [x.ttft_s for x in run.turns if x.turn == t]
        per_turn[t] = {"p50_ms": round(pct(ttfts, 0.5) * 1000, 1), "p95_ms": round(pct(ttfts, 0.95) * 1000, 1)}
    later = [x.ttft_s for x in run.turns if x.turn > 1]
    later_turns = [x for x in run.turns if x.turn > 1]
    cached = sum(x.cache_n for x in later_turns)
    prompt = sum(x.cache_n + x.prompt_n for x in later_turns)
    served = {name: sum(1 for x in run.turns if x.endpoint == name) for name in NAMES}
    spreads = [max(s.values()) / (sum(s.values()) / len(s)) for s in run.inflight_samples if sum(s.values())]
    convs: dict[int, set[str]] = {}
    for x in run.turns:
        convs.setdefault(x.conversation, set()).add(x.endpoint)
    return {
        "label": run.label,
        "per_turn": per_turn,
        "later_turns_p50_ms": round(pct(later, 0.5) * 1000, 1),
        "later_turns_p95_ms": round(pct(later, 0.95) * 1000, 1),
        "cache_hit_rate": round(cached / prompt, 3) if prompt else 0.0,
        "endpoints_per_conversation": round(statistics.mean(len(v) for v in convs.values()), 2),
        "served": served,
        "served_max_over_mean": round(max(served.values()) / (sum(served.values()) / len(served)), 2),
        "inflight_max_over_mean": round(statistics.mean(spreads), 2) if spreads else 0.0,
    }


def table(results: list[dict[str, Any]], turns: int) -> str:
    lines = [
        "| configuration | TTFT p50, turns 2-8 | TTFT p95, turns 2-8 | cache hit rate | endpoints per conversation "
        "| in-flight max/mean | served max/mean |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['label']} | {r['later_turns_p50_ms']:.0f} ms | {r['later_turns_p95_ms']:.0f} ms "
            f"| {r['cache_hit_rate']:.0%} | {r['endpoints_per_conversation']} | {r['inflight_max_over_mean']} "
            f"| {r['served_max_over_mean']} |"
        )
    lines += ["", "TTFT p95 per turn (ms):", "", "| configuration | " + " | ".join(str(t) for t in range(1, turns + 1))]
    lines.append("|---|" + "---:|" * turns)
    for r in results:
        cells = " | ".join(f"{r['per_turn'][t]['p95_ms']:.0f}" for t in range(1, turns + 1))
        lines.append(f"| {r['label']} | {cells} |")
    return "\n".join(lines) + "\n"


def load_model(url: str) -> None:
    """One blocking chat straight to an emulator: its runner loads the model."""
    body = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "load"}]}).encode()
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(f"{url}/engines/v1/chat/completions", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as resp:
        resp.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=30)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--prefill-ms-per-token", type=float, default=0.5)
    parser.add_argument("--parallel", type=int, default=16, help="slots per emulator runner (and Pier's limit)")
    parser.add_argument("--load-factor", type=float, default=None, help="PIER_AFFINITY_LOAD_FACTOR (default: Pier's)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pier-affinity-"))
    procs = ProcessFactory(workdir, base_env())
    (workdir / "redis").mkdir()
    redis = start_redis(workdir=workdir / "redis")
    try:
        emu_args = (
            "--parallel", str(args.parallel), "--load-time-ms", "0", "--chunks", "8", "--chunk-interval-ms", "5",
            "--prefill-ms-per-token", str(args.prefill_ms_per_token), "--log-limit", "100",
        )  # fmt: skip
        emus = [start_emulator(procs, name, *emu_args) for name in NAMES]
        # Pier's concurrency limit per endpoint matches the emulator's slots (DMR's profile says 8): past it a
        # request goes elsewhere by design, which would be capacity, not affinity, at work.
        entries = [endpoint(e.name, e.url, 100, max_concurrent_requests=args.parallel) for e in emus]
        config = write_config(workdir / "pier.yaml", entries)
        start_health(procs, redis.url, workdir, config)
        routers: dict[str, list[str]] = {}
        for affinity in ("off", "on"):
            flag = "true" if affinity == "on" else "false"
            extra = {"PIER_AFFINITY": flag}
            if args.load_factor is not None:
                extra["PIER_AFFINITY_LOAD_FACTOR"] = str(args.load_factor)
            routers[affinity] = [start_router(procs, redis.url, config, **extra).url for _ in range(3)]
        # Loaded everywhere first (warm-up's job): every endpoint is a candidate, and no turn pays a load.
        for emu in emus:
            load_model(emu.url)
        for urls in routers.values():
            for url in urls:
                wait_routable_sync(url, list(NAMES), loaded=True)
        results = []
        for replicas in (1, 3):
            for affinity in ("off", "on"):
                label = f"affinity {affinity}, {replicas} router{'s' if replicas > 1 else ''}"
                run = asyncio.run(measure(label, routers[affinity][:replicas], emus, args.conversations, args.turns))
                summary = summarise(run, args.turns)
                results.append(summary)
                print(json.dumps(summary), flush=True)
    finally:
        procs.close()
        redis.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Conversation affinity\n\n{args.conversations} conversations x {args.turns} turns at once, "
        f"3 endpoints in one tier ({args.parallel} slots each, prefill {args.prefill_ms_per_token} ms per uncached "
        f"token), streamed; load factor {args.load_factor if args.load_factor is not None else 'default'}; "
        "`python -m tests.benchmarks.affinity`.\n\n"
    )
    (args.out / "affinity.md").write_text(header + table(results, args.turns))
    (args.out / "affinity.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results, args.turns))


if __name__ == "__main__":
    main()
