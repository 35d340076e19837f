"""Per-endpoint probe timers: one task per endpoint, so a slow or hanging endpoint never delays another.

Each task probes, asks its tick for the wait until the next probe, and sleeps until then measured from
when the probe *started*, so the interval is honoured however long the probe took. `poke()` wakes one
task early (a router reported the endpoint down after its last probe started). The endpoint table is
swapped whole by `update()`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from shared.config import Endpoint

log = logging.getLogger(__name__)

Tick = Callable[[Endpoint], Awaitable[float]]
"""Probe and publish one endpoint; return the seconds to wait before the next probe."""

# First probes are spread over up to this fraction of the interval (at most this many seconds), so
# hundreds of endpoints do not fire in the same millisecond forever after.
_SPREAD_FRACTION = 0.5
_SPREAD_MAX_S = 1.0


def first_delay_s(endpoint: Endpoint) -> float:
    """A stable offset in [0, min(interval/2, 1 s)) derived from the name, for the first probe."""
    spread_s = min(endpoint.check_interval_s * _SPREAD_FRACTION, _SPREAD_MAX_S)
    return (zlib.crc32(endpoint.name.encode()) % 1000) / 1000 * spread_s


@dataclass(eq=False)
class _Slot:
    endpoint: Endpoint
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    last_started_wall: float = float("-inf")  # unix time, comparable with a router's report


@dataclass(frozen=True, slots=True)
class TableChange:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]


class Scheduler:
    """Owns one probe task per endpoint; `close()` cancels and awaits them all."""

    def __init__(self, tick: Tick, *, spread_first: bool = True) -> None:
        self._tick = tick
        self._slots: dict[str, _Slot] = {}
        self._spread_first = spread_first

    @property
    def endpoints(self) -> dict[str, Endpoint]:
        return {name: slot.endpoint for name, slot in self._slots.items()}

    async def update(self, endpoints: Iterable[Endpoint]) -> TableChange:
        """Make the running set equal `endpoints`: start new ones, stop gone ones, restart redefined ones.

        Stopped tasks are awaited before this returns, so no probe of a removed endpoint publishes after it.
        """
        wanted = {e.name: e for e in endpoints}
        removed = [name for name in self._slots if name not in wanted]
        changed = [name for name, e in wanted.items() if name in self._slots and self._slots[name].endpoint != e]
        added = [name for name in wanted if name not in self._slots]
        stopping = [task for name in (*removed, *changed) if (task := self._stop(name)) is not None]
        if stopping:
            await asyncio.gather(*stopping, return_exceptions=True)
        for name in (*changed, *added):
            self._start(wanted[name])
        return TableChange(tuple(added), tuple(removed), tuple(changed))

    def poke(self, name: str, reported_at: float) -> bool:
        """Probe this endpoint now, because something failed on it at `reported_at` (unix time).

        Ignored when a probe started after that moment (it has seen, or is seeing, the failure) or one is
        already due; many reports of one outage therefore cost one probe. True if a probe was woken.
        """
        slot = self._slots.get(name)
        if slot is None or slot.wake.is_set() or reported_at <= slot.last_started_wall:
            return False
        slot.wake.set()
        return True

    async def close(self) -> None:
        """Cancel every probe task (in-flight probes included) and wait for them to finish."""
        tasks = [slot.task for slot in self._slots.values() if slot.task is not None]
        self._slots.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, endpoint: Endpoint) -> None:
        slot = _Slot(endpoint)
        slot.task = asyncio.create_task(self._run(slot), name=f"probe:{endpoint.name}")
        self._slots[endpoint.name] = slot

    def _stop(self, name: str) -> asyncio.Task[None] | None:
        slot = self._slots.pop(name, None)
        if slot is None or slot.task is None:
            return None
        slot.task.cancel()
        return slot.task

    async def _run(self, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + (first_delay_s(slot.endpoint) if self._spread_first else 0.0)
        while True:
            try:
                async with asyncio.timeout_at(next_at):
                    await slot.wake.wait()
            except TimeoutError:
                pass
            slot.wake.clear()
            started = loop.time()
            slot.last_started_wall = time.time()
            try:
                delay_s = await self._tick(slot.endpoint)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug in one tick must not end this endpoint's probing; it is logged with its traceback.
                log.exception("probe of %s failed unexpectedly", slot.endpoint.name)
                delay_s = slot.endpoint.check_interval_s
            next_at = max(started + delay_s, loop.time())
