"""`docker stack deploy -c stack.yaml` on a single-node swarm: two router replicas serve a request.

The test override (tests/compose/stack.test.yaml) adds two DMR emulator services and a Swarm config naming
them. The stack's secrets are created here, as the file's header tells users to.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.compose.client import stream_chat
from tests.compose.conftest import HERE, PIER_IMAGE, TIMINGS
from tests.compose.engine import LOCAL_REDIS, Engine, paced
from tests.harness import ROOT, Timeout, free_port, wait_for_sync

pytestmark = [pytest.mark.compose, pytest.mark.timeout(900)]

STACK = "pier-swarm-tier"
NETWORK = "pier-swarm-tier"
STACK_FILES = (ROOT / "stack.yaml", HERE / "stack.test.yaml")
EXPECTED_REPLICAS = {"redis": 1, "health": 2, "router": 2, "warmup": 1, "dmr-a": 1, "dmr-b": 1}

# Run inside a throw-away container on the stack's (attachable) overlay network.
_ASK_EACH_ROUTER = """
import json, socket, sys, urllib.request
ips = sorted({a[4][0] for a in socket.getaddrinfo("tasks.router", 40114)})
out = {"ips": ips, "status": [], "replies": []}
for ip in ips:
    base = f"http://{ip}:40114"
    with urllib.request.urlopen(base + "/internal/status/endpoints", timeout=10) as resp:
        out["status"].append({e["name"]: e["status"] for e in json.load(resp)["endpoints"]})
    if sys.argv[1] == "chat":
        body = {"model": "ai/smollm2", "messages": [{"role": "user", "content": "Say hello."}]}
        req = urllib.request.Request(base + "/engines/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            out["replies"].append(json.load(resp)["choices"][0]["message"]["content"])
print(json.dumps(out))
"""


@dataclass
class Swarm:
    engine: Engine
    env: dict[str, str]

    def docker(self, *args: str, timeout_s: float = 120, check: bool = True) -> str:
        return self.engine.docker(*args, timeout_s=timeout_s, check=check, env=self.env).stdout

    def replicas(self) -> dict[str, str]:
        out = self.docker("service", "ls", "--filter", f"label=com.docker.stack.namespace={STACK}",
                          "--format", "{{.Name}} {{.Replicas}}")  # fmt: skip
        return {
            name.removeprefix(f"{STACK}_"): count for name, count in (line.split()[:2] for line in out.splitlines())
        }

    def all_running(self) -> bool:
        current = self.replicas()
        return all(current.get(name) == f"{n}/{n}" for name, n in EXPECTED_REPLICAS.items())

    def ask_routers(self, what: str) -> dict[str, Any] | None:
        """Status (and a chat completion, `what="chat"`) from every router task, seen from the overlay network."""
        run = self.engine.docker(
            "run", "--rm", "--network", NETWORK, PIER_IMAGE, "python", "-c", _ASK_EACH_ROUTER, what,
            timeout_s=120, check=False,
        )  # fmt: skip
        return json.loads(run.stdout) if run.returncode == 0 else None

    def containers(self, service: str) -> list[str]:
        return self.docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={STACK}_{service}").split()

    def diagnose(self) -> str:
        tasks = self.docker("stack", "ps", STACK, "--no-trunc", "--format",
                            "{{.Name}} {{.CurrentState}} {{.Error}}", check=False)  # fmt: skip
        return f"replicas: {self.replicas()}\ntasks:\n{tasks[-4000:]}"


def _swarm_state(engine: Engine) -> str:
    return engine.docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()


@pytest.fixture(scope="module")
def swarm(engine: Engine, pier_image: str) -> Iterator[Swarm]:
    env = {
        "PIER_IMAGE": pier_image,
        "REDIS_IMAGE": LOCAL_REDIS,
        "PIER_NETWORK": NETWORK,
        "PIER_PORT": str(free_port()),
    }
    cluster = Swarm(engine, env)
    if _swarm_state(engine) != "inactive":  # what a crashed run left
        engine.docker("swarm", "leave", "--force", check=False)
    started = time.monotonic()
    try:
        engine.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:2377")
        password = secrets.token_hex(16)
        engine.docker("secret", "create", "pier_redis_password", "-", input_bytes=password.encode())
        url = f"redis://:{password}@pier-redis:6379/0"
        engine.docker("secret", "create", "pier_redis_url", "-", input_bytes=url.encode())
        files = [arg for path in STACK_FILES for arg in ("--compose-file", str(path))]
        cluster.docker("stack", "deploy", "--resolve-image", "never", *files, STACK)
        TIMINGS["swarm init + stack deploy"] = time.monotonic() - started
        yield cluster
    finally:
        started = time.monotonic()
        engine.docker("stack", "rm", STACK, check=False)
        try:
            wait_for_sync(
                lambda: (
                    not engine.docker(
                        "ps", "-aq", "--filter", f"label=com.docker.stack.namespace={STACK}"
                    ).stdout.strip()
                ),
                timeout_s=120,
                what="the stack's containers to go",
            )
        finally:
            engine.docker("swarm", "leave", "--force", check=False)
        TIMINGS["stack rm + swarm leave"] = time.monotonic() - started


def test_stack_runs_two_router_replicas_that_serve(swarm: Swarm) -> None:
    started = time.monotonic()
    try:
        wait_for_sync(
            paced(swarm.all_running, 1.0), timeout_s=240, what="every stack service at its replica count, healthy"
        )
    except Timeout as exc:
        raise Timeout(f"{exc}\n{swarm.diagnose()}") from None
    TIMINGS["stack services healthy"] = time.monotonic() - started

    # Both routers read the state the health leader published through the password-protected Redis.
    both = {"dmr-a": "healthy", "dmr-b": "healthy"}
    seen = wait_for_sync(
        paced(lambda: (r := swarm.ask_routers("status")) is not None and r["status"] == [both, both] and r, 1.0),
        timeout_s=120,
        what="both router replicas to see both emulators healthy",
    )
    assert len(seen["ips"]) == 2, seen

    answered = swarm.ask_routers("chat")
    assert answered is not None
    assert len(answered["replies"]) == 2
    assert all(reply.startswith("Hello from dmr-a") for reply in answered["replies"]), answered

    # The Redis password is the Swarm secret: without it Redis refuses.
    redis_id = swarm.containers("redis")[0]
    refused = swarm.docker("exec", redis_id, "redis-cli", "ping", check=False)
    assert "NOAUTH" in refused, refused

    # The published port goes through Swarm's routing mesh, which needs IPVS in the kernel.
    if Path("/proc/net/ip_vs").exists():
        assert stream_chat(f"http://127.0.0.1:{swarm.env['PIER_PORT']}").text.startswith("Hello from dmr-a")
    else:
        print("swarm: this kernel has no IPVS, so the routing mesh (published port) is not checked here")
