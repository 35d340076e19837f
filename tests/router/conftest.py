"""Module-scoped fixtures for the router's process tests (none is autouse: the core's pure tests ignore them).

A module that only reads can share one stack (its own redis-server, emulators, health worker, router), which
keeps the suite quick; modules that break things build a stack per test with the function-scoped fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ProcessFactory, RedisServer, start_redis
from tests.router.support import base_env


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("router")


@pytest.fixture(scope="module")
def module_procs(module_dir: Path) -> Iterator[ProcessFactory]:
    factory = ProcessFactory(module_dir, base_env())
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def module_redis(module_dir: Path) -> Iterator[RedisServer]:
    """A redis-server of the module's own: other tests' flushes never touch its state."""
    server = start_redis(workdir=module_dir)
    yield server
    server.stop()
