"""`docker compose up` for real: compose.yaml + the test override, checked through the router's published port.

The override changes only what this offline machine lacks (local base images, the registry CA for pip, two
DMR emulator containers and a config file naming them: dmr-a preferred over dmr-b). Every check goes to
127.0.0.1:<published port>, where users' apps go.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

import pytest

from shared import keys
from tests.compose.client import MODEL, Reply, all_healthy, endpoints_by_name, stream_chat, try_get_json
from tests.compose.conftest import COMPOSE_FILES, PIER_IMAGE, PROJECT, TIMINGS, compose_env
from tests.compose.engine import SOCKET, ComposeProject, Engine, paced
from tests.emulator.config import EmulatorConfig
from tests.faults.load import Load
from tests.faults.support import measure, record
from tests.harness import ROOT, Timeout, free_port, wait_for, wait_for_sync

pytestmark = [pytest.mark.compose, pytest.mark.timeout(900)]

T = TypeVar("T")
ENDPOINTS = ("dmr-a", "dmr-b")


@dataclass
class Pier:
    """The running project and its published port."""

    project: ComposeProject
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, check: Callable[[], T | None], what: str, timeout_s: float = 60, interval_s: float = 0.5) -> T:
        """`wait_for_sync` (checking every `interval_s`), with the services' recent logs in the failure message."""
        try:
            return wait_for_sync(paced(check, interval_s), timeout_s=timeout_s, what=what)
        except Timeout as exc:
            raise Timeout(f"{exc}\n--- recent logs ---\n{self.project.logs(tail=40)[-6000:]}") from None

    def status(self) -> dict[str, Any] | None:
        return try_get_json(f"{self.base_url}/internal/status")

    def chat(self) -> Reply:
        return stream_chat(self.base_url)

    def started_at(self, service: str) -> list[str]:
        ids = self.project.container_ids(service)
        out = self.project.engine.docker("inspect", "--format", "{{.State.StartedAt}}", *ids).stdout
        return out.split()


def fresh_and_healthy(base_url: str, since: float) -> dict[str, dict[str, Any]] | None:
    """Both endpoints healthy, with state the health worker wrote after `since` (unix time)."""
    table = all_healthy(base_url, ENDPOINTS)
    if table is None:
        return None
    if all((table[name].get("checked_at") or 0) > since for name in ENDPOINTS):
        return table
    return None


def free_port_pair() -> int:
    """A port p with p and p+1 both free (a host port range for two replicas)."""
    for _ in range(50):
        low = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", low + 1))
            except OSError:
                continue
        return low
    raise AssertionError("no two adjacent free ports")


@pytest.fixture(scope="module")
def pier(engine: Engine, pier_image: str) -> Iterator[Pier]:
    port = free_port()
    project = ComposeProject(engine, PROJECT, COMPOSE_FILES, compose_env(port=str(port), network=PROJECT))
    project("down", "--volumes", "--remove-orphans", timeout_s=180, check=False)  # what a crashed run left
    try:
        started = time.monotonic()
        up = project("up", "--detach", "--wait", "--wait-timeout", "240", timeout_s=360, check=False)
        if up.returncode != 0:
            raise AssertionError(f"compose up failed:\n{up.stderr[-3000:]}\n--- logs ---\n{project.logs()[-6000:]}")
        TIMINGS["compose up --wait"] = time.monotonic() - started
        running = Pier(project, port)
        running.wait(lambda: all_healthy(running.base_url), "the router to list both emulators healthy")
        yield running
    finally:
        started = time.monotonic()
        project("down", "--volumes", "--remove-orphans", timeout_s=300, check=False)
        TIMINGS["compose down --volumes"] = time.monotonic() - started


def test_every_service_runs_healthy_as_non_root_under_init_with_restart(pier: Pier) -> None:
    for service in ("redis", "health", "router", "warmup"):
        assert pier.project.health(service) == ["healthy"], service
        (cid,) = pier.project.container_ids(service)
        inspect = "{{.HostConfig.Init}} {{.HostConfig.RestartPolicy.Name}}"
        assert pier.project.engine.docker("inspect", "--format", inspect, cid).stdout.split() == [
            "true",
            "unless-stopped",
        ], service
    for service in ("health", "router", "warmup"):
        uid = pier.project("exec", "-T", service, "id", "-u", timeout_s=60).stdout.strip()
        assert uid != "0", f"{service} runs as root"


