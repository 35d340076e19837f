"""Zero-config: with no endpoint configured, find DMR at its usual addresses and adopt the first that answers.

"Answers like DMR" means `GET /engines/v1/models` returns 200 with an OpenAI model list. All candidates are
tried at once; the earliest in preference order that answered wins.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from services.health.fetch import FETCH_ERRORS, Fetcher
from shared import jsontext
from shared.config import Endpoint, resolve_endpoint
from shared.endpoints import EndpointConfig
from shared.inventory import InventoryError, parse_model_list
from shared.profiles import ProfileSet

DMR_MODELS_PATH = "/engines/v1/models"
AUTO_ENDPOINT_NAME = "dmr"
DMR_PORT = 12434


def default_gateway(route_table: str) -> str | None:
    """The IPv4 default gateway from the text of /proc/net/route (Linux), or None."""
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 3 or fields[1] != "00000000":
            continue
        try:
            packed = struct.pack("<L", int(fields[2], 16))
        except (ValueError, struct.error):
            continue
        gateway = socket.inet_ntoa(packed)
        if gateway != "0.0.0.0":
            return gateway
    return None


def default_candidates(*, gateway: str | None) -> tuple[str, ...]:
    """DMR's usual addresses, most specific first (see docs: Desktop, CE with host-gateway, CE bridge)."""
    candidates = [
        "http://model-runner.docker.internal",
        f"http://model-runner.docker.internal:{DMR_PORT}",
        f"http://host.docker.internal:{DMR_PORT}",
    ]
    if gateway is not None:
        candidates.append(f"http://{gateway}:{DMR_PORT}")
    return tuple(candidates)


async def answers_like_dmr(fetcher: Fetcher, base_url: str, *, timeout_s: float) -> bool:
    """True when `base_url` lists models the way DMR does."""
    try:
        answer = await fetcher.get(base_url, DMR_MODELS_PATH, {}, timeout_s)
        if answer.status != 200:
            return False
        parse_model_list(jsontext.loads(answer.body))
        return True
    except (*FETCH_ERRORS, InventoryError):  # ValueError covers bad and too-deep JSON too
        return False


async def detect(fetcher: Fetcher, candidates: tuple[str, ...], *, timeout_s: float) -> str | None:
    """The first candidate (in the given order) that answers like DMR, or None."""
    if not candidates:
        return None
    answers = await asyncio.gather(*(answers_like_dmr(fetcher, url, timeout_s=timeout_s) for url in candidates))
    return next((url for url, ok in zip(candidates, answers, strict=True) if ok), None)


def auto_endpoint(url: str, profiles: ProfileSet) -> Endpoint:
    """The endpoint adopted from a detected address (name `dmr`, source `auto`, DMR profile defaults)."""
    cfg = EndpointConfig(url=url, name=AUTO_ENDPOINT_NAME, type="docker-model-runner")
    return resolve_endpoint(cfg, profiles, "autodetect", source="auto")
