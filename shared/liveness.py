"""Liveness for container healthchecks: a worker records its instance id in a file and beats in Redis;
`python -m services.<name> --check` (a separate process in the same container) reads that id and checks
the beat is fresh."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from redis.exceptions import RedisError

from shared import statestore
from shared.redisconn import RedisTarget


def record_instance_id(path: Path, instance_id: str) -> None:
    """Write the running worker's id where `--check` will look (best effort: a read-only FS only costs --check)."""
    with contextlib.suppress(OSError):
        path.write_text(instance_id, encoding="utf-8")


async def _heartbeat_fresh(redis_url: RedisTarget | str, service: str, instance_id: str, max_age_s: float) -> bool:
    redis = statestore.connect(redis_url, timeout_s=2.0)
    try:
        age = await asyncio.wait_for(statestore.heartbeat_age_s(redis, service, instance_id), timeout=3.0)
    except (OSError, TimeoutError, ConnectionError, RedisError) as exc:
        print(f"{service} --check: cannot read the heartbeat: {exc}")
        return False
    finally:
        await redis.aclose()
    if age is None:
        print(f"{service} --check: no heartbeat for {instance_id}")
        return False
    if age > max_age_s:
        print(f"{service} --check: heartbeat of {instance_id} is {age:.1f}s old")
        return False
    return True


def check(redis_url: RedisTarget | str, service: str, id_file: Path, max_age_s: float) -> int:
    """Exit code for `--check`: 0 when this container's worker beat within `max_age_s`, else 1."""
    try:
        instance_id = id_file.read_text(encoding="utf-8").strip()
    except OSError:
        print(f"{service} --check: no running worker recorded in {id_file}")
        return 1
    ok = asyncio.run(_heartbeat_fresh(redis_url, service, instance_id, max_age_s))
    return 0 if ok else 1
