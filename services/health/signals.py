"""Passive signals: routers report a failed connection on `keys.SIGNALS`; the leader probes that endpoint now."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from redis.exceptions import RedisError

from shared import keys, statestore
from shared.state import Event, EventKind
from shared.statestore import RedisClient

log = logging.getLogger(__name__)

BLOCK_MS = 5000
_RETRY_S = 1.0


def endpoint_down(fields: dict[str, Any]) -> tuple[str, float, str | None] | None:
    """(endpoint, when, traceparent) of an `ENDPOINT_DOWN` signal, or None for any other (or malformed) entry."""
    raw = fields.get("event")
    if not isinstance(raw, str):
        return None
    try:
        event = Event.model_validate_json(raw)
    except ValidationError:
        return None
    return (event.endpoint, event.at, event.traceparent) if event.kind is EventKind.ENDPOINT_DOWN else None


async def follow_signals(redis: RedisClient, poke: Callable[[str, float, str | None], bool]) -> None:
    """Tail the signal stream from now on; `poke(endpoint, reported_at, traceparent)` for each report. Runs
    until cancelled."""
    position: str | None = None
    while position is None:
        try:
            position = await statestore.last_id(redis, keys.SIGNALS)
        except (RedisError, OSError) as exc:
            log.warning("reading signals failed: %s", exc)
            await asyncio.sleep(_RETRY_S)
    while True:
        try:
            reply: Any = await redis.xread({keys.SIGNALS: position}, count=100, block=BLOCK_MS)
        except (RedisError, OSError) as exc:
            log.warning("reading signals failed: %s", exc)
            await asyncio.sleep(_RETRY_S)
            continue
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                position = str(entry_id)
                report = endpoint_down(fields)
                if report is not None and poke(*report):
                    log.info("%s reported down by a router: probing now", report[0])