def test_streaming_chat_completion_through_the_published_port(pier: Pier) -> None:
    reply = pier.chat()
    assert len(reply.pieces) > 1, f"not streamed in pieces: {reply}"
    # The preferred (higher priority) endpoint serves while it is healthy.
    assert reply.text.startswith("Hello from dmr-a"), reply.text


def test_status_lists_both_emulators_healthy(pier: Pier) -> None:
    table = pier.wait(lambda: all_healthy(pier.base_url), "both emulators healthy")
    assert table["dmr-a"]["priority"] > table["dmr-b"]["priority"]
    for name in ENDPOINTS:
        assert table[name]["url"] == f"http://{name}:12434"
        assert any(model.startswith(MODEL) for model in table[name]["models"]), table[name]


def test_failover_when_the_preferred_emulator_container_is_killed(pier: Pier) -> None:
    pier.wait(lambda: all_healthy(pier.base_url), "both emulators healthy")
    pier.project("kill", "dmr-a", timeout_s=60)
    try:
        # Nobody has told the router yet: this request meets the dead endpoint and must end at dmr-b.
        assert pier.chat().text.startswith("Hello from dmr-b")
        table = pier.wait(
            lambda: (t := endpoints_by_name(pier.base_url)) and t["dmr-a"]["status"] != "healthy" and t,
            "the status to show dmr-a down",
        )
        assert table["dmr-b"]["status"] == "healthy"
        assert pier.chat().text.startswith("Hello from dmr-b")
    finally:
        pier.project("start", "dmr-a", timeout_s=120)
    pier.wait(lambda: all_healthy(pier.base_url), "dmr-a healthy again")
    # Back on the preferred endpoint (its circuit may need its half-open trial first).
    pier.wait(lambda: pier.chat().text.startswith("Hello from dmr-a"), "dmr-a to serve again", timeout_s=90)


def test_router_serves_while_redis_is_stopped_and_recovers(pier: Pier) -> None:
    pier.wait(lambda: all_healthy(pier.base_url), "both emulators healthy")
    pier.project("stop", "redis", timeout_s=60)
    try:
        pier.wait(
            lambda: (s := pier.status()) is not None and not s["redis"]["connected"], "the router to see Redis go"
        )
        # The last known state keeps routing: same answer, same preferred endpoint.
        assert pier.chat().text.startswith("Hello from dmr-a")
        assert pier.chat().text.startswith("Hello from dmr-a")
    finally:
        pier.project("start", "redis", timeout_s=120)
    back_at = time.time()
    pier.wait(lambda: (s := pier.status()) is not None and s["redis"]["connected"], "the router to reconnect")
    # The new Redis starts empty: state flows again only if the health worker republishes into it.
    pier.wait(lambda: fresh_and_healthy(pier.base_url, back_at), "fresh endpoint state after Redis returned")
    assert pier.chat().text.startswith("Hello from dmr-a")
    pier.wait(lambda: pier.project.health("health") == ["healthy"], "the health container healthy again", 90)


# Run inside the health container: SIGKILL the worker (a crash), not the init process that runs it.
_CRASH_WORKER = """
import os, signal
for pid in filter(str.isdigit, os.listdir("/proc")):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\\0")
    worker = os.path.basename(argv[0]).startswith(b"python") and b"services.health" in argv  # not docker-init
    if worker and b"--check" not in argv and int(pid) != os.getpid():
        os.kill(int(pid), signal.SIGKILL)
"""


