"""Coalescing state writes: the probes that finish within a few milliseconds share one Redis round trip.

With hundreds of endpoints a Redis pipeline per probe is a third of the worker's CPU; batching them costs a
reader at most `window_s` (50 ms) of delay. Each caller still awaits its own write (and sees its error), so the
publisher's "remember only what was written" rule holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from shared import statestore
from shared.state import EndpointState, Event
from shared.statestore import RedisClient

DEFAULT_WINDOW_S = 0.05
DEFAULT_MAX_BATCH = 256


@dataclass(slots=True)
class _Write:
    state: EndpointState
    events: list[Event]
    done: asyncio.Future[None]


class WriteBatcher:
    """Writes states (and the events announcing them, after them) in non-transactional pipelines."""

    def __init__(
        self, redis: RedisClient, *, window_s: float = DEFAULT_WINDOW_S, max_batch: int = DEFAULT_MAX_BATCH
    ) -> None:
        self._redis = redis
        self._window_s = window_s
        self._max_batch = max_batch
        self._pending: list[_Write] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        """Writes waiting for their batch to go out."""
        return len(self._pending)

    async def write(self, state: EndpointState, events: list[Event]) -> None:
        """Queue one state (and its events); returns once they are in Redis, raises if that failed."""
        loop = asyncio.get_running_loop()
        item = _Write(state, events, loop.create_future())
        # Retrieve the outcome even when the caller was cancelled, so no "never retrieved" error is logged.
        item.done.add_done_callback(_consume)
        self._pending.append(item)
        if len(self._pending) >= self._max_batch:
            self._flush_now()
        elif self._timer is None:
            self._timer = loop.call_later(self._window_s, self._flush_now)
        # A cancelled caller does not cancel the write: others share the batch, and it is in flight anyway.
        await asyncio.shield(item.done)

    async def drain(self) -> None:
        """Write everything queued and wait for every write in flight (before deleting an endpoint's state)."""
        self._flush_now()
        while self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)

    def _flush_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        task = asyncio.create_task(self._flush(batch), name="state-write")
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _flush(self, batch: list[_Write]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for item in batch:
                    statestore.queue_endpoint_state(pipe, item.state)
                    for event in item.events:
                        statestore.queue_event(pipe, event)
                await pipe.execute()
        except BaseException as exc:
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
            if not isinstance(exc, Exception):
                raise
            return
        for item in batch:
            if not item.done.done():
                item.done.set_result(None)

    async def close(self) -> None:
        """Cancel pending and in-flight writes (shutdown: their callers are being cancelled too)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for item in self._pending:
            item.done.cancel()
        self._pending = []
        for task in list(self._flushing):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._flushing, return_exceptions=True)


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
