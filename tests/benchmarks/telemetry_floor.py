"""`python -m tests.benchmarks.telemetry_floor`: the least CPython can do per request for issue 10's telemetry.

Why: issue 10 asks for telemetry at 10 % sampling (metrics on every request) to cost at most 1/0.9 of the
router's request, about 49k instructions here. The router's hooks take about 85k. This script answers whether a
better arrangement of the same work could fit: it does only the work every unsampled request needs, written
inline with nothing around it (no wrapper coroutine, no per-request objects, pre-built attribute tuples), and
counts its instructions under callgrind. It is a measuring stick, not product code: the router cannot be
written this way (it has routes, failover and streams), so the floor is below anything the router can reach.

The work, added step by step:
- `context`: the caller's `traceparent` looked up, a trace id drawn, the ratio sampler's decision, the
  unsampled `traceparent` formatted onto the upstream request's headers;
- `usage`: the answer's token counts read from its tail (`services.router.usage`, the router's reader), on the
  suite's benchmark answer;
- `metrics`: the clock read twice and five measurements through `shared.fastmetrics` (the HTTP duration, the
  attempt count, the operation duration, input and output tokens).

Each step runs `--requests` times in a child process under `valgrind --tool=callgrind` (with a fixed hash
seed), and once with no iterations; the difference over the count is the step's cost per request. The budget
is read from the latest `results/instructions.md` (`pier`'s total, and the span share at 10 %: a tenth of
`pier-otel` minus `pier-otel-0`). Written to `results/telemetry_floor.md`. valgrind is not a project
dependency (`apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from multidict import CIMultiDict, CIMultiDictProxy

from services.router.telemetry import DURATION_BUCKETS, TOKEN_BUCKETS
from services.router.usage import _trailing_usage
from shared.fastmetrics import FastCounter, FastHistogram
from shared.leanspan import new_trace_id, unsampled_traceparent
from shared.telemetry import HTTP_BUCKETS
from tests.benchmarks.paced_upstream import CHAT_JSON
from tests.harness import system_binary

STEPS = ("none", "context", "usage", "metrics")
RESULTS = Path(__file__).resolve().parent / "results"
_TOTAL = re.compile(r"Collected : (\d+)")


def run_step(step: str, requests: int) -> tuple[int, int]:
    """The child: `requests` iterations of the work up to `step` (see the module docstring); returns the token
    counts the last one read (0, 0 before the `usage` step)."""
    depth = STEPS.index(step)
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
    answer = bytearray(CHAT_JSON)
    clock = time.perf_counter
    bound, mask = int(0.1 * (1 << 64)), (1 << 64) - 1
    attrs = (("gen_ai.operation.name", "chat"), ("gen_ai.request.model", "bench-json"), ("pier.endpoint", "e1"))
    # The router's own instruments' buckets, trace ids and unsampled `traceparent` (shared.leanspan).
    http = FastHistogram("http.server.request.duration", "s", "", HTTP_BUCKETS)
    duration = FastHistogram("gen_ai.client.operation.duration", "s", "", DURATION_BUCKETS)
    tokens = FastHistogram("gen_ai.client.token.usage", "{token}", "", TOKEN_BUCKETS)
    attempts = FastCounter("pier.router.attempts", "{attempt}", "")
    prompt = completion = 0
    for _ in range(requests):
        if depth < 1:
            continue
        started = clock()
        headers.get("traceparent")
        trace_id = new_trace_id()
        if trace_id & mask < bound:
            pass  # sampled: the span's cost is counted apart (results/instructions.md)
        upstream: CIMultiDict[str] = CIMultiDict()
        upstream["traceparent"] = unsampled_traceparent(trace_id)
        if depth < 2:
            continue
        usage = _trailing_usage(answer) or {}
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        if depth < 3:
            continue
        now = clock()
        attempts.add(1, attrs)
        duration.record(now - started, attrs)
        tokens.record(prompt, attrs)
        tokens.record(completion, attrs)
        http.record(clock() - started, attrs)
    return prompt, completion


def instructions(step: str, requests: int) -> int:
    valgrind = system_binary("valgrind", "valgrind")
    argv = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m", __spec__.name]
    argv += ["--child", step, "--requests", str(requests)]
    done = subprocess.run(argv, env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, text=True)
    found = _TOTAL.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind failed for {step}: {done.stderr[-2000:]}")
    return int(found.group(1))


def recorded_totals(path: Path) -> dict[str, float]:
    """Setting -> total kIr/request from an `instructions.md` table."""
    totals: dict[str, float] = {}
    for line in path.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"[\d.]+", cells[3]):
            totals[cells[0]] = float(cells[3])
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.telemetry_floor", description=__doc__)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--instructions", type=Path, default=RESULTS / "instructions.md")
    args = parser.parse_args(argv)
    if args.child is not None:
        run_step(args.child, args.requests)
        return 0
    start = instructions("metrics", 0)
    per_step = {step: (instructions(step, args.requests) - start) / args.requests / 1000 for step in STEPS}
    lines = ["| step | kIr/request, cumulative | this step |", "|---|---:|---:|"]
    previous = per_step["none"]
    for step in STEPS[1:]:
        lines.append(f"| {step} | {per_step[step] - per_step['none']:.1f} | {per_step[step] - previous:.1f} |")
        previous = per_step[step]
    floor = per_step["metrics"] - per_step["none"]
    totals = recorded_totals(args.instructions)
    if {"pier", "pier-otel", "pier-otel-0"} <= totals.keys():
        budget = totals["pier"] / 0.9 - totals["pier"]
        spans = (totals["pier-otel"] - totals["pier-otel-0"]) / 10
        verdict = "within" if floor + spans <= budget else "over"
        lines.append(
            f"\nBudget at 0.9x of `pier` ({totals['pier']:.0f}k): {budget:.1f}k per request. The spans of a 10 % "
            f"sample take {spans:.1f}k of it (`{args.instructions.name}`); this floor {floor:.1f}k; floor + spans "
            f"= {floor + spans:.1f}k ({verdict} the budget)."
        )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    report = (
        f"Telemetry floor (callgrind), run {time.strftime('%Y%m%d-%H%M%S')} at commit `{commit.stdout.strip()}`, "
        f"{args.requests} iterations per step.\n\n" + "\n".join(lines) + "\n"
    )
    (args.instructions.parent / "telemetry_floor.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
