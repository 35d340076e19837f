"""The soak's bounds, checked on what it recorded (pure: samples, calls and fault windows in, verdicts out), and
the markdown page that states them with the figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tests.benchmarks.soak_load import CALL_TIMEOUT_S, Call

SERVICES = ("router", "health", "warmup")


@dataclass(frozen=True, slots=True)
class Bounds:
    warmup_s: float  # samples before this (from the start of the load) are not baselines
    restart_settle_s: float  # nor those of a process restarted by a fault before it has run this long
    rss_growth_mib: dict[str, float]  # per service: last sample - baseline of the same process
    fd_growth: int  # open fds at the end - baseline, per service
    redis_used_mib: float  # Redis used_memory, at every sample
    stream_len: int  # XLEN of the event stream, at every sample (its MAXLEN, approximate trimming allowed)
    fault_grace_s: float  # a call failing this long after a fault ended still counts as the fault's
    recovery_s: float  # a good answer must start within this after each fault ends
    min_requests_per_s: float  # the load really ran


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float  # monotonic
    pids: dict[str, int]
    rss_mib: dict[str, float]
    fds: dict[str, int]
    redis_used_mib: float | None  # None while Redis is down
    stream_len: int | None


@dataclass(frozen=True, slots=True)
class FaultWindow:
    fault: str
    start_s: float
    end_s: float  # when the fault was undone (the process back, or the refusal lifted)


@dataclass(frozen=True, slots=True)
class Verdict:
    bound: str
    measured: str
    passed: bool


@dataclass(frozen=True, slots=True)
class Run:
    load_start_s: float
    load_end_s: float
    calls: Sequence[Call]
    samples: Sequence[Sample]
    faults: Sequence[FaultWindow]
    alive_at_end: dict[str, bool]
    tracebacks: dict[str, int]  # tracebacks in each Pier service's output


def _in_fault(call: Call, faults: Sequence[FaultWindow], grace_s: float) -> bool:
    return any(call.end_s >= f.start_s and call.start_s <= f.end_s + grace_s for f in faults)


def _baseline(samples: Sequence[Sample], role: str, bounds: Bounds, load_start_s: float) -> tuple[Sample, Sample]:
    """The first and last samples of the process `role` had at the end, the first taken once it had settled.

    A process there from the start settles after the load's warm-up; one a fault restarted, once it has run
    `restart_settle_s` (its imports and first connections done: before that, its RSS and fds still climb).
    """
    final_pid = samples[-1].pids[role]
    own = [s for s in samples if s.pids.get(role) == final_pid]
    restarted = own[0].t_s > samples[0].t_s
    settled_at = own[0].t_s + bounds.restart_settle_s if restarted else load_start_s + bounds.warmup_s
    settled = [s for s in own if s.t_s >= settled_at]
    return (settled or own)[0], own[-1]


def growth(run: Run, bounds: Bounds, role: str) -> tuple[float, int]:
    """RSS growth (MiB) and fd growth of the last process of `role` since its baseline."""
    first, last = _baseline(run.samples, role, bounds, run.load_start_s)
    return last.rss_mib[role] - first.rss_mib[role], last.fds[role] - first.fds[role]


def evaluate(run: Run, bounds: Bounds) -> list[Verdict]:
    """Every bound with what was measured and whether it held."""
    seconds = run.load_end_s - run.load_start_s
    outside = [c for c in run.calls if not c.ok and not _in_fault(c, run.faults, bounds.fault_grace_s)]
    hung = [c for c in run.calls if c.end_s - c.start_s >= CALL_TIMEOUT_S]
    unrecovered = [
        f.fault
        for f in run.faults
        if not any(c.ok and f.end_s <= c.start_s <= f.end_s + bounds.recovery_s for c in run.calls)
    ]
    redis_max = max((s.redis_used_mib for s in run.samples if s.redis_used_mib is not None), default=0.0)
    stream_max = max((s.stream_len for s in run.samples if s.stream_len is not None), default=0)
    out = [
        Verdict(
            f"load ran: >= {bounds.min_requests_per_s:g} requests/s",
            f"{len(run.calls):,} requests in {seconds:.0f} s ({len(run.calls) / max(seconds, 1e-9):.1f}/s)",
            len(run.calls) >= bounds.min_requests_per_s * seconds,
        ),
        Verdict("faults injected: >= 1", f"{len(run.faults)}", len(run.faults) >= 1),
        Verdict(
            "0 failed requests outside fault windows",
            f"{len(outside)} (of {sum(not c.ok for c in run.calls)} failures in all)",
            not outside,
        ),
        Verdict(f"0 requests unanswered after {CALL_TIMEOUT_S:.0f} s (hangs)", f"{len(hung)}", not hung),
        Verdict(
            f"a good answer within {bounds.recovery_s:g} s of each fault's end",
            "every fault" if not unrecovered else f"not after: {', '.join(unrecovered)}",
            not unrecovered,
        ),
    ]
    for role in SERVICES:
        rss, fds = growth(run, bounds, role)
        limit = bounds.rss_growth_mib[role]
        out.append(Verdict(f"{role} RSS growth after warm-up < {limit:g} MiB", f"{rss:+.1f} MiB", rss < limit))
        out.append(
            Verdict(f"{role} open fds back to baseline (+{bounds.fd_growth})", f"{fds:+d}", fds <= bounds.fd_growth)
        )
    out += [
        Verdict(
            f"Redis used_memory <= {bounds.redis_used_mib:g} MiB",
            f"max {redis_max:.1f} MiB",
            redis_max <= bounds.redis_used_mib,
        ),
        Verdict(
            f"event stream length <= {bounds.stream_len:,}", f"max {stream_max:,}", stream_max <= bounds.stream_len
        ),
        Verdict(
            "every service alive at the end, no traceback",
            ", ".join(f"{k} {'up' if v else 'DEAD'}" for k, v in run.alive_at_end.items())
            + f"; tracebacks {sum(run.tracebacks.values())}",
            all(run.alive_at_end.values()) and not any(run.tracebacks.values()),
        ),
    ]
    return out


def _figure_rows(run: Run) -> list[str]:
    roles = list(run.samples[0].rss_mib)
    rows = [
        "| process | RSS first | RSS max | RSS last | fds first | fds max | fds last |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for role in roles:
        rss = [s.rss_mib[role] for s in run.samples if role in s.rss_mib]
        fds = [s.fds[role] for s in run.samples if role in s.fds]
        rss_cells = f"{rss[0]:.1f} MiB | {max(rss):.1f} MiB | {rss[-1]:.1f} MiB"
        rows.append(f"| {role} | {rss_cells} | {fds[0]} | {max(fds)} | {fds[-1]} |")
    return rows


def markdown(run: Run, bounds: Bounds, verdicts: Sequence[Verdict], stamp: str) -> str:
    by_kind: dict[str, list[Call]] = {}
    for call in run.calls:
        by_kind.setdefault(call.kind, []).append(call)
    redis = [s.redis_used_mib for s in run.samples if s.redis_used_mib is not None]
    stream = [s.stream_len for s in run.samples if s.stream_len is not None]
    passed = sum(v.passed for v in verdicts)
    lines = [
        "# Soak: mixed load with faults",
        "",
        "<!-- Written by `python -m tests.benchmarks.soak`; do not edit by hand. -->",
        "",
        f"Run {stamp}: {run.load_end_s - run.load_start_s:.0f} s of load, {len(run.calls):,} requests,"
        f" {len(run.faults)} faults, {len(run.samples)} samples. **{passed} of {len(verdicts)} bounds held.**",
        "",
        "| bound | measured | |",
        "|---|---|---|",
        *[f"| {v.bound} | {v.measured} | {'PASS' if v.passed else 'FAIL'} |" for v in verdicts],
        "",
        "## Requests",
        "",
        "| kind | requests | failed | failed outside fault windows |",
        "|---|---:|---:|---:|",
    ]
    for kind, calls in sorted(by_kind.items()):
        failed = [c for c in calls if not c.ok]
        outside = [c for c in failed if not _in_fault(c, run.faults, bounds.fault_grace_s)]
        lines.append(f"| {kind} | {len(calls):,} | {len(failed)} | {len(outside)} |")
    lines += ["", "## Faults", "", "| at | fault | lasted | requests failed in its window |", "|---:|---|---:|---:|"]
    for f in run.faults:
        in_window = sum(not c.ok and _in_fault(c, [f], bounds.fault_grace_s) for c in run.calls)
        lines.append(
            f"| {f.start_s - run.load_start_s:.0f} s | {f.fault} | {f.end_s - f.start_s:.1f} s | {in_window} |"
        )
    lines += ["", "## Processes (RSS, open file descriptors)", "", *_figure_rows(run), ""]
    if redis:
        lines.append(
            f"Redis used_memory: first {redis[0]:.1f} MiB, max {max(redis):.1f} MiB, last {redis[-1]:.1f} MiB."
        )
    if stream:
        lines.append(f"Event stream length (XLEN): first {stream[0]:,}, max {max(stream):,}, last {stream[-1]:,}.")
    return "\n".join(lines) + "\n"
