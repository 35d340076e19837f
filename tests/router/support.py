"""Helpers for the router's process tests: emulators, config files, the health worker and the router, all real.

A "stack" is what a deployment runs: a Redis server, DMR emulators, `python -m services.health` probing them
every second, and `python -m services.router` routing on what the health worker published.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.harness import ROOT, Proc, ProcessFactory, free_port, http_ok, wait_for, wait_for_sync

MODEL = "ai/smollm2:latest"
ROUTER_READY_S = 30.0
ROUTABLE_S = 30.0


def base_env() -> dict[str, str]:
    """The environment of every child process (no PIER_/OTEL_ leaking in from the outside)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIER_", "OTEL_"))}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env["OTEL_SDK_DISABLED"] = "true"
    env.setdefault("PATH", os.defpath)
    return env


@dataclass
class Emu:
    """A DMR emulator process with an admin port that keeps answering while the main port refuses."""

    proc: Proc
    admin_url: str
    name: str

    @property
    def url(self) -> str:
        return self.proc.url

    async def _post(self, what: str, body: dict[str, Any]) -> Any:
        async with aiohttp.ClientSession() as http, http.post(f"{self.admin_url}/_emulator/{what}", json=body) as r:
            if r.status != 200:
                raise AssertionError(f"emulator {self.name} {what}: {r.status} {await r.text()}")
            return await r.json()

    async def _get(self, what: str) -> Any:
        async with aiohttp.ClientSession() as http, http.get(f"{self.admin_url}/_emulator/{what}") as r:
            r.raise_for_status()
            return await r.json()

    async def fault(self, **body: Any) -> None:
        await self._post("fault", body)

    async def configure(self, **body: Any) -> None:
        await self._post("config", body)

    async def reset(self) -> None:
        await self._post("reset", {})

    async def requests(self, path_part: str = "/v1/") -> list[dict[str, Any]]:
        """Requests whose path contains `path_part` (inference by default, not the health worker's probes)."""
        records: list[dict[str, Any]] = await self._get("requests")
        return [r for r in records if path_part in r["path"] and r["method"] == "POST"]

    async def state(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._get("state")
        return result


def start_emulator(procs: ProcessFactory, name: str, *args: str) -> Emu:
    admin_port = free_port()
    proc = procs.emulator("--name", name, "--admin-port", str(admin_port), *args)
    return Emu(proc, f"http://127.0.0.1:{admin_port}", name)


def endpoint(name: str, url: str, priority: int = 100, **extra: Any) -> dict[str, Any]:
    """A config entry probed every second (the health worker then notices changes quickly)."""
    return {"name": name, "url": url, "priority": priority, "check_interval": "1s", "check_timeout": "800ms", **extra}


def write_config(path: Path, endpoints: Sequence[dict[str, Any]], **top: Any) -> Path:
    path.write_text(yaml.safe_dump({"endpoints": list(endpoints), **top}), encoding="utf-8")
    return path


def warmup_env(
    redis_url: str, workdir: Path, config: Path, *, instance: str = "warmup-test", **extra: str
) -> dict[str, str]:
    """The warm-up worker's environment (its id file in `workdir`); `extra` adds or overrides settings."""
    return {
        "PIER_REDIS_URL": redis_url,
        "PIER_CONFIG_FILE": str(config),
        "PIER_INSTANCE_ID": instance,
        "PIER_WARMUP_ID_FILE": str(workdir / "warmup.id"),
        **extra,
    }


def health_env(redis_url: str, workdir: Path, config: Path) -> dict[str, str]:
    return {
        "PIER_REDIS_URL": redis_url,
        "PIER_CONFIG_FILE": str(config),
        "PIER_INSTANCE_ID": "health-test",
        "PIER_HEALTH_ID_FILE": str(workdir / "health.id"),
        "PIER_DOCKER_DISCOVERY": "off",
        "PIER_AUTODETECT_CANDIDATES": "http://127.0.0.1:9",  # never the real DMR addresses from a test
    }


def start_health(procs: ProcessFactory, redis_url: str, workdir: Path, config: Path) -> Proc:
    return procs.python("health", "services.health", env=health_env(redis_url, workdir, config))


def router_env(redis_url: str, config: Path, port: int, **extra: str) -> dict[str, str]:
    env = {
        "PIER_REDIS_URL": redis_url,
        "PIER_CONFIG_FILE": str(config),
        "PIER_HOST": "127.0.0.1",
        "PIER_PORT": str(port),
        "PIER_INSTANCE_ID": f"router-{port}",
    }
    env.update(extra)
    return env


def start_router(procs: ProcessFactory, redis_url: str, config: Path, **extra: str) -> Proc:
    port = free_port()
    return procs.python(
        "router",
        "services.router",
        env=router_env(redis_url, config, port, **extra),
        port=port,
        ready=lambda p: http_ok(f"{p.url}/internal/health"),
        ready_timeout_s=ROUTER_READY_S,
    )


def get_json(url: str, timeout_s: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def endpoints_status(router_url: str) -> dict[str, dict[str, Any]]:
    data = get_json(f"{router_url}/internal/status/endpoints")
    return {entry["name"]: entry for entry in data["endpoints"]}


def _routable(router_url: str, names: Sequence[str], model: str, loaded: bool) -> bool:
    try:
        status = endpoints_status(router_url)
    except (urllib.error.URLError, OSError, ValueError):
        return False
    for name in names:
        entry = status.get(name)
        if entry is None or not entry["routable"] or model not in entry["models"]:
            return False
        if loaded and model not in entry["loaded"]:
            return False
    return True


def wait_routable_sync(router_url: str, names: Sequence[str], *, model: str = MODEL, loaded: bool = False) -> None:
    """Block until the router's table has every endpoint in `names` routable with `model` (and loaded)."""
    wait_for_sync(
        lambda: _routable(router_url, names, model, loaded),
        timeout_s=ROUTABLE_S,
        what=f"router to see {', '.join(names)} routable with {model}",
    )


async def wait_routable(router_url: str, names: Sequence[str], *, model: str = MODEL, loaded: bool = False) -> None:
    await wait_for(
        lambda: _routable(router_url, names, model, loaded),
        timeout_s=ROUTABLE_S,
        what=f"router to see {', '.join(names)} routable with {model}",
    )


@dataclass
class Stack:
    """A running deployment: emulators, the health worker and the router on one Redis."""

    router: Proc
    health: Proc | None
    emus: dict[str, Emu]
    config: Path
    redis_url: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.router.url

    def emu(self, name: str) -> Emu:
        return self.emus[name]

    async def reset_emulators(self) -> None:
        for emu in self.emus.values():
            await emu.reset()


@dataclass(frozen=True)
class EmuSpec:
    name: str
    priority: int = 100
    args: tuple[str, ...] = ()
    entry: dict[str, Any] = field(default_factory=dict)  # extra endpoint keys in the config file
    model: str = MODEL  # the build waits until the router sees the endpoint routable with this model


def build_stack(
    procs: ProcessFactory,
    workdir: Path,
    redis_url: str,
    specs: Sequence[EmuSpec],
    *,
    router_extra: dict[str, str] | None = None,
    config_top: dict[str, Any] | None = None,
    with_health: bool = True,
    wait: bool = True,
) -> Stack:
    """Start emulators, the health worker and the router; wait until the router routes to every emulator."""
    emus = {spec.name: start_emulator(procs, spec.name, *spec.args) for spec in specs}
    entries = [endpoint(s.name, emus[s.name].url, s.priority, **s.entry) for s in specs]
    config = write_config(workdir / f"pier-{time.monotonic_ns()}.yaml", entries, **(config_top or {}))
    health = start_health(procs, redis_url, workdir, config) if with_health else None
    router = start_router(procs, redis_url, config, **(router_extra or {}))
    if wait and with_health:
        for spec in specs:
            wait_routable_sync(router.url, [spec.name], model=spec.model)
    return Stack(router, health, emus, config, redis_url)


def chat(model: str = "smollm2", *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Say hello"}], **extra}
    if stream:
        body["stream"] = True
    return body


async def read_sse(resp: aiohttp.ClientResponse) -> list[str]:
    """The `data:` payloads of a whole SSE body, in order."""
    out: list[str] = []
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data: "):
            out.append(line[len("data: ") :])
    return out
