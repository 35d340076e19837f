"""Generation slots inside one runner, as llama.cpp's `--parallel N` gives them (DMR's default: 1).

A request that got a loaded runner waits here for a free slot before it generates; waiters are served first come,
first served. A waiter that is cancelled (its client went away) leaves the queue, and a slot handed to a waiter that
was cancelled before it could run is passed on, so no slot is ever lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class Slots:
    """`limit` slots, handed out in arrival order. All methods run on the event loop."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit: must be >= 1")
        self.limit = limit
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    async def acquire(self) -> None:
        """Take a slot, waiting behind earlier requests when all are taken."""
        if self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just as this request went away: give it to the next one.
                self.release()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        # `release` counted the slot for us when it handed it over.

    def release(self) -> None:
        """Free a slot: hand it straight to the oldest waiter, if any."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return  # the slot moves to the waiter; in_use stays the same
        self.in_use -= 1

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Hold one slot for the body of the `async with`; released however it ends."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()
