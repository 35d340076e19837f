"""The warm-up worker's calls to one endpoint: `/engines/ps`, a preload, `_configure`, unload and pull.

Preload methods, cheapest first: `X-Preload-Only: true` (DMR 1.0.15+: loads, answers 200 with no body),
`_configure` (DMR 1.0.15+: 202, then loads in the background), a one-token completion (anything else).
`detect_method` picks one from the profile and the version the health worker read; when the version is
unknown, the first preload sends the header *and* `max_tokens: 1`, and the answer tells which one applied.
What an endpoint answers is checked before it reaches the state (`shared.inventory`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

import aiohttp

from shared import jsontext
from shared.inventory import InventoryError, parse_loaded
from shared.profiles import Profile
from shared.state import EndpointState, LoadedModel

PRELOAD_ONLY_SINCE = (1, 0, 15)
_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")
_PROMPT = [{"role": "user", "content": "warm-up"}]


class Method(StrEnum):
    PRELOAD_ONLY = "preload-only"
    CONFIGURE = "configure"
    COMPLETION = "completion"
    PROBE = "probe"  # not known yet: the first preload finds out


class CallError(Exception):
    """An endpoint call failed; the message is what the status routes show."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how to reach one endpoint."""

    name: str
    url: str
    profile: Profile
    headers: dict[str, str]


def version_tuple(text: str | None) -> tuple[int, int, int] | None:
    match = _VERSION.search(text or "")
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def detect_method(state: EndpointState, profile: Profile) -> Method:
    if not profile.preload_only_header:
        return Method.COMPLETION
    version = version_tuple(state.version)
    if version is None:
        return Method.PROBE
    return Method.PRELOAD_ONLY if version >= PRELOAD_ONLY_SINCE else Method.COMPLETION


def configure_supported(state: EndpointState, profile: Profile) -> bool:
    """`_configure` (and so `pin`) exists on DMR 1.0.15+; an unknown version is tried (a 404 is reported)."""
    if not profile.preload_only_header:
        return False
    version = version_tuple(state.version)
    return version is None or version >= PRELOAD_ONLY_SINCE


async def _error(resp: aiohttp.ClientResponse) -> CallError:
    text = (await resp.text(errors="replace")).strip().replace("\n", " ")
    return CallError(f"HTTP {resp.status}: {text[:200]}" if text else f"HTTP {resp.status}")


async def fetch_ps(http: aiohttp.ClientSession, target: Target) -> tuple[LoadedModel, ...] | None:
    """What is loaded now; None when the endpoint has no `/engines/ps`."""
    path = target.profile.loaded_path
    if path is None:
        return None
    async with http.get(f"{target.url}{path}", headers=target.headers) as resp:
        if resp.status == 404:
            return None
        if resp.status >= 400:
            raise await _error(resp)
        try:
            return parse_loaded(await resp.json(content_type=None, loads=jsontext.loads))
        except (ValueError, InventoryError) as exc:
            raise CallError(f"{path}: {exc}") from None


async def preload(http: aiohttp.ClientSession, target: Target, model: str, method: Method) -> Method:
    """Load `model` and return when it is ready; returns the method that worked (PROBE resolves here)."""
    body: dict[str, object] = {"model": model, "messages": _PROMPT}
    headers = dict(target.headers)
    if method in (Method.PRELOAD_ONLY, Method.PROBE, Method.CONFIGURE):
        headers["X-Preload-Only"] = "true"
    if method is not Method.PRELOAD_ONLY:
        body["max_tokens"] = 1
    url = f"{target.url}{target.profile.api_prefix}/chat/completions"
    async with http.post(url, json=body, headers=headers) as resp:
        if resp.status >= 400:
            raise await _error(resp)
        raw = await resp.read()
    if method is Method.PROBE:
        # DMR answers a preload with an empty body; a server that ignored the header generated one token.
        return Method.PRELOAD_ONLY if not raw.strip() else Method.COMPLETION
    return method


async def configure(http: aiohttp.ClientSession, target: Target, model: str, *, keep_alive: str) -> bool:
    """`POST /engines/_configure`; False when DMR answers 409 (the runner is busy: try again later)."""
    url = f"{target.url}/engines/_configure"
    async with http.post(url, json={"model": model, "keep_alive": keep_alive}, headers=target.headers) as resp:
        if resp.status == 409:
            return False
        if resp.status >= 400:
            raise await _error(resp)
        await resp.read()
    return True


async def unload(http: aiohttp.ClientSession, target: Target, model: str) -> None:
    """`POST /engines/unload` of one model; DMR leaves a busy runner loaded."""
    url = f"{target.url}/engines/unload"
    async with http.post(url, json={"models": [model]}, headers=target.headers) as resp:
        if resp.status >= 400:
            raise await _error(resp)
        await resp.read()


async def pull(http: aiohttp.ClientSession, target: Target, model: str) -> None:
    """`POST /models/create`, following its progress stream to the end; a final `error` line fails it."""
    headers = {**target.headers, "Accept": "application/json"}
    async with http.post(f"{target.url}/models/create", json={"from": model}, headers=headers) as resp:
        if resp.status >= 400:
            raise await _error(resp)
        last: dict[str, object] = {}
        async for line in resp.content:
            text = line.strip()
            if not text:
                continue
            try:
                item = jsontext.loads(text)
            except ValueError:
                raise CallError("pull: the progress stream is not JSON lines") from None
            if isinstance(item, dict):
                last = item
                if item.get("type") == "error":
                    raise CallError(f"pull failed: {str(item.get('message'))[:200]}")
    if last.get("type") != "success":
        raise CallError("pull: the progress stream ended without success")
