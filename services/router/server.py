"""Serving the app: one process, or `PIER_WORKERS` processes on one port (SO_REUSEPORT), each draining on SIGTERM.

SIGTERM: stop accepting, close idle connections, let running requests and streams finish for up to
`PIER_DRAIN_TIMEOUT_S`, then cancel what is left and close the resources.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
import urllib.error
import urllib.request
from types import FrameType
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from services.router.app import build_app
from services.router.errors import (
    Flavour,
    HeadersTooLarge,
    InternalError,
    InvalidRequest,
    RouterError,
    error_response,
)
from services.router.settings import RouterSettings
from shared.config import PierConfig
from shared.lifecycle import install_uvloop
from shared.telemetry import Telemetry, setup

log = logging.getLogger(__name__)

SUPERVISOR_GRACE_S = 10.0  # on top of the drain timeout before a worker is killed


def _protocol_error(status: int, exc: BaseException | None, message: str | None) -> RouterError:
    """What aiohttp's HTTP parser (or a handler that escaped the boundary) reports, as a router error."""
    if isinstance(exc, LineTooLong):
        return HeadersTooLarge("a request header (or the request line) is over the size limit")
    if isinstance(exc, BadHttpMessage) and "too many headers" in str(exc).lower():
        return HeadersTooLarge("too many request headers")
    if status == 400:
        return InvalidRequest(f"bad HTTP request: {message or exc or 'unparsable'}")
    if status == 504:
        return RouterError("request timed out", status=504)
    return InternalError("internal error in the router (see its log)")


class _Handler(RequestHandler):
    """aiohttp's connection handler, with its plain-text error pages replaced by JSON (431 for big headers)."""

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already under way; closing the connection")
        err = _protocol_error(status, exc, message)
        if err.status >= 500:
            log.error("error handling a request: %s", exc or message, exc_info=exc)
        else:
            log.debug("bad request: %s", exc or message)
        response = error_response(err, Flavour.OPENAI)
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        # web.Server builds plain RequestHandlers; this one builds the JSON-error subclass with the same options.
        return _Handler(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        base = await super()._make_server()
        return _Server(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **base._kwargs,
        )


def make_runner(settings: RouterSettings, config: PierConfig, telemetry: Telemetry | None = None) -> web.AppRunner:
    """The app runner with the router's server options (also used by in-process tests)."""
    return _Runner(
        build_app(settings, config, telemetry),
        # A client that goes away cancels its handler, which closes the upstream request at once.
        handler_cancellation=True,
        shutdown_timeout=settings.drain_timeout_s,
        access_log=None,  # no per-request logging
        keepalive_timeout=settings.keepalive_s,
        max_line_size=settings.max_header_bytes,
        max_field_size=settings.max_header_bytes,
        max_headers=settings.max_headers,
    )


async def serve(settings: RouterSettings, config: PierConfig, *, reuse_port: bool = False) -> None:
    """Serve until SIGTERM/SIGINT, then drain and close."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Per serving process (after the fork when there are several): exporter threads do not survive a fork.
    telemetry = setup("pier-router", prometheus=settings.prometheus_metrics, loop_ticks=True)
    telemetry.start_metric_ticks()
    runner = make_runner(settings, config, telemetry)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port or None, backlog=1024)
        await site.start()
        # Everything alive now (modules, config, app, first table) lives as long as the process: freezing it
        # keeps the collector from walking it again on every full collection while requests are served.
        gc.freeze()
        log.info("router listening on %s:%s (pid %s)", settings.host, settings.port, os.getpid())
        await stop.wait()
        log.info("stopping: draining for up to %gs", settings.drain_timeout_s)
    finally:
        await runner.cleanup()
        telemetry.shutdown()  # what is still queued leaves now (bounded: FLUSH_TIMEOUT_S)
        log.info("router stopped (pid %s)", os.getpid())


def _serve_process(settings: RouterSettings, config: PierConfig, reuse_port: bool) -> int:
    install_uvloop()
    try:
        asyncio.run(serve(settings, config, reuse_port=reuse_port))
    except OSError as exc:
        log.error("router cannot serve on %s:%s: %s", settings.host, settings.port, exc)
        return 1
    return 0


def _worker_main(settings: RouterSettings, config: PierConfig) -> None:
    # The supervisor's handlers were copied by fork; this process installs its own in serve().
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    raise SystemExit(_serve_process(settings, config, reuse_port=True))


def run(settings: RouterSettings, config: PierConfig) -> int:
    """Run the router: in this process for one worker, under a small supervisor for several."""
    if settings.workers == 1:
        return _serve_process(settings, config, reuse_port=False)
    return _supervise(settings, config)


def _supervise(settings: RouterSettings, config: PierConfig) -> int:
    """Fork `workers` serving processes; forward SIGTERM/SIGINT; if one dies unexpectedly, stop them all."""
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_worker_main, args=(settings, config), name=f"pier-router-{index}")
        for index in range(settings.workers)
    ]
    state: dict[str, Any] = {"stopping": False, "kill_at": None}

    def stop_all(reason: str) -> None:
        if not state["stopping"]:
            log.info("supervisor: %s; stopping %d workers", reason, len(workers))
            state["stopping"] = True
            state["kill_at"] = time.monotonic() + settings.drain_timeout_s + SUPERVISOR_GRACE_S
        for worker in workers:
            if worker.pid is not None and worker.exitcode is None:
                _signal(worker.pid, signal.SIGTERM)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_all(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for worker in workers:
        worker.start()
    exit_code = 0
    while True:
        alive = [w for w in workers if w.exitcode is None]
        if not alive:
            break
        multiprocessing.connection.wait([w.sentinel for w in alive], timeout=1.0)
        for worker in workers:
            if worker.exitcode is not None and not state["stopping"]:
                exit_code = 1
                stop_all(f"worker {worker.name} exited unexpectedly with {worker.exitcode}")
        if state["kill_at"] is not None and time.monotonic() > state["kill_at"]:
            for worker in workers:
                if worker.exitcode is None and worker.pid is not None:
                    log.warning("supervisor: worker %s did not stop in time; killing it", worker.name)
                    _signal(worker.pid, signal.SIGKILL)
            state["kill_at"] = None
    for worker in workers:
        worker.join()
        if worker.exitcode not in (0, -signal.SIGTERM):
            exit_code = exit_code or 1
    return exit_code


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def check(settings: RouterSettings) -> int:
    """`--check`: 0 when /internal/health answers 200 on this container's router, 1 otherwise."""
    host = "127.0.0.1" if settings.host in ("", "0.0.0.0", "::") else settings.host
    url = f"http://{host}:{settings.port}/internal/health"
    try:
        with urllib.request.urlopen(url, timeout=settings.check_timeout_s) as response:
            ok = int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"router --check: {url}: {exc}")
        return 1
    if not ok:
        print(f"router --check: {url} did not answer 200")
    return 0 if ok else 1
