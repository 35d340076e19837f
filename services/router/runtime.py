"""What one router process counts while it serves: in-flight requests per endpoint, the round-robin rotation,
waiters for a free slot when every candidate is full, and totals for the status routes."""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from typing import Any

from shared.turns import Turns


class Runtime:
    """Per-process request accounting. Single event loop: no locks needed."""

    def __init__(self, *, seed: int | None = None) -> None:
        self.inflight: Counter[str] = Counter()
        self.rng = random.Random(seed)
        self._rotation = itertools.count()
        self._turns = Turns()
        self.started_at = time.time()
        self.totals: Counter[str] = Counter()

    def next_rotation(self) -> int:
        return next(self._rotation)

    def acquire(self, endpoint: str) -> None:
        self.inflight[endpoint] += 1

    def release(self, endpoint: str) -> None:
        left = self.inflight[endpoint] - 1
        if left > 0:
            self.inflight[endpoint] = left
        else:
            del self.inflight[endpoint]
        self._turns.wake_one()  # the oldest waiter re-routes first

    def has_room(self, endpoint: str, max_concurrent: int) -> bool:
        return max_concurrent <= 0 or self.inflight[endpoint] < max_concurrent

    async def wait_for_slot(self, timeout_s: float) -> bool:
        """Wait until some request finishes (a slot may be free), at most `timeout_s`; False on timeout."""
        return await self._turns.wait(timeout_s)

    @property
    def waiting(self) -> int:
        return len(self._turns)

    def count(self, what: str, n: int = 1) -> None:
        self.totals[what] += n

    def describe(self) -> dict[str, Any]:
        return {
            "in_flight": sum(self.inflight.values()),
            "waiting_for_capacity": self.waiting,
            "uptime_s": round(time.time() - self.started_at, 3),
            "totals": dict(self.totals),
        }
