"""Typed keys for the aiohttp application and per-request storage."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from tests.emulator.state import Emulator

EMULATOR: web.AppKey[Emulator] = web.AppKey("emulator")

# Request-scoped values (plain string keys: aiohttp's request mapping).
RECORD = "emulator.record"
DROP_AFTER = "emulator.drop_after"
SERVER_CLOSED = "emulator.server_closed"