def test_health_container_restarts_after_a_crash_and_on_request(pier: Pier) -> None:
    (cid,) = pier.project.container_ids("health")
    restarts = "{{.RestartCount}}"
    assert pier.project.engine.docker("inspect", "--format", restarts, cid).stdout.strip() == "0"
    # Detached: the container (and this exec with it) goes down as soon as the worker dies.
    crashed_at = time.time()
    pier.project.engine.docker("exec", "--detach", cid, "python", "-c", _CRASH_WORKER)
    # restart: unless-stopped brings the same container back by itself.
    pier.wait(
        lambda: pier.project.engine.docker("inspect", "--format", restarts, cid).stdout.strip() == "1",
        "Docker to restart the crashed health container",
    )
    pier.wait(lambda: pier.project.health("health") == ["healthy"], "the restarted health container healthy", 90)
    # The new worker takes the lease again and probes: state newer than the crash.
    pier.wait(lambda: fresh_and_healthy(pier.base_url, crashed_at), "fresh state from the restarted worker")

    before = pier.started_at("health")
    pier.project("restart", "health", timeout_s=120)
    restarted_at = time.time()
    assert pier.started_at("health") != before
    pier.wait(lambda: pier.project.health("health") == ["healthy"], "the restarted health container healthy", 90)
    pier.wait(lambda: fresh_and_healthy(pier.base_url, restarted_at), "fresh state after docker compose restart")
    assert pier.chat().text.startswith("Hello from dmr-a")


def test_docker_discovery_override_finds_a_labelled_container(pier: Pier, engine: Engine) -> None:
    gid = str(os.stat(SOCKET).st_gid)
    with_socket = replace(
        pier.project,
        files=(*pier.project.files, ROOT / "compose.discovery.yaml"),
        env={**pier.project.env, "DOCKER_GID": gid},
    )
    name = f"{PROJECT}-dmr-c"
    try:
        with_socket("up", "--detach", "--wait", "--wait-timeout", "180", timeout_s=300)
        engine.docker("rm", "--force", name, check=False)
        engine.docker(
            "run", "--detach", "--name", name, "--network", PROJECT,
            "--label", "pier.endpoint=true", "--label", "pier.name=dmr-c", "--label", f"pier.network={PROJECT}",
            "--label", "pier.priority=10", "--volume", f"{ROOT / 'tests'}:/app/tests:ro",
            PIER_IMAGE, "python", "-m", "tests.emulator", "--host", "0.0.0.0", "--port", "12434", "--name", "dmr-c",
        )  # fmt: skip
        found = pier.wait(
            lambda: (e := endpoints_by_name(pier.base_url).get("dmr-c")) and e["status"] == "healthy" and e,
            "the health worker (non-root, socket via DOCKER_GID) to discover and probe dmr-c",
        )
        assert found["source"] == "docker", found
        engine.docker("rm", "--force", name)
        pier.wait(lambda: "dmr-c" not in endpoints_by_name(pier.base_url), "dmr-c to leave the table once removed")
    finally:
        engine.docker("rm", "--force", name, check=False)
        pier.project("up", "--detach", "--wait", "--wait-timeout", "180", timeout_s=300)
    assert pier.chat().text.startswith("Hello from dmr-a")


def test_scale_router_to_two_replicas(pier: Pier, engine: Engine) -> None:
    low = free_port_pair()
    # Two replicas cannot share one host port: the documented way is a range of host ports.
    scaled = replace(pier.project, env={**pier.project.env, "PIER_PORT": f"{low}-{low + 1}"})
    try:
        scaled("up", "--detach", "--wait", "--wait-timeout", "180", "--scale", "router=2", timeout_s=300)
        assert len(scaled.container_ids("router")) == 2
        assert scaled.health("router") == ["healthy", "healthy"]
        ports = sorted(
            int(scaled("port", "--index", str(index), "router", "40114", timeout_s=60).stdout.strip().rsplit(":", 1)[1])
            for index in (1, 2)
        )
        assert ports == [low, low + 1]
        for port in ports:
            base_url = f"http://127.0.0.1:{port}"
            # Each replica reads the one shared state (both endpoints healthy) and serves.
            pier.wait(partial(all_healthy, base_url), f"replica on {port} to see both endpoints")
            assert stream_chat(base_url).text.startswith("Hello from dmr-a")

        # One health leader publishes that state: the lease names the (single) health container.
        leader = scaled("exec", "-T", "redis", "redis-cli", "GET", keys.HEALTH_LEASE, timeout_s=60).stdout.strip()
        assert leader.startswith(scaled.container_ids("health")[0][:12]), leader

        # App containers on the `pier` network: the service name resolves to both replicas.
        resolve = "import socket; print(len({a[4][0] for a in socket.getaddrinfo('router', 40114)}))"
        addresses = engine.docker("run", "--rm", "--network", PROJECT, PIER_IMAGE, "python", "-c", resolve)
        assert addresses.stdout.strip() == "2"

        # The example app (profile `example`): the openai SDK against http://router:40114/engines/v1.
        run = scaled("--profile", "example", "run", "--rm", "-T", "example", timeout_s=600, check=False)
        assert run.returncode == 0, f"{run.stdout}\n{run.stderr[-3000:]}"
        assert "Hello from dmr-a" in run.stdout
    finally:
        pier.project("up", "--detach", "--wait", "--wait-timeout", "180", "--scale", "router=1", timeout_s=300)
    assert len(pier.project.container_ids("router")) == 1
    pier.wait(lambda: all_healthy(pier.base_url), "the single router on its own port again")


