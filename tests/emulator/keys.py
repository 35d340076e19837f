"""Typed keys for the aiohttp application and per-request storage."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from tests.emulator.state import Emulator, RequestRecord

EMULATOR: web.AppKey[Emulator] = web.AppKey("emulator")

RECORD: web.RequestKey[RequestRecord] = web.RequestKey("emulator.record")
DROP_AFTER: web.RequestKey[int] = web.RequestKey("emulator.drop_after")
# Set when the emulator itself closed the connection (a fault), so it is not counted as a client disconnect.
SERVER_CLOSED: web.RequestKey[bool] = web.RequestKey("emulator.server_closed")
