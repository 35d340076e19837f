"""The soak script (`python -m tests.benchmarks.soak`): a short real run holds its bounds and writes its page, and
each bound fails on figures that break it (so a passing soak means something).
"""

from __future__ import annotations

from pathlib import Path

from tests.benchmarks import soak
from tests.benchmarks.soak_load import Call
from tests.benchmarks.soak_report import FaultWindow, Run, Sample, evaluate

SHORT_MINUTES = 0.45  # 27 s of load: two faults (an emulator killed, Redis restarted empty)


def test_short_soak_holds_its_bounds_and_writes_its_page(tmp_path: Path) -> None:
    result, verdicts, page = soak.run(SHORT_MINUTES, tmp_path)
    failed = [f"{v.bound}: {v.measured}" for v in verdicts if not v.passed]
    assert not failed, failed
    assert len(result.faults) >= 2
    assert {c.kind for c in result.calls} == {"openai", "openai-stream", "anthropic", "anthropic-stream", "disconnect"}
    assert len(result.samples) >= 10
    written = (tmp_path / "soak.md").read_text()
    assert written == page
    assert f"{len(verdicts)} of {len(verdicts)} bounds held" in page
    print(page)


def _sample(t_s: float, rss: float, fds: int, stream_len: int, pid: int = 10) -> Sample:
    roles = ("router", "health", "warmup")
    return Sample(
        t_s=t_s,
        pids=dict.fromkeys(roles, pid),
        rss_mib=dict.fromkeys(roles, rss),
        fds=dict.fromkeys(roles, fds),
        redis_used_mib=1.0 + rss,
        stream_len=stream_len,
    )


def _run(samples: list[Sample], calls: list[Call], faults: list[FaultWindow]) -> Run:
    return Run(0.0, 600.0, calls, samples, faults, {"router": True, "health": True, "warmup": True}, {})


def _verdicts(run: Run) -> dict[str, bool]:
    return {v.bound.split(" ")[0] + " " + v.bound.split(" ")[1]: v.passed for v in evaluate(run, soak.BOUNDS)}


def test_every_bound_fails_on_figures_that_break_it() -> None:
    calls = [Call("openai", t / 4, t / 4 + 0.1, True, "200") for t in range(0, 2400)]
    fault = FaultWindow("emulator killed", 300.0, 305.0)
    steady = [_sample(float(t), 60.0, 20, 100) for t in range(0, 601, 5)]
    good = evaluate(_run(steady, calls, [fault]), soak.BOUNDS)
    assert all(v.passed for v in good), [v for v in good if not v.passed]

    # A leak: RSS and fds grow steadily after the warm-up; Redis memory and the stream grow without bound.
    leaking = [_sample(float(t), 60.0 + t / 10, 20 + t // 20, 100 + t * 30) for t in range(0, 601, 5)]
    # A failure long after the fault, one hang, and no good answer after the fault.
    bad_calls = [c for c in calls if not 305 <= c.start_s <= 340] + [
        Call("openai-stream", 500.0, 500.2, False, "status 503"),
        Call("anthropic", 400.0, 440.0, False, "no answer in 30 s"),
    ]
    dead = Run(0.0, 600.0, bad_calls, leaking, [fault], {"router": False, "health": True}, {"router": 1})
    failed = {v.bound for v in evaluate(dead, soak.BOUNDS) if not v.passed}
    expected = [
        "0 failed requests outside fault windows",
        "0 requests unanswered after 30 s (hangs)",
        "a good answer within 20 s of each fault's end",
        "router RSS growth after warm-up < 20 MiB",
        "router open fds back to baseline (+5)",
        "health RSS growth after warm-up < 15 MiB",
        "warmup open fds back to baseline (+5)",
        "Redis used_memory <= 64 MiB",
        f"event stream length <= {soak.BOUNDS.stream_len:,}",
        "every service alive at the end, no traceback",
    ]
    missing = [b for b in expected if b not in failed]
    assert not missing, (missing, failed)

    idle = evaluate(_run(steady, [], []), soak.BOUNDS)
    assert {v.bound for v in idle if not v.passed} == {"load ran: >= 2 requests/s", "faults injected: >= 1"}


def test_a_restarted_process_is_measured_from_its_own_baseline() -> None:
    # The health worker restarted at 300 s with a smaller RSS: its growth is against the new process's
    # baseline (taken once it has settled, 15 s after its start), not against the old process.
    samples = [_sample(float(t), 60.0, 20, 100, pid=10 if t < 300 else 11) for t in range(0, 601, 5)]
    late = [
        Sample(s.t_s, s.pids, {**s.rss_mib, "health": 30.0 + (s.t_s - 300) / 5}, s.fds, 1.0, 100) if s.t_s >= 300 else s
        for s in samples
    ]
    calls = [Call("openai", t / 4, t / 4 + 0.1, True, "200") for t in range(0, 2400)]
    verdicts = {v.bound: v for v in evaluate(_run(late, calls, [FaultWindow("x", 295.0, 300.0)]), soak.BOUNDS)}
    health = verdicts["health RSS growth after warm-up < 15 MiB"]
    # From 300 + 15 s (33 MiB) to 600 s (90 MiB): +57 MiB, a leak, though the old process had 60 MiB.
    assert not health.passed
    assert health.measured == "+57.0 MiB"
