"""Helpers for the warm-up tests: endpoint states as the health worker writes them, emulator admin calls."""

from __future__ import annotations

from typing import Any

import aiohttp

from shared.state import EndpointState, EndpointStatus, LoadedModel


def dmr_state(
    name: str,
    url: str,
    *models: str,
    version: str | None = "v1.2.6",
    type_: str = "docker-model-runner",
    status: EndpointStatus = EndpointStatus.HEALTHY,
) -> EndpointState:
    return EndpointState(
        name=name,
        url=url,
        type=type_,
        priority=100,
        status=status,
        version=version,
        models=models or ("ai/smollm2:latest",),
        models_known=True,
        loaded=(),
        loaded_known=type_ == "docker-model-runner",
        ttl_s=120,
    )


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def post_json(url: str, body: Any) -> Any:
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as resp:
        assert resp.status < 300, await resp.text()
        return await resp.json(content_type=None)


async def ps(url: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = await get_json(f"{url}/engines/ps")
    return result


async def emulator_state(url: str) -> dict[str, Any]:
    result: dict[str, Any] = await get_json(f"{url}/_emulator/state")
    return result


async def requests_to(url: str, path: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = await get_json(f"{url}/_emulator/requests")
    return [r for r in records if r["path"] == path]


def loaded(*names: str) -> tuple[LoadedModel, ...]:
    return tuple(LoadedModel(name=n) for n in names)
