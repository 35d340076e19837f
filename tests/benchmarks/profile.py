"""`python -m tests.benchmarks.profile`: sample Pier's router with py-spy while wrk loads it; print the hot spots.

Starts the same upstreams and Pier stack as the suite, runs `wrk -c64` (non-streaming chat) against one router
for `--duration` seconds while `py-spy record` samples it, then prints the functions with the most samples
(self and inclusive, as % of on-CPU samples). The folded stacks are kept (`router-<stamp>.folded`) for a
flame graph (e.g. speedscope or flamegraph.pl). py-spy is not a project dependency: point `--py-spy` at one
(`pip install py-spy` anywhere).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tests.benchmarks import contenders, pier, procstat, wrk
from tests.benchmarks.layout import JSON_BODY, Cores, base_env
from tests.harness import ProcessFactory

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def hot_spots(folded: Path, top: int, cpu_us_per_req: float) -> str:
    """Self and inclusive sample shares per function from py-spy's raw (folded) output, also as µs/request."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "no samples"
    per = cpu_us_per_req / total
    lines = [f"{total} on-CPU samples, {cpu_us_per_req:.0f} µs CPU/request", "", "self %  µs/req  function"]
    lines += [f"{100 * n / total:5.1f}  {n * per:6.1f}  {f}" for f, n in own.most_common(top)]
    lines += ["", "incl %  µs/req  function"]
    lines += [f"{100 * n / total:5.1f}  {n * per:6.1f}  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.profile", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--setting", default="pier", help="a PIER_SETTINGS name, or `minimal` for the floor")
    parser.add_argument("--endpoints", type=int, default=0, help="N endpoints in state (all on the nginx upstream)")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "/tmp/prof-venv/bin/py-spy")
    args = parser.parse_args(argv)
    if not Path(args.py_spy).exists():
        parser.error(f"py-spy not found at {args.py_spy} (pip install py-spy, then pass --py-spy)")
    setting = next((s for s in pier.PIER_SETTINGS if s.name == args.setting), None)
    if setting is None and args.setting != "minimal":
        parser.error(f"--setting: minimal or one of {', '.join(s.name for s in pier.PIER_SETTINGS)}")
    reason = pier.available()
    if setting is not None and reason is not None:
        print(f"Pier cannot run here: {reason}")
        return 1
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out.resolve()
    workdir = out / f"work-profile-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    cores = Cores.detect(True)
    procs = ProcessFactory(workdir, base_env())
    folded = out / f"router-{stamp}.folded"
    with contextlib.ExitStack() as stack:
        stack.callback(procs.close)
        up = contenders.start_upstreams(procs, workdir, cores)
        if setting is None:
            target = contenders.minimal_proxy(procs, up, cores)
        else:
            endpoints = pier.bench_endpoints(up)
            if args.endpoints:
                endpoints = [(f"ep{i:03d}", up.json_base) for i in range(args.endpoints)]
            pier_stack = stack.enter_context(
                pier.stack(
                    procs,
                    workdir / "pier",
                    cores,
                    endpoints,
                    check_interval="5s" if args.endpoints else "3s",
                    # A telemetry setting exports to the local OTLP receiver, as in the suite.
                    otlp=any("{otlp_url}" in value for value in setting.env.values()),
                )
            )
            target = pier_stack.router(setting)
        script = wrk.write_script(workdir / "post.lua", JSON_BODY)
        wrk.run(target.json_url, script, connections=8, duration_s=1, cpus=cores.loadgen)
        spy_argv = [args.py_spy, "record", "--pid", str(target.roots[0]), "--rate", str(args.rate)]
        spy_argv += ["--duration", str(round(args.duration)), "--format", "raw", "--nolineno", "-o", str(folded)]
        if setting is not None and setting.cores == "both":
            spy_argv.append("--subprocesses")
        spy = subprocess.Popen(spy_argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        before = procstat.CpuSnapshot.take(target.roots)
        result = wrk.run(
            target.json_url, script, connections=args.connections, duration_s=args.duration, cpus=cores.loadgen
        )
        cpu_s = procstat.CpuSnapshot.take(target.roots).seconds_since(before)
        _, err = spy.communicate(timeout=args.duration + 60)
        if spy.returncode != 0:
            print(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-1500:]}", file=sys.stderr)
            return 1
    print(f"{result.rps:,.0f} req/s while sampled (sampling slows the router); folded stacks: {folded}\n")
    print(hot_spots(folded, args.top, cpu_s * 1e6 / result.requests if result.requests else 0.0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
