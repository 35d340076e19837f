"""The fault tier's stack and its one measuring pattern: load on, fault, fault off, good answers again, figures.

The stack is two DMR emulators of equal priority behind one router, the health worker probing every second,
so Pier can always fail over. Streams last about a second (10 chunks, 100 ms apart): at any moment some are
open, and a fault catches them mid-answer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.faults.load import Figures, Load
from tests.harness import ProcessFactory, wait_for
from tests.reliability import Fault, record_fault
from tests.router.support import EmuSpec, Stack, build_stack, endpoints_status, get_json

# Enough generation slots for every client on one emulator: a request queued behind others would otherwise
# wait for its headers, and the header timeout would measure the queue rather than the fault.
STREAM_ARGS = ("--chunks", "10", "--chunk-interval-ms", "100", "--load-time-ms", "0", "--parallel", "16")
# The routes a chat completion takes upstream: faults there leave the health probes (listings, /engines/status)
# alone, so it is the router, not the health worker, that must notice.
CHAT_PATHS = ["/engines/v1/chat", "/engines/llama.cpp/v1/chat", "/v1/chat"]
WARM_OKS = 8  # good answers before a fault: the load runs on every path
SETTLE_OKS = 8  # good answers after it: recovered
HEADER_TIMEOUT = "2s"  # how long a silent endpoint may keep a request before the router tries the other


def fault_stack(
    procs: ProcessFactory,
    workdir: Path,
    redis_url: str,
    *,
    router_extra: dict[str, str] | None = None,
    emu_args: tuple[str, ...] = STREAM_ARGS,
    entry: dict[str, Any] | None = None,
) -> Stack:
    entry = {"response_header_timeout": HEADER_TIMEOUT, **(entry or {})}
    specs = [EmuSpec(name, args=emu_args, entry=entry) for name in ("e1", "e2")]
    return build_stack(procs, workdir, redis_url, specs, router_extra=router_extra)


@dataclass
class Window:
    """When the fault was on (monotonic), filled in by `measure`."""

    start: float = 0.0
    end: float = 0.0


async def measure(
    url: str,
    inject: Callable[[], Awaitable[Any]],
    heal: Callable[[], Awaitable[Any]],
    *,
    clients: int = 8,
    after: int = SETTLE_OKS,
    recover_s: float = 45.0,
    on_start: Callable[[Load], None] | None = None,
) -> tuple[Figures, Load]:
    """Run the mixed load; `inject` the fault (returns once it has visibly taken effect); `heal` it (returns once
    the fault is over); wait for `after` good answers begun after the heal; stop the load; the figures."""
    load = Load(url, clients=clients).start()
    if on_start is not None:
        on_start(load)  # a fault that watches the load while it is on
    try:
        begun = time.monotonic()
        await wait_for(lambda: load.oks_since(begun) >= WARM_OKS, timeout_s=30, what="the load to run")
        window = Window(start=time.monotonic())
        await inject()
        await heal()
        window.end = time.monotonic()
        await wait_for(
            lambda: load.oks_since(window.end) >= after, timeout_s=recover_s, what="good answers after the fault"
        )
    finally:
        results = await load.stop()
    return Figures.of(results, window.start, window.end), load


def record(fault: str, figures: Figures, *, tier: str = "processes") -> None:
    record_fault(
        Fault(
            fault=fault,
            tier=tier,
            requests=figures.requests,
            clients_saw=figures.saw,
            lost_before_streaming=figures.lost_before_streaming,
            streams_cut=figures.streams_cut,
            recovery_s=figures.recovery_s,
        )
    )
    print(f"{fault}: {figures}")  # the figures in the test's output too


def circuits_closed_and_nothing_marked_down(router_url: str, names: list[str]) -> None:
    status = endpoints_status(router_url)
    for name in names:
        entry = status[name]
        assert entry["circuit"]["state"] == "closed", (name, entry["circuit"])
        assert entry["circuit"]["times_opened"] == 0, (name, entry["circuit"])
        assert not entry["marked_down"], name
        assert entry["routable"], (name, entry["status"])
    assert get_json(f"{router_url}/internal/status")["circuits_open"] == []
