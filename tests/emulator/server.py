"""EmulatorServer: the main listener (which the `refuse` fault closes and re-opens) and the admin listener."""

from __future__ import annotations

from aiohttp import web

from tests.emulator.admin import build_admin_app
from tests.emulator.app import build_app
from tests.emulator.config import EmulatorConfig
from tests.emulator.state import Emulator, ListenerControl

SHUTDOWN_TIMEOUT_S = 0.25


class EmulatorServer:
    """Serves one emulator on `config.port` (0 = any free port) and optionally `config.admin_port`.

    `await start()` then read `.port` / `.url` / `.admin_url`; `await close()` when done.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.emulator = Emulator(config)
        self.emulator.listener = ListenerControl(self._close_main, self._open_main)
        self.app = build_app(emulator=self.emulator)
        # handler_cancellation: a client that goes away cancels its handler, like Go's request context.
        self._runner = web.AppRunner(
            self.app, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None
        )
        self._admin_runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = config.port
        self.admin_port = config.admin_port

    @property
    def url(self) -> str:
        return f"http://{_connect_host(self.config.host)}:{self.port}"

    @property
    def admin_url(self) -> str:
        """The admin listener's URL (the main URL when there is no admin port)."""
        if self.admin_port is None:
            return self.url
        return f"http://{_connect_host(self.config.host)}:{self.admin_port}"

    async def start(self) -> None:
        await self._runner.setup()
        await self._open_main()
        if self.admin_port is not None:
            self._admin_runner = web.AppRunner(
                build_admin_app(self.emulator), shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None
            )
            await self._admin_runner.setup()
            site = web.TCPSite(self._admin_runner, self.config.host, self.admin_port, reuse_address=True)
            await site.start()
            self.admin_port = _bound_port(site)

    async def close(self) -> None:
        await self.emulator.close()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        await self._runner.cleanup()

    async def _open_main(self) -> None:
        site = web.TCPSite(self._runner, self.config.host, self.port, reuse_address=True)
        await site.start()
        self._site = site
        self.port = _bound_port(site)

    async def _close_main(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None


def _bound_port(site: web.TCPSite) -> int:
    # aiohttp keeps the (asyncio or uvloop) server here; the bound port of port 0 lives on its sockets.
    sockets = getattr(site._server, "sockets", None)
    if not sockets:
        raise RuntimeError("the listener has no socket")
    return int(sockets[0].getsockname()[1])


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host
