"""A first-come, first-served queue of coroutines waiting for a turn (a free slot, a free connection)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class Turns:
    """Waiters woken one at a time, oldest first. Single event loop: no locks needed."""

    def __init__(self) -> None:
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self._waiters)

    async def wait(self, timeout_s: float | None = None) -> bool:
        """Until `wake_one` picks this waiter (True) or `timeout_s` passes (False); `fail_all` raises here."""
        if timeout_s is not None and timeout_s <= 0:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            return False
        except asyncio.CancelledError:
            # Woken but gone before taking the turn: pass the turn on so no slot goes unused.
            if waiter.done() and not waiter.cancelled():
                self.wake_one()
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        return True

    def wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def fail_all(self, exc: BaseException) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(exc)
