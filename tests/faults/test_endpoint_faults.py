"""An endpoint that dies mid-stream, hangs before its headers, answers garbage, or answers one byte a second.

Two emulators serve the model; one misbehaves on its chat routes only (its health probes still pass, so the
router, not the health worker, has to notice). Whatever had not started streaming must fail over: 0 lost.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.support import CHAT_PATHS, fault_stack, measure, record
from tests.harness import ProcessFactory, wait_for
from tests.router.support import endpoints_status, get_json

pytestmark = pytest.mark.faults


async def test_endpoint_killed_mid_stream(procs: ProcessFactory, tmp_path: Path, redis_url: str) -> None:
    stack = fault_stack(procs, tmp_path, redis_url)
    e1 = stack.emu("e1")

    async def kill() -> None:
        # Only once streams are open on e1: the kill then cuts some.
        await wait_for(lambda: _streaming(stack.url), timeout_s=10, what="streams open on e1")
        e1.proc.kill()

    async def noticed() -> None:
        await wait_for(lambda: not endpoints_status(stack.url)["e1"]["routable"], timeout_s=15, what="e1 seen down")

    figures, _ = await measure(stack.url, kill, noticed)
    record("an endpoint killed (SIGKILL) mid-stream", figures)
    assert figures.lost_before_streaming == 0
    assert figures.streams_cut <= 8  # at most the streams open on e1 at the kill: one per client
    assert figures.recovery_s is None or figures.recovery_s < 10


def _streaming(router_url: str) -> bool:
    return bool(endpoints_status(router_url)["e1"]["in_flight"] >= 2)


async def _misbehave(procs: ProcessFactory, tmp_path: Path, redis_url: str, label: str, **fault: object) -> None:
    """e1 misbehaves on chat for a few seconds under load; e2 must take everything that had not started."""
    stack = fault_stack(procs, tmp_path, redis_url)
    e1 = stack.emu("e1")

    async def on() -> None:
        await e1.fault(paths=CHAT_PATHS, **fault)

        async def hit() -> bool:
            # The fault has met real requests, counted by the emulator as it applies it. (Counting requests that
            # arrived after the fault was set raced with the load: in one CI run five met it before the count was
            # read, the router's circuit for e1 then opened, and no more came for 30 s.)
            return int((await e1.state())["counters"]["faults_applied"]) >= 4

        await wait_for(hit, timeout_s=30, what=f"requests to meet the {label} fault")

    async def off() -> None:
        await wait_for(lambda: _failed_over(stack.url), timeout_s=30, what="the router to fail over from e1")
        await e1.fault(mode="none")

    figures, _ = await measure(stack.url, on, off)
    record(label, figures)
    assert figures.lost_before_streaming == 0
    assert figures.streams_cut == 0  # the fault is before any byte of an answer: nothing had started
    state = await e1.state()
    assert state["counters"]["faults_applied"] >= 4


def _failed_over(router_url: str) -> bool:
    runtime = get_json(f"{router_url}/internal/status")["runtime"]
    return int(runtime.get("totals", {}).get("failovers", 0)) >= 4


async def test_endpoint_hung_before_its_headers(procs: ProcessFactory, tmp_path: Path, redis_url: str) -> None:
    await _misbehave(
        procs, tmp_path, redis_url, "an endpoint hung before its headers (header timeout 2 s)", mode="hang"
    )


async def test_endpoint_answering_garbage(procs: ProcessFactory, tmp_path: Path, redis_url: str) -> None:
    await _misbehave(procs, tmp_path, redis_url, "an endpoint answering bytes that are not HTTP", mode="garbage")


async def test_endpoint_answering_one_byte_a_second(procs: ProcessFactory, tmp_path: Path, redis_url: str) -> None:
    await _misbehave(
        procs, tmp_path, redis_url, "an endpoint answering one byte a second (header timeout 2 s)", mode="trickle"
    )
