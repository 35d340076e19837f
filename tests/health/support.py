"""Helpers for the health worker's process tests: emulators with an admin port, configs, Redis reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from shared import keys, statestore
from shared.state import EndpointState, EndpointStatus, Event
from shared.statestore import RedisClient
from tests.harness import Proc, ProcessFactory, free_port, wait_for

HEALTH_PATH = "/engines/v1/models"


@dataclass
class Emu:
    """A DMR emulator process; `admin_url` keeps answering while the main port refuses."""

    proc: Proc
    admin_url: str

    @property
    def url(self) -> str:
        return self.proc.url

    async def fault(self, **body: Any) -> None:
        await _post(f"{self.admin_url}/_emulator/fault", body)

    async def configure(self, **body: Any) -> None:
        await _post(f"{self.admin_url}/_emulator/config", body)

    async def requests(self) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as session, session.get(f"{self.admin_url}/_emulator/requests") as resp:
            resp.raise_for_status()
            data: list[dict[str, Any]] = await resp.json()
            return data

    async def worker_requests(self) -> list[dict[str, Any]]:
        """The health worker's requests (by its User-Agent), oldest first."""
        return [r for r in await self.requests() if r["headers"].get("User-Agent", "").startswith("pier-health/")]

    async def probe_times(self, path: str = HEALTH_PATH) -> list[float]:
        """Arrival times (unix) of the health worker's requests to `path`, oldest first."""
        return [r["at"] for r in await self.worker_requests() if r["path"] == path and r["method"] == "GET"]


async def _post(url: str, body: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        if resp.status != 200:
            raise AssertionError(f"{url} answered {resp.status}: {await resp.text()}")


def start_emulator(procs: ProcessFactory, *args: str, port: int | None = None) -> Emu:
    admin_port = free_port()
    proc = procs.emulator("--admin-port", str(admin_port), *args, port=port)
    return Emu(proc, f"http://127.0.0.1:{admin_port}")


def write_config(path: Path, *endpoints: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"endpoints": list(endpoints)}), encoding="utf-8")
    return path


def endpoint_entry(name: str, url: str, interval: str = "1s", timeout: str = "800ms", **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "check_interval": interval, "check_timeout": timeout, **extra}


def health_env(
    redis_url: str, tmp_path: Path, config: Path | None, instance: str = "h1", **extra: str
) -> dict[str, str]:
    env = {
        "PIER_REDIS_URL": redis_url,
        "PIER_INSTANCE_ID": instance,
        "PIER_HEALTH_ID_FILE": str(tmp_path / f"{instance}.id"),
        "PIER_DOCKER_DISCOVERY": "off",
        "PIER_LOG_LEVEL": "info",
        # Never the real DMR addresses from a test: only loopback traffic.
        "PIER_AUTODETECT_CANDIDATES": "http://127.0.0.1:9",
    }
    if config is not None:
        env["PIER_CONFIG_FILE"] = str(config)
    env.update(extra)
    return env


def start_health(procs: ProcessFactory, env: dict[str, str]) -> Proc:
    return procs.python("health", "services.health", env=env)


async def read_state(redis: RedisClient, name: str) -> EndpointState | None:
    raw = await redis.get(keys.endpoint_state(name))
    return None if raw is None else EndpointState.model_validate_json(raw)


async def wait_status(
    redis: RedisClient, name: str, status: EndpointStatus, *, timeout_s: float = 20.0, proc: Proc | None = None
) -> EndpointState:
    async def check() -> EndpointState | None:
        if proc is not None and not proc.alive():
            raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.output()[-3000:]}")
        state = await read_state(redis, name)
        return state if state is not None and state.status is status else None

    try:
        state = await wait_for(check, timeout_s=timeout_s, what=f"{name} to be {status.value}")
    except AssertionError:
        if proc is not None:
            print(proc.output()[-3000:])
        raise
    assert state is not None
    return state


async def all_events(redis: RedisClient) -> list[Event]:
    return [event for _id, event in await statestore.read_events(redis, "0-0", count=100_000)]
