"""Fixtures: one real redis-server per session (flushed per test), and process factories with teardown."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests import reliability
from tests.harness import ROOT, ProcessFactory, RedisServer, start_redis


def pytest_sessionstart(session: pytest.Session) -> None:
    reliability.start_run()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    said = reliability.write_report()
    if said:
        terminalreporter.write_line(said)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A clean database on the session's server."""
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client: Redis = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, for tests that stop and restart it."""
    server = start_redis(workdir=tmp_path)
    yield server
    server.stop()


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIER_", "OTEL_"))}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env["OTEL_SDK_DISABLED"] = "true"
    env.setdefault("PATH", os.defpath)
    return env


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessFactory]:
    factory = ProcessFactory(tmp_path, _base_env())
    yield factory
    factory.close()


@pytest.fixture
def python() -> str:
    return sys.executable
