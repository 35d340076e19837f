"""Server-sent events written one flushed event at a time, spaced by the chunk interval.

Honours the `drop` fault (close the connection after `drop_after` events) and notices a client that went away
(the write fails, or the handler is cancelled), so the generator stops instead of writing into the void.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from tests.emulator.keys import DROP_AFTER, RECORD, SERVER_CLOSED


class ClientGone(Exception):
    """The client closed the connection mid-stream."""


class Dropped(Exception):
    """The `drop` fault closed the connection on purpose."""


class EventStream:
    """One SSE response. `send` sleeps `interval_s` between events (not before the first)."""

    def __init__(self, request: web.Request, interval_s: float) -> None:
        self.request = request
        self.interval_s = interval_s
        self.sent = 0
        self.response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        drop_after = request.get(DROP_AFTER)
        self.drop_after: int | None = drop_after if isinstance(drop_after, int) else None

    async def start(self) -> None:
        await self.response.prepare(self.request)
        if self.drop_after == 0:
            self._drop()

    async def send_json(self, payload: dict[str, Any], event: str | None = None) -> None:
        await self.send(json.dumps(payload, separators=(",", ":")), event=event)

    async def send(self, data: str, event: str | None = None) -> None:
        if self.sent and self.interval_s > 0:
            await asyncio.sleep(self.interval_s)
        head = f"event: {event}\n" if event else ""
        try:
            await self.response.write(f"{head}data: {data}\n\n".encode())
        except ConnectionError as exc:
            raise ClientGone from exc
        self.sent += 1
        if self.drop_after is not None and self.sent >= self.drop_after:
            self._drop()

    async def finish(self) -> web.StreamResponse:
        try:
            await self.response.write_eof()
        except ConnectionError as exc:
            raise ClientGone from exc
        return self.response

    def _drop(self) -> None:
        # close(), not abort(): the events already written reach the client before the FIN.
        self.request[SERVER_CLOSED] = True
        record = self.request.get(RECORD)
        if record is not None:
            record.fault = "drop"
        transport = self.request.transport
        if transport is not None:
            transport.close()
        raise Dropped
