"""An OTLP/HTTP receiver that keeps every request body as it arrived (decompressed): the secrets test greps the
exported bytes themselves, not a decoded view that could drop a field."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field

from aiohttp import web

from tests.harness import free_port


@dataclass
class RawOtlp:
    """Bodies per signal path (`/v1/traces`, `/v1/metrics`, `/v1/logs`)."""

    port: int = field(default_factory=free_port)
    bodies: dict[str, list[bytes]] = field(default_factory=dict)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _take(self, request: web.Request) -> web.Response:
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "").lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        self.bodies.setdefault(request.path, []).append(body)
        # An empty Export*ServiceResponse: all of it accepted.
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/{signal}", self._take)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def count(self, path: str) -> int:
        return len(self.bodies.get(path, []))

    def all_bytes(self) -> list[bytes]:
        return [body for bodies in self.bodies.values() for body in bodies]
