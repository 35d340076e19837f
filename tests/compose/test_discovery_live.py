"""Docker discovery against a real Docker engine: labelled containers come and go, the worker follows.

Part of the compose tier: the tier's `engine` fixture installs and starts the engine when none runs, and
under CI=true a missing engine fails the run instead of skipping it. The containers run only `sleep` (an
image made here from this machine's /bin/sleep: no registry needed); their `pier.url` label points at an
emulator on loopback, so every probe stays on this machine.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.errors import NotFound
from redis.asyncio import Redis

from shared import keys
from shared.state import EndpointStatus, Event, EventKind
from tests.compose.engine import DOCKER, SOCKET, Engine
from tests.harness import ProcessFactory, wait_for
from tests.health.support import (
    all_events,
    endpoint_entry,
    health_env,
    read_state,
    start_emulator,
    start_health,
    wait_status,
    write_config,
)

pytestmark = [pytest.mark.compose, pytest.mark.timeout(300)]

IMAGE = "pier-health-test-sleep:local"


def _sleep_image_tar() -> bytes:
    """A root filesystem with /bin/sleep and the libraries it links (read with ldd)."""
    out = subprocess.run(["ldd", "/bin/sleep"], capture_output=True, text=True, check=True).stdout
    files = ["/bin/sleep"] + [part for line in out.splitlines() for part in line.split() if part.startswith("/")]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in files:
            tar.add(str(Path(path).resolve()), arcname=path.lstrip("/"))
    return buf.getvalue()


@pytest.fixture
def docker_client(engine: Engine) -> Iterator[Any]:
    """A Docker SDK client on the tier's engine (started by the `engine` fixture, never skipped in CI)."""
    if not engine.image_exists(IMAGE):
        # A binary tar on stdin (engine.docker() sends text).
        subprocess.run(
            [DOCKER, "import", "-", IMAGE], input=_sleep_image_tar(), env=engine.env, check=True, capture_output=True
        )
    client = docker.DockerClient(base_url=f"unix://{SOCKET}", timeout=10)
    yield client
    client.close()


@pytest.fixture
def containers(docker_client: Any) -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for container in started:
        with contextlib.suppress(NotFound):  # the test removed it itself
            container.remove(force=True)


async def test_labelled_containers_are_followed(
    procs: ProcessFactory,
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    docker_client: Any,
    containers: list[Any],
) -> None:
    run_id = uuid.uuid4().hex[:12]
    emu = start_emulator(procs)

    def run(name: str, **labels: str) -> Any:
        all_labels = {"pier.endpoint": "true", "pier.url": emu.url, "pier.test": run_id, **labels}
        container = docker_client.containers.run(
            IMAGE, ["/bin/sleep", "600"], name=f"pier-health-{name}-{run_id}", labels=all_labels, detach=True
        )
        containers.append(container)
        return container

    first = run(
        "first",
        **{"pier.name": "found", "pier.check_interval": "1s", "pier.check_timeout": "800ms", "pier.priority": "120"},
    )
    run("clash", **{"pier.name": "static-one"})
    config = write_config(tmp_path / "pier.yaml", endpoint_entry("static-one", emu.url))
    env = health_env(
        redis_url,
        tmp_path,
        config,
        PIER_DOCKER_DISCOVERY="on",
        PIER_DOCKER_LABEL_FILTER=f"pier.test={run_id}",
        # Long resync: what follows below must come from Docker's event stream.
        PIER_DISCOVERY_RESYNC_INTERVAL_S="5m",
    )
    health = start_health(procs, env)
    found = await wait_status(redis, "found", EndpointStatus.HEALTHY, proc=health)
    assert (found.source, found.priority, found.url) == ("docker", 120, emu.url)
    static = await wait_status(redis, "static-one", EndpointStatus.HEALTHY, proc=health)
    assert static.source == "static"  # the name clash: the static endpoint wins
    assert "clashes with the static one" in health.output()

    run("late", **{"pier.name": "late"})
    late = await wait_status(redis, "late", EndpointStatus.HEALTHY, timeout_s=30, proc=health)
    assert late.source == "docker"

    first.remove(force=True)

    async def removed() -> list[Event]:
        return [e for e in await all_events(redis) if e.kind is EventKind.ENDPOINT_REMOVED]

    (event,) = await wait_for(removed, timeout_s=30, what="found removed")
    assert event.endpoint == "found"
    assert await read_state(redis, "found") is None
    assert "found" not in await redis.zrange(keys.ENDPOINT_INDEX, 0, -1)
    assert await read_state(redis, "late") is not None
    assert health.alive()
