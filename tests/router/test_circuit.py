"""Circuit breakers, driven by an explicit clock value (no sleeping)."""

from __future__ import annotations

from services.router.circuit import Circuits, CircuitState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_threshold_consecutive_failures_open_the_circuit() -> None:
    clock = Clock()
    circuits = Circuits(threshold=3, open_s=30, clock=clock)
    circuits.failure("a")
    circuits.failure("a")
    assert circuits.allow("a")
    assert circuits.state("a") is CircuitState.CLOSED
    circuits.failure("a")
    assert circuits.state("a") is CircuitState.OPEN
    assert not circuits.allow("a")
    assert circuits.blocked() == {"a"}
    assert circuits.retry_after_s("a") == 30


def test_a_success_resets_the_count() -> None:
    circuits = Circuits(threshold=2, open_s=30, clock=Clock())
    circuits.failure("a")
    circuits.success("a")
    circuits.failure("a")
    assert circuits.state("a") is CircuitState.CLOSED
    assert circuits.describe("a")["failures"] == 1


def test_half_open_admits_one_trial_and_success_closes() -> None:
    clock = Clock()
    circuits = Circuits(threshold=1, open_s=10, clock=clock)
    circuits.failure("a")
    assert not circuits.allow("a")
    clock.now += 10
    assert circuits.state("a") is CircuitState.HALF_OPEN
    assert "a" not in circuits.blocked()
    assert circuits.allow("a")  # the trial
    assert not circuits.allow("a")  # only one at a time
    assert circuits.blocked() == {"a"}
    circuits.success("a")
    assert circuits.state("a") is CircuitState.CLOSED
    assert circuits.allow("a")
    assert circuits.allow("a")
    assert circuits.blocked() == frozenset()


def test_failed_trial_opens_again_for_the_full_time() -> None:
    clock = Clock()
    circuits = Circuits(threshold=5, open_s=10, clock=clock)
    for _ in range(5):
        circuits.failure("a")
    clock.now += 11
    assert circuits.allow("a")
    circuits.failure("a", "timeout")
    assert circuits.state("a") is CircuitState.OPEN
    assert circuits.retry_after_s("a") == 10
    described = circuits.describe("a")
    assert described["times_opened"] == 2
    assert described["last_failure"] == "timeout"


def test_a_trial_without_verdict_frees_the_slot() -> None:
    clock = Clock()
    circuits = Circuits(threshold=1, open_s=1, clock=clock)
    circuits.failure("a")
    clock.now += 2
    assert circuits.allow("a")
    circuits.settle("a")  # the client went away: neither success nor failure
    assert circuits.allow("a")


def test_endpoints_are_independent() -> None:
    circuits = Circuits(threshold=1, open_s=10, clock=Clock())
    circuits.failure("a")
    assert circuits.allow("b")
    assert circuits.blocked() == {"a"}
    assert circuits.describe("b") == {"state": "closed", "failures": 0, "times_opened": 0}
