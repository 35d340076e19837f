"""The health worker's HTTP GETs (probes, zero-config detection), through Pier's own HTTP/1.1 client.

It replaced aiohttp's client here as in the router: hundreds of endpoints probed every second made the client
the bulk of the worker's CPU. One pool per worker, keep-alive connections per endpoint.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from shared.h1 import BadResponse
from shared.h1client import UpstreamPool, origin_of

MAX_BODY_BYTES = 32 * 1024 * 1024  # a model listing far beyond any real one: the endpoint is misbehaving
KEEPALIVE_S = 30.0
# Sent with every probe; bodies come uncompressed (the probe reads them, nothing else would decompress).
_FIXED_HEADERS = (("User-Agent", "pier-health/0.1"), ("Accept-Encoding", "identity"))

# What a GET can raise for anything the endpoint (or the network) does.
FETCH_ERRORS = (TimeoutError, OSError, BadResponse, ValueError)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    retry_after: str | None


class Fetcher:
    """GETs with one deadline for the whole exchange (connect, head and body). Create it inside the loop."""

    def __init__(self) -> None:
        self._pool = UpstreamPool(keepalive_s=KEEPALIVE_S)

    async def get(
        self, base_url: str, path: str, headers: Mapping[str, str], timeout_s: float, *, label: str = ""
    ) -> Answer:
        """Raises one of FETCH_ERRORS; TimeoutError when the whole exchange took over `timeout_s`. `label` names
        the endpoint in the client's warnings (a misframed answer)."""
        origin = origin_of(base_url)
        fields = [*_FIXED_HEADERS, *headers.items()] if headers else _FIXED_HEADERS
        async with asyncio.timeout(timeout_s):
            response = await self._pool.request(
                origin, "GET", path, fields, b"",
                connect_timeout_s=timeout_s, head_timeout_s=None, read_timeout_s=None, label=label,
            )  # fmt: skip
            body = await response.read(MAX_BODY_BYTES)
        return Answer(response.status, body, response.headers.get("Retry-After"))

    async def close(self) -> None:
        await self._pool.close()
