"""Per-endpoint circuit breakers on the request path (per router process).

`threshold` consecutive request failures open an endpoint's circuit: for `open_s` no request goes there. Then
one request is let through as a half-open trial: success closes the circuit, failure opens it again. A
failure is a transport error, a timeout, a 502/503/504 (other than "Loading model") or a stream cut by the
endpoint; a client going away is neither success nor failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class _Circuit:
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0
    open_until: float = 0.0
    trial_in_flight: bool = False
    times_opened: int = 0
    last_failure: str | None = None


_NONE: frozenset[str] = frozenset()


class Circuits:
    """All endpoints' breakers. Only endpoints that have failed are tracked, so the healthy path costs nothing."""

    def __init__(self, threshold: int, open_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = threshold
        self._open_s = open_s
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}
        self._not_closed: set[str] = set()

    def blocked(self) -> frozenset[str]:
        """Endpoints a new request should avoid now (open, or half-open with its trial taken)."""
        if not self._not_closed:
            return _NONE
        now = self._clock()
        out = set()
        for name in self._not_closed:
            circuit = self._circuits[name]
            refusing = now < circuit.open_until if circuit.state is CircuitState.OPEN else circuit.trial_in_flight
            if refusing:
                out.add(name)
        return frozenset(out)

    def allow(self, name: str) -> bool:
        """May a request go to `name` now? An expired open circuit admits exactly one half-open trial."""
        if name not in self._not_closed:
            return True
        circuit = self._circuits[name]
        if circuit.state is CircuitState.OPEN:
            if self._clock() < circuit.open_until:
                return False
            circuit.state = CircuitState.HALF_OPEN
        if circuit.trial_in_flight:
            return False
        circuit.trial_in_flight = True
        return True

    def retry_after_s(self, name: str) -> float:
        """Seconds until `name` admits a request again (0 when it does now)."""
        circuit = self._circuits.get(name)
        if circuit is None or circuit.state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, circuit.open_until - self._clock())

    def success(self, name: str) -> None:
        circuit = self._circuits.get(name)
        if circuit is None:
            return
        circuit.failures = 0
        circuit.trial_in_flight = False
        circuit.state = CircuitState.CLOSED
        self._not_closed.discard(name)

    def failure(self, name: str, reason: str = "") -> None:
        circuit = self._circuits.setdefault(name, _Circuit())
        circuit.failures += 1
        circuit.last_failure = reason or None
        was_trial = circuit.state is CircuitState.HALF_OPEN
        circuit.trial_in_flight = False
        if was_trial or circuit.failures >= self._threshold:
            circuit.state = CircuitState.OPEN
            circuit.open_until = self._clock() + self._open_s
            circuit.times_opened += 1
            self._not_closed.add(name)

    def settle(self, name: str) -> None:
        """A request ended with no verdict (the client left): free a half-open trial for the next request."""
        circuit = self._circuits.get(name)
        if circuit is not None and circuit.state is CircuitState.HALF_OPEN:
            circuit.trial_in_flight = False

    def state(self, name: str) -> CircuitState:
        circuit = self._circuits.get(name)
        if circuit is None:
            return CircuitState.CLOSED
        if circuit.state is CircuitState.OPEN and self._clock() >= circuit.open_until:
            return CircuitState.HALF_OPEN
        return circuit.state

    def describe(self, name: str) -> dict[str, Any]:
        """The breaker as the status routes show it."""
        circuit = self._circuits.get(name)
        if circuit is None:
            return {"state": CircuitState.CLOSED.value, "failures": 0, "times_opened": 0}
        out: dict[str, Any] = {
            "state": self.state(name).value,
            "failures": circuit.failures,
            "times_opened": circuit.times_opened,
        }
        if circuit.last_failure:
            out["last_failure"] = circuit.last_failure
        retry = self.retry_after_s(name)
        if retry > 0:
            out["retry_after_s"] = round(retry, 3)
        return out
