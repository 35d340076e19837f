"""Two health writers whose clocks disagree by 30 s: the state the router keeps must be the latest written.

Writer A (the machine's clock) leads and dies; writer B, 30 s behind (libfaketime), takes the lease over and
writes every state with a `checked_at` 30 s in the past. Then e1 goes down. The router must follow B: e1
offline, e2 healthy, both known. Ordered by the writers' clocks, B's states would lose to A's last ones and
look expired on arrival, and the router would be left guessing on unknown endpoints.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from shared import keys
from shared.state import EndpointState
from tests.faults.support import fault_stack, measure, record
from tests.harness import ProcessFactory, require_binary, wait_for
from tests.router.support import endpoints_status, health_env

pytestmark = pytest.mark.faults

SKEW = "-30s"


async def test_health_writers_with_skewed_clocks(
    procs: ProcessFactory, tmp_path: Path, redis_url: str, redis: Redis
) -> None:
    preload = libfaketime()
    stack = fault_stack(procs, tmp_path, redis_url)
    assert stack.health is not None
    writer_a = stack.health
    env = {**health_env(redis_url, tmp_path, stack.config), "PIER_INSTANCE_ID": "health-skewed"}
    env["PIER_HEALTH_ID_FILE"] = str(tmp_path / "health-skewed.id")
    # The library itself, not the `faketime` command: that one forks and does not pass SIGTERM on, so the
    # worker would outlive the test.
    env.update({"LD_PRELOAD": preload, "FAKETIME": SKEW})
    writer_b = procs.python("health-skewed", "services.health", env=env)
    e1 = stack.emu("e1")
    took_over: list[float] = []

    def follows_b() -> bool:
        status = endpoints_status(stack.url)
        e1_seen, e2_seen = status["e1"], status["e2"]
        return (
            e1_seen["known"]
            and e1_seen["status"] == "offline"
            and not e1_seen["marked_down"]  # B's verdict, not the router's own passive mark
            and e2_seen["known"]
            and e2_seen["routable"]
        )

    async def skew_then_fail() -> None:
        writer_a.kill()
        await wait_for(lambda: _written_by(redis, "health-skewed"), timeout_s=30, what="writer B to lead")
        took_over.append(time.monotonic())
        await e1.fault(mode="refuse")
        await wait_for(follows_b, timeout_s=30, what="the router to follow the skewed writer's states")

    async def heal() -> None:
        await e1.fault(mode="none")

        def e1_back() -> bool:
            seen = endpoints_status(stack.url)["e1"]
            return bool(seen["known"] and seen["routable"])

        await wait_for(e1_back, timeout_s=30, what="e1 healthy again, as writer B says")

    figures, _ = await measure(stack.url, skew_then_fail, heal)
    assert writer_b.alive()
    record("two health writers 30 s apart (libfaketime): the skewed one takes over, then an endpoint fails", figures)
    assert figures.lost_before_streaming == 0


def libfaketime() -> str:
    """The multi-threaded libfaketime (Debian's `faketime` package), installed when missing (root with apt)."""
    require_binary("faketime", "faketime")
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))
    assert found, "libfaketimeMT.so.1 not found under /usr/lib/*/faketime/ (Debian package faketime)"
    return str(found[0])


async def _written_by(redis: Redis, writer: str) -> bool:
    """Both states in Redis were last written by `writer` (it holds the lease and has probed both)."""
    raw = [await redis.get(keys.endpoint_state(name)) for name in ("e1", "e2")]
    return all(r is not None and EndpointState.model_validate_json(r).writer == writer for r in raw)
