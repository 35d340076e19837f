"""Small client helpers for the emulator's tests (admin routes, /engines/ps, request bodies)."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.emulator import EmulatorServer


async def admin_get(http: aiohttp.ClientSession, emu: EmulatorServer, what: str) -> Any:
    async with http.get(f"{emu.admin_url}/_emulator/{what}") as resp:
        assert resp.status == 200
        return await resp.json()


async def admin_post(http: aiohttp.ClientSession, emu: EmulatorServer, what: str, body: dict[str, Any]) -> Any:
    async with http.post(f"{emu.admin_url}/_emulator/{what}", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def ps(http: aiohttp.ClientSession, emu: EmulatorServer) -> list[dict[str, Any]]:
    async with http.get(f"{emu.url}/engines/ps") as resp:
        assert resp.status == 200
        result: list[dict[str, Any]] = await resp.json()
        return result


def chat_body(model: str = "ai/smollm2", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Say hello"}], **extra}


async def sse_events(resp: aiohttp.ClientResponse) -> list[tuple[str | None, str]]:
    """Read a whole SSE body as (event name, data) pairs, in order."""
    events: list[tuple[str | None, str]] = []
    event: str | None = None
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((event, line[len("data: ") :]))
            event = None
    return events
