"""`GET /internal/events?since=<id>&limit=<n>`: the last routing changes from the event stream (`keys.EVENTS`),
summarised for people (the status page), read-only.

Each entry says what changed (kind, endpoint, the new status and why, models added or removed, a warm-up phase);
the whole endpoint state the stream carries stays out (it is in `/internal/status/endpoints`). Without `since`:
the newest `limit` events; with it: up to `limit` events after that id, oldest first, and `last_id` to ask from
next time. This reads Redis on its own client, never the state cache's, and never on the request path of inference.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.router.errors import InvalidRequest, RouterError
from shared import keys, statestore
from shared.redisconn import RedisTarget
from shared.state import Event, EventKind

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
READ_TIMEOUT_S = 2.0
MAX_LIST = 20  # names per list in one summary (added/removed/loaded models)
MAX_TEXT = 300  # characters of an error text an endpoint sent
_ID = re.compile(r"\d{1,20}(?:-\d{1,20})?")
_U64 = 2**64 - 1


class EventsUnavailable(RouterError):
    status = 503
    type = "server_error"
    code = "events_unavailable"


def parse_since(raw: str | None) -> str | None:
    """A stream id (`MS-SEQ`, or `MS`), as `last_id` returned it; None: the newest events."""
    if raw is None:
        return None
    if not _ID.fullmatch(raw) or any(int(part) > _U64 for part in raw.split("-")):
        raise InvalidRequest(
            "since must be an event id such as 1733030000000-0 (the last_id of an earlier answer)", param="since"
        )
    return raw


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}", param="limit")
    return int(raw)


def _text(value: object) -> str | None:
    return None if value is None else str(value)[:MAX_TEXT]


def _names(value: object) -> list[str]:
    items = value if isinstance(value, list | tuple) else []
    return [str(item)[:MAX_TEXT] for item in items[:MAX_LIST]]


def summarise(entry_id: str, event: Event) -> dict[str, Any]:
    """What a person wants to read of one event."""
    out: dict[str, Any] = {"id": entry_id, "kind": event.kind.value, "endpoint": event.endpoint, "at": event.at}
    state, detail = event.state, event.detail
    if state is not None:
        out["status"] = state.status.value
        out["reason"] = _text(state.last_error)
    kind = event.kind
    if kind is EventKind.STATUS_CHANGED:
        out["previous"] = _text(detail.get("previous"))
    elif kind is EventKind.MODELS_CHANGED:
        out["added"] = _names(detail.get("added"))
        out["removed"] = _names(detail.get("removed"))
    elif kind is EventKind.LOADED_CHANGED and state is not None:
        out["loaded"] = _names(sorted(m.name for m in state.loaded if not m.loading))
        out["loading"] = _names(sorted(m.name for m in state.loaded if m.loading))
    elif kind is EventKind.VERSION_CHANGED and state is not None:
        out["version"] = _text(state.version)
    elif kind is EventKind.WARM_CHANGED and event.warm is not None:
        warm = event.warm
        out["model"] = warm.model
        out["phase"] = warm.phase.value
        out["reason"] = _text(warm.last_error or warm.detail)
    elif kind is EventKind.ENDPOINT_DOWN:
        out["reason"] = _text(detail.get("reason"))
    return out


def _decode(entries: list[Any]) -> tuple[list[dict[str, Any]], int]:
    out: list[dict[str, Any]] = []
    skipped = 0
    for entry_id, fields in entries:
        try:
            event = Event.model_validate_json(fields["event"])
        except (KeyError, TypeError, ValidationError):
            skipped += 1  # a foreign writer's entry: not ours to show
            continue
        out.append(summarise(str(entry_id), event))
    return out, skipped


class EventLog:
    """The route and its own Redis client (made on first use, closed with the app)."""

    def __init__(self, redis_url: RedisTarget | str) -> None:
        self._redis_url = redis_url
        self._redis: Redis | None = None

    def _client(self) -> Redis:
        if self._redis is None:
            self._redis = statestore.connect(self._redis_url, timeout_s=READ_TIMEOUT_S)
        return self._redis

    async def read(self, since: str | None, limit: int) -> dict[str, Any]:
        redis = self._client()
        if since is None:
            newest: Any = await redis.xrevrange(keys.EVENTS, count=limit)
            entries = list(reversed(newest))
        else:
            reply: Any = await redis.xread({keys.EVENTS: since}, count=limit)
            entries = [entry for _stream, stream_entries in reply or [] for entry in stream_entries]
        events, skipped = _decode(entries)
        last = str(entries[-1][0]) if entries else (since or "0-0")
        return {"events": events, "last_id": last, "more": len(entries) == limit, "skipped": skipped}

    async def route(self, request: web.Request) -> web.Response:
        """`GET /internal/events`."""
        since = parse_since(request.query.get("since"))
        limit = parse_limit(request.query.get("limit"))
        try:
            data = await asyncio.wait_for(self.read(since, limit), READ_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError) as exc:
            log.info("event stream read failed: %s", exc)
            raise EventsUnavailable("the event stream is unavailable: Redis did not answer") from exc
        return web.json_response(data, headers={"Cache-Control": "no-store"})

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """The app's cleanup context: the client is made on first use and closed when the app stops."""
        yield
        await self.close()

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