def _emulator_config(project: ComposeProject, service: str, **settings: Any) -> None:
    """Switch an emulator container's settings through its admin route (its port is not published)."""
    script = (
        "import json, sys, urllib.request; urllib.request.urlopen(urllib.request.Request("
        "'http://127.0.0.1:12434/_emulator/config', data=sys.argv[1].encode(),"
        " headers={'Content-Type': 'application/json'}), timeout=10)"
    )
    project("exec", "-T", service, "python", "-c", script, json.dumps(settings), timeout_s=60)


@pytest.mark.faults
async def test_partition_between_the_router_and_an_endpoint(pier: Pier) -> None:
    """`docker network disconnect` cuts dmr-a off mid-stream (no FIN, no RST: packets just stop) while a mixed
    load runs; the router must notice the dead peer in seconds (TCP keep-alive and user timeout), fail over
    whatever had not started streaming, and return to dmr-a once it is connected again."""
    project, engine = pier.project, pier.project.engine
    pier.wait(lambda: all_healthy(pier.base_url), "both emulators healthy")
    network = f"{PROJECT}_default"
    (container,) = project.container_ids("dmr-a")
    defaults = EmulatorConfig()
    # Streams of 2 s, so that some are open on dmr-a when the partition comes.
    _emulator_config(project, "dmr-a", chunks=20, chunk_interval_ms=100)
    loads: list[Load] = []
    window: list[float] = []

    async def partition() -> None:
        window.append(time.monotonic())
        await asyncio.to_thread(engine.docker, "network", "disconnect", network, container)

        async def noticed() -> bool:
            table = await asyncio.to_thread(endpoints_by_name, pier.base_url)
            return bool(table) and table["dmr-a"]["status"] != "healthy"

        await wait_for(noticed, timeout_s=60, what="the health worker to see dmr-a cut off")
        since = time.monotonic()
        await wait_for(lambda: loads[0].oks_since(since) >= 16, timeout_s=60, what="answers from dmr-b meanwhile")

    async def reconnect() -> None:
        await asyncio.to_thread(engine.docker, "network", "connect", "--alias", "dmr-a", network, container)
        window.append(time.monotonic())
        await wait_for(lambda: asyncio.to_thread(all_healthy, pier.base_url), timeout_s=90, what="dmr-a back")

    try:
        figures, load = await measure(pier.base_url, partition, reconnect, clients=6, on_start=loads.append)
    finally:
        if container not in engine.docker("network", "inspect", "--format", "{{json .Containers}}", network).stdout:
            engine.docker("network", "connect", "--alias", "dmr-a", network, container, check=False)
        _emulator_config(project, "dmr-a", chunks=defaults.chunks, chunk_interval_ms=defaults.chunk_interval_ms)
    lasted_s = window[1] - window[0]
    record(f"a network partition between the router and an endpoint for {lasted_s:.1f} s", figures, tier="compose")
    assert figures.lost_before_streaming == 0
    assert figures.streams_cut <= 6  # at most one stream per client was open on dmr-a
    assert figures.recovery_s is None or figures.recovery_s < 30
    # What was cut was cut within seconds of the partition (the kernel's dead-peer check), not left hanging
    # until a client or the request timeout (DMR's profile: 5 minutes) gave up.
    late = [r for r in load if r.outcome in ("failed", "cut") and r.ended - window[0] > 15]
    assert not late, late
    pier.wait(lambda: pier.chat().text.startswith("Hello from dmr-a"), "dmr-a to serve again", timeout_s=90)
