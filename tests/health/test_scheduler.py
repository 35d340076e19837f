"""The per-endpoint timers, driven by a recording tick (no network): swaps, pokes, failures, shutdown."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.health.scheduler import Scheduler, first_delay_s
from shared.config import Endpoint
from tests.harness import wait_for
from tests.health.endpoints import endpoint


class Recorder:
    """A tick that records which endpoint it probed when, and waits `delay_s` until the next probe."""

    def __init__(self, delay_s: float = 30.0) -> None:
        self.calls: list[tuple[str, float]] = []
        self.delay_s = delay_s
        self.block: asyncio.Event | None = None
        self.cancelled: list[str] = []
        self.fail_once: set[str] = set()

    async def __call__(self, e: Endpoint) -> float:
        self.calls.append((e.name, time.time()))
        if e.name in self.fail_once:
            self.fail_once.discard(e.name)
            raise RuntimeError("a bug in a tick")
        if self.block is not None:
            try:
                await self.block.wait()
            except asyncio.CancelledError:
                self.cancelled.append(e.name)
                raise
        return self.delay_s

    def count(self, name: str) -> int:
        return sum(1 for n, _ in self.calls if n == name)


A = endpoint("a", check_interval="30s")
B = endpoint("b", check_interval="30s")


def test_first_delay_is_spread_and_stable() -> None:
    fast = endpoint("x", check_interval="1s", check_timeout="500ms")
    assert 0 <= first_delay_s(fast) < 0.5
    assert first_delay_s(fast) == first_delay_s(endpoint("x", check_interval="1s", check_timeout="500ms"))
    assert first_delay_s(endpoint("x", check_interval="30s")) < 1.0


async def test_update_starts_stops_and_restarts() -> None:
    tick = Recorder()
    scheduler = Scheduler(tick, spread_first=False)
    try:
        change = await scheduler.update([A, B])
        assert (change.added, change.removed, change.changed) == (("a", "b"), (), ())
        await wait_for(lambda: tick.count("a") == 1 and tick.count("b") == 1, what="first probes")
        moved = endpoint("b", url="http://127.0.0.1:2", check_interval="30s")
        change = await scheduler.update([moved])
        assert (change.added, change.removed, change.changed) == ((), ("a",), ("b",))
        await wait_for(lambda: tick.count("b") == 2, what="b probed again at its new address")
        assert set(scheduler.endpoints) == {"b"}
        assert tick.count("a") == 1
        assert (await scheduler.update([moved])).changed == ()  # same table: nothing restarts
    finally:
        await scheduler.close()


async def test_poke_probes_now_unless_a_later_probe_started() -> None:
    tick = Recorder(delay_s=30.0)
    scheduler = Scheduler(tick, spread_first=False)
    try:
        await scheduler.update([A])
        await wait_for(lambda: tick.count("a") == 1, what="first probe")
        started = tick.calls[-1][1]
        assert not scheduler.poke("a", started - 1.0)  # reported before that probe: already seen
        assert not scheduler.poke("nobody", time.time())
        assert scheduler.poke("a", time.time() + 0.001)
        assert not scheduler.poke("a", time.time() + 0.002)  # one probe already due: reports coalesce
        await wait_for(lambda: tick.count("a") == 2, timeout_s=5, what="the poked probe (long before 30 s)")
    finally:
        await scheduler.close()


async def test_a_failing_tick_does_not_end_probing(caplog: pytest.LogCaptureFixture) -> None:
    tick = Recorder(delay_s=0.05)
    tick.fail_once.add("a")
    scheduler = Scheduler(tick, spread_first=False)
    fast = endpoint("a", check_interval="1s", check_timeout="500ms")
    try:
        await scheduler.update([fast])
        await wait_for(lambda: tick.count("a") >= 2, timeout_s=5, what="probing to go on after the error")
    finally:
        await scheduler.close()
    assert "probe of a failed unexpectedly" in caplog.text


async def test_close_cancels_in_flight_probes() -> None:
    tick = Recorder()
    tick.block = asyncio.Event()  # never set: the probe hangs
    scheduler = Scheduler(tick, spread_first=False)
    await scheduler.update([A, B])
    await wait_for(lambda: len(tick.calls) == 2, what="both probes in flight")
    started = time.monotonic()
    await scheduler.close()
    assert time.monotonic() - started < 1.0
    assert sorted(tick.cancelled) == ["a", "b"]
    assert scheduler.endpoints == {}
