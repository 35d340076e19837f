"""Fixtures for the emulator's own tests: emulators served in process on real ports, and an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.emulator import EmulatorConfig, EmulatorServer

StartEmulator = Callable[..., Awaitable[EmulatorServer]]


@pytest.fixture
async def start_emulator() -> AsyncIterator[StartEmulator]:
    """`await start_emulator(load_time_ms=20, ...)`: an EmulatorServer on a free port (admin port too)."""
    servers: list[EmulatorServer] = []

    async def start(**settings: Any) -> EmulatorServer:
        settings.setdefault("load_time_ms", 20.0)
        settings.setdefault("chunk_interval_ms", 1.0)
        settings.setdefault("pull_time_ms", 10.0)
        settings.setdefault("admin_port", 0)
        server = EmulatorServer(EmulatorConfig(port=0, **settings))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def emu(start_emulator: StartEmulator) -> EmulatorServer:
    return await start_emulator()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
