"""The router's aiohttp application: routes, the one error boundary, and its resources as cleanup contexts.

Resources (each created inside the app's lifecycle, stored under a typed `web.AppKey`, closed on exit):
the `UpstreamPool` (one per process: keep-alive connections per endpoint, explicit timeouts)
and the `StateCache` with its background task (it owns its Redis client).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from redis.exceptions import RedisError

from services.router.circuit import Circuits
from services.router.errors import answer_error, check_header_size
from services.router.events import EventLog
from services.router.exchange import Exchanger
from services.router.expect import expect_handler
from services.router.gate import build_gate
from services.router.headers import RequestIds
from services.router.openapi import OpenApiRoute
from services.router.page import StatusPage
from services.router.proxy import Api, Proxy
from services.router.rates import LiveRates
from services.router.runtime import Runtime
from services.router.settings import RouterSettings
from services.router.statecache import StateCache
from services.router.status import MANAGEMENT, StatusRoutes
from services.router.telemetry import RouterTelemetry, prometheus_handler
from shared.config import PierConfig
from shared.h1client import UpstreamPool
from shared.telemetry import Telemetry

log = logging.getLogger(__name__)

SETTINGS: web.AppKey[RouterSettings] = web.AppKey("pier.settings", RouterSettings)
CONFIG: web.AppKey[PierConfig] = web.AppKey("pier.config", PierConfig)
RUNTIME: web.AppKey[Runtime] = web.AppKey("pier.runtime", Runtime)
CIRCUITS: web.AppKey[Circuits] = web.AppKey("pier.circuits", Circuits)
POOL: web.AppKey[UpstreamPool] = web.AppKey("pier.upstream", UpstreamPool)
STATE: web.AppKey[StateCache] = web.AppKey("pier.state", StateCache)

STARTUP_SNAPSHOT_S = 3.0  # wait this long for the first Redis snapshot before serving from the config alone
STATE_STOP_S = 5.0

# Inference operations under an OpenAI-style prefix.
OPS = ("chat/completions", "completions", "embeddings", "responses")
# DMR's own prefix, its `/v1` alias, and Olla's names for the same.
PREFIXES = ("/engines/v1", "/v1", "/olla/dmr/engines/v1", "/olla/dmr/v1")
ENGINE_PREFIXES = ("/engines/{engine}/v1", "/olla/dmr/engines/{engine}/v1")
DMR_ROOTS = ("", "/olla/dmr")
# Anthropic's own paths (`/v1/messages`, the SDK's default) beside DMR's and Olla's prefixed ones.
ANTHROPIC_ROOTS = ("/anthropic/v1", "/olla/anthropic/v1", "/v1")
ANTHROPIC_MODEL_ROOTS = ("/anthropic/v1", "/olla/anthropic/v1")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guarded(handler: Handler, max_header_bytes: int) -> Handler:
    """The one error boundary, around every route but the inference ones (`Proxy.forward` holds its own, to
    save a coroutine frame on the hot path): JSON in the route's API shape, never a traceback.

    (A wrapper per route rather than an aiohttp middleware: the same effect, less work per request.)
    """

    async def guard(request: web.Request) -> web.StreamResponse:
        try:
            check_header_size(request, max_header_bytes)
            return await handler(request)
        except Exception as exc:
            return answer_error(request, exc)

    return guard


def _report_crash(task: asyncio.Task[None]) -> None:
    # The state loop only ends on stop(); an exception here means routing is frozen: say so loudly.
    if not task.cancelled() and task.exception() is not None:
        log.error("the state cache loop died; routing stays on the last table", exc_info=task.exception())


def _inference(proxy: Proxy, api: Api, op: str, *, engine_in_path: bool) -> Handler:
    # `forward` is the handler itself, error boundary included: no wrapper coroutine per request.
    return functools.partial(proxy.forward, api=api, op=op, engine_in_path=engine_in_path)


def add_fallback(router: web.UrlDispatcher, max_header_bytes: int) -> None:
    """Every request no route takes: 405 (with Allow) when the path exists for other methods, else 404."""
    # `[\s\S]*`, not `.*`: a path holding a newline (`%0A`) must land here too, or aiohttp answers it with
    # its own text 404.
    catch_all = router.add_resource("/{tail:[\\s\\S]*}")

    async def nowhere(request: web.Request) -> web.StreamResponse:
        allowed: set[str] = set()
        for resource in router.resources():
            if resource is not catch_all:
                match, methods = await resource.resolve(request)
                if match is None:
                    allowed |= methods
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, allowed)
        raise web.HTTPNotFound()

    catch_all.add_route("*", guarded(nowhere, max_header_bytes), expect_handler=expect_handler)


def add_routes(
    app: web.Application,
    proxy: Proxy,
    status: StatusRoutes,
    max_header_bytes: int,
    telemetry: RouterTelemetry | None = None,
    metrics: Handler | None = None,
    page: tuple[StatusPage, LiveRates, EventLog] | None = None,
) -> None:
    router = app.router

    def traced(handler: Handler) -> Handler:
        return handler if telemetry is None else telemetry.wrap(handler)

    def add(method: str, path: str, handler: Handler) -> None:
        router.add_route(method, path, traced(guarded(handler, max_header_bytes)), expect_handler=expect_handler)

    def add_inference(path: str, handler: Handler) -> None:
        # guarded by `Proxy.forward` itself
        router.add_route("POST", path, traced(handler), expect_handler=expect_handler)

    for prefix in PREFIXES:
        for op in OPS:
            add_inference(f"{prefix}/{op}", _inference(proxy, Api.OPENAI, op, engine_in_path=False))
        add("GET", f"{prefix}/models", status.openai_models)
        add("GET", f"{prefix}/models/{{model:.+}}", status.openai_model)
    for prefix in ENGINE_PREFIXES:
        for op in OPS:
            add_inference(f"{prefix}/{op}", _inference(proxy, Api.OPENAI, op, engine_in_path=True))
        add("GET", f"{prefix}/models", status.openai_models)
    for root in ANTHROPIC_ROOTS:
        add_inference(f"{root}/messages", _inference(proxy, Api.ANTHROPIC, "messages", engine_in_path=False))
        count = _inference(proxy, Api.ANTHROPIC_COUNT, "messages/count_tokens", engine_in_path=False)
        add_inference(f"{root}/messages/count_tokens", count)
    for root in ANTHROPIC_MODEL_ROOTS:
        add("GET", f"{root}/models", status.anthropic_models)
        add("GET", f"{root}/models/{{model:.+}}", status.anthropic_model)
    for root in DMR_ROOTS:
        for method, path, what, command in MANAGEMENT:
            if root and path.startswith("/api/"):
                continue
            add(method, f"{root}{path}", status.management(what, command))
        add("GET", f"{root}/models", status.inventory)
        add("GET", f"{root}/models/{{name:.+}}", status.inventory_entry)
        add("GET", f"{root}/engines/ps", status.ps)
        add("GET", f"{root}/engines/status", status.engines_status)
    add("GET", "/olla/models", status.olla_models)
    add("GET", "/internal/health", status.health)
    add("GET", "/internal/status", status.status)
    add("GET", "/internal/status/endpoints", status.endpoints)
    add("GET", "/internal/status/models", status.models_status)
    if metrics is not None:
        add("GET", "/internal/metrics", metrics)
    add("GET", "/version", status.version)
    add("GET", "/openapi.json", OpenApiRoute(router).handle)
    if page is None:
        add("GET", "/", status.root)
    else:
        ui, rates, events = page  # the status page: `/` for browsers, its files, and the JSON only it needs
        add("GET", "/internal/status/rates", rates.route)
        add("GET", "/internal/events", events.route)
        add("GET", "/internal/ui/{asset}", ui.asset)
        add("GET", "/", ui.root)
    add_fallback(router, max_header_bytes)  # last: it takes any path


def build_app(settings: RouterSettings, config: PierConfig, telemetry: Telemetry | None = None) -> web.Application:
    """The router app for one process; its resources start with the app and close with it.

    `telemetry`: this process's providers (`shared.telemetry.setup`); None or nothing configured: no spans,
    no metrics, and the request path pays one attribute check.
    """
    # aiohttp rejects a body of exactly client_max_size, so allow one more byte: the limit is inclusive.
    app = web.Application(client_max_size=settings.max_body_bytes + 1)
    runtime = Runtime()
    circuits = Circuits(settings.circuit_threshold, settings.circuit_open_s)
    proxy = Proxy(settings, config, runtime, circuits, RequestIds(trust_inbound=settings.trust_request_id))
    status = StatusRoutes(settings, config, runtime, circuits)
    app[SETTINGS] = settings
    app[CONFIG] = config
    app[RUNTIME] = runtime
    app[CIRCUITS] = circuits
    observed: RouterTelemetry | None = None
    if telemetry is not None and telemetry.enabled:
        observed = RouterTelemetry(telemetry, runtime, circuits, lambda: app.get(STATE), port=settings.port)
        proxy.bind_telemetry(True)

    async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
        # Bytes pass through as the endpoint encoded them; no cookies are kept; no proxy from the environment.
        pool = UpstreamPool(keepalive_s=settings.upstream_keepalive_s, limit=settings.upstream_pool_size)
        app[POOL] = pool
        proxy.bind_exchanger(Exchanger(pool, settings, circuits))
        try:
            yield
        finally:
            proxy.bind_exchanger(None)
            await pool.close()

    async def state_ctx(app: web.Application) -> AsyncIterator[None]:
        cache = StateCache(
            config,
            settings.redis_target(),
            resync_interval_s=settings.resync_interval_s,
            instance_id=settings.instance_id,
            warm_across_tiers_s=settings.warm_across_tiers_s,
        )
        app[STATE] = cache
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            # Route on real state from the first request when Redis is there; from the config alone if not.
            await asyncio.wait_for(cache.run_once(), STARTUP_SNAPSHOT_S)
        task = asyncio.create_task(cache.run(), name="pier-router-state")
        task.add_done_callback(_report_crash)
        proxy.bind_state(cache)
        status.state = cache
        try:
            yield
        finally:
            cache.stop()
            try:
                await asyncio.wait_for(task, STATE_STOP_S)
            except TimeoutError:
                log.warning("state cache did not stop in %ss; cancelled", STATE_STOP_S)
            # Passive signals still on their way to the health worker (endpoints this router saw fail).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cache.drain_signals(), STATE_STOP_S)
            await cache.close()

    gate = build_gate(settings)
    if gate is not None:  # access control or limits on; off, the request path has no middleware at all
        shared_url = settings.redis_target() if settings.rate_limit_shared else None
        gate.install(app, shared_redis_url=shared_url, timeout_s=settings.rate_limit_redis_timeout_s)
    app.cleanup_ctx.append(pool_ctx)
    app.cleanup_ctx.append(state_ctx)
    events = EventLog(settings.redis_target())
    app.cleanup_ctx.append(events.lifecycle)
    page = (StatusPage(status.root), LiveRates(observed), events)
    add_routes(app, proxy, status, settings.max_header_bytes, observed, prometheus_handler(telemetry), page)
    return app
