"""`python -m tests.benchmarks [--quick] [--out DIR]`: the side-by-side benchmark of issue 6.

Writes DIR/latest.md (the tables the README quotes) and DIR/latest.json (raw rounds + summary), plus a
timestamped copy of the JSON and the processes' logs under DIR/work-<stamp>/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tests.benchmarks import report, suite
from tests.benchmarks.litellm_env import DEFAULT_VENV

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse(argv: list[str] | None) -> suite.Options:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repetition, 2 s runs, 3 streams")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (default: %(default)s)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3; 1 with --quick)")
    parser.add_argument("--duration", type=float, help="seconds per load run (default 5; 2 with --quick)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections for throughput")
    parser.add_argument("--streams", type=int, help="paced streams per repetition (default 20; 3 with --quick)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(suite.ALL)}")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores with taskset")
    parser.add_argument(
        "--litellm-venv", type=Path, default=DEFAULT_VENV, help="LiteLLM's own venv (created if missing)"
    )
    parser.add_argument("--no-install", action="store_true", help="never create the LiteLLM venv")
    args = parser.parse_args(argv)
    only = tuple(n.strip() for n in args.only.split(",") if n.strip())
    unknown = [n for n in only if n not in suite.ALL]
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)} (known: {', '.join(suite.ALL)})")
    reps = args.reps or (1 if args.quick else 3)
    duration = args.duration or (2.0 if args.quick else 5.0)
    streams = args.streams or (3 if args.quick else 20)
    if reps < 1 or duration < 1 or streams < 1 or args.connections < 1:
        parser.error("--reps, --duration, --streams and --connections must be positive (duration >= 1 s)")
    return suite.Options(
        reps=reps,
        duration_s=duration,
        connections=args.connections,
        streams=streams,
        out=args.out.resolve(),
        pin=not args.no_pin,
        only=only,
        litellm_venv=args.litellm_venv,
        install_litellm=not args.no_install,
        quick=args.quick,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    opts.out.mkdir(parents=True, exist_ok=True)
    results = suite.run(opts)
    results["summary"] = report.summarise(results)
    results["checks"] = [_check(c) for c in report.checks(results["summary"])]
    table = report.markdown(results)
    stamp = results["meta"]["stamp"]
    raw = json.dumps(results, indent=2, sort_keys=False)
    (opts.out / f"run-{stamp}.json").write_text(raw)
    (opts.out / "latest.json").write_text(raw)
    (opts.out / "latest.md").write_text(table)
    print(table)
    print(f"written: {opts.out / 'latest.md'}, {opts.out / 'latest.json'}")
    return 0


def _check(check: report.Check) -> dict[str, object]:
    return {"what": check.what, "measured": check.measured, "goal": check.goal, "passed": check.passed}


if __name__ == "__main__":
    sys.exit(main())
