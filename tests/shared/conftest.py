"""Fixtures of the HTTP client tests: scripted endpoints and pools, closed at the end of each test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.shared.test_h1client import Pools, Serve, endpoints, pool_factory


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    async with endpoints() as start:
        yield start


@pytest.fixture
async def pools() -> AsyncIterator[Pools]:
    async with pool_factory() as make:
        yield make
