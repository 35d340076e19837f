"""The router's aiohttp application: routes, the one error boundary, and its resources as cleanup contexts.

Resources (each created inside the app's lifecycle, stored under a typed `web.AppKey`, closed on exit):
the upstream `ClientSession` (one per process, pooled keep-alive connections per endpoint, explicit timeouts)
and the `StateCache` with its background task (it owns its Redis client).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware
from redis.exceptions import RedisError

from services.router.circuit import Circuits
from services.router.errors import (
    HeadersTooLarge,
    InternalError,
    RouterError,
    error_response,
    flavour_of,
    from_http_exception,
)
from services.router.exchange import Exchanger
from services.router.headers import RequestIds
from services.router.proxy import REQUEST_ID_KEY, Api, Proxy
from services.router.runtime import Runtime
from services.router.settings import RouterSettings
from services.router.statecache import StateCache
from services.router.status import MANAGEMENT, StatusRoutes
from shared.config import PierConfig

log = logging.getLogger(__name__)

SETTINGS: web.AppKey[RouterSettings] = web.AppKey("pier.settings", RouterSettings)
CONFIG: web.AppKey[PierConfig] = web.AppKey("pier.config", PierConfig)
RUNTIME: web.AppKey[Runtime] = web.AppKey("pier.runtime", Runtime)
CIRCUITS: web.AppKey[Circuits] = web.AppKey("pier.circuits", Circuits)
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("pier.session", aiohttp.ClientSession)
STATE: web.AppKey[StateCache] = web.AppKey("pier.state", StateCache)

STARTUP_SNAPSHOT_S = 3.0  # wait this long for the first Redis snapshot before serving from the config alone
STATE_STOP_S = 5.0

# Inference operations under an OpenAI-style prefix.
OPS = ("chat/completions", "completions", "embeddings", "responses")
# DMR's own prefix, its `/v1` alias, and Olla's names for the same.
PREFIXES = ("/engines/v1", "/v1", "/olla/dmr/engines/v1", "/olla/dmr/v1")
ENGINE_PREFIXES = ("/engines/{engine}/v1", "/olla/dmr/engines/{engine}/v1")
DMR_ROOTS = ("", "/olla/dmr")
ANTHROPIC_ROOTS = ("/anthropic/v1", "/olla/anthropic/v1")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_boundary(max_header_bytes: int) -> Middleware:
    """The one place errors become responses: JSON in the route's API shape, never a traceback."""

    @web.middleware
    async def boundary(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            # aiohttp bounds each header line; the total is bounded here.
            size = 0
            for name, value in request.raw_headers:
                size += len(name) + len(value) + 4
            if size > max_header_bytes:
                raise HeadersTooLarge(f"request headers of {size} bytes are over the limit of {max_header_bytes}")
            return await handler(request)
        except RouterError as exc:
            error = exc
        except web.HTTPException as exc:
            error = from_http_exception(exc, request.method, request.path)
        except Exception:
            if request.writer.output_size > 0:
                raise  # a response is under way: nothing can replace it (the connection is closed)
            log.exception("unexpected error on %s %s", request.method, request.path)
            error = InternalError("internal error in the router (see its log)")
        return error_response(error, flavour_of(request.path), request.get(REQUEST_ID_KEY))

    return boundary


def _report_crash(task: asyncio.Task[None]) -> None:
    # The state loop only ends on stop(); an exception here means routing is frozen: say so loudly.
    if not task.cancelled() and task.exception() is not None:
        log.error("the state cache loop died; routing stays on the last table", exc_info=task.exception())


def _inference(proxy: Proxy, api: Api, op: str, *, engine_in_path: bool) -> Handler:
    if engine_in_path:

        async def with_engine(request: web.Request) -> web.StreamResponse:
            return await proxy.forward(request, api, op, request.match_info["engine"])

        return with_engine

    async def plain(request: web.Request) -> web.StreamResponse:
        return await proxy.forward(request, api, op, None)

    return plain


def add_routes(app: web.Application, proxy: Proxy, status: StatusRoutes) -> None:
    router = app.router
    for prefix in PREFIXES:
        for op in OPS:
            router.add_post(f"{prefix}/{op}", _inference(proxy, Api.OPENAI, op, engine_in_path=False))
        router.add_get(f"{prefix}/models", status.openai_models)
        router.add_get(f"{prefix}/models/{{model:.+}}", status.openai_model)
    for prefix in ENGINE_PREFIXES:
        for op in OPS:
            router.add_post(f"{prefix}/{op}", _inference(proxy, Api.OPENAI, op, engine_in_path=True))
        router.add_get(f"{prefix}/models", status.openai_models)
    for root in ANTHROPIC_ROOTS:
        router.add_post(f"{root}/messages", _inference(proxy, Api.ANTHROPIC, "messages", engine_in_path=False))
        router.add_post(
            f"{root}/messages/count_tokens",
            _inference(proxy, Api.ANTHROPIC_COUNT, "messages/count_tokens", engine_in_path=False),
        )
    for root in DMR_ROOTS:
        for method, path, what, command in MANAGEMENT:
            if root and path.startswith("/api/"):
                continue
            router.add_route(method, f"{root}{path}", status.management(what, command))
        router.add_get(f"{root}/models", status.inventory)
        router.add_get(f"{root}/models/{{name:.+}}", status.inventory_entry)
        router.add_get(f"{root}/engines/ps", status.ps)
        router.add_get(f"{root}/engines/status", status.engines_status)
    router.add_get("/olla/models", status.olla_models)
    router.add_get("/internal/health", status.health)
    router.add_get("/internal/status", status.status)
    router.add_get("/internal/status/endpoints", status.endpoints)
    router.add_get("/internal/status/models", status.models_status)
    router.add_get("/version", status.version)
    router.add_get("/", status.root)


def build_app(settings: RouterSettings, config: PierConfig) -> web.Application:
    """The router app for one process; its resources start with the app and close with it."""
    # aiohttp rejects a body of exactly client_max_size, so allow one more byte: the limit is inclusive.
    app = web.Application(
        client_max_size=settings.max_body_bytes + 1, middlewares=[error_boundary(settings.max_header_bytes)]
    )
    runtime = Runtime()
    circuits = Circuits(settings.circuit_threshold, settings.circuit_open_s)
    proxy = Proxy(settings, config, runtime, circuits, RequestIds(trust_inbound=settings.trust_request_id))
    status = StatusRoutes(settings, config, runtime, circuits)
    app[SETTINGS] = settings
    app[CONFIG] = config
    app[RUNTIME] = runtime
    app[CIRCUITS] = circuits

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(
            limit=settings.upstream_pool_size,
            limit_per_host=0,
            keepalive_timeout=settings.upstream_keepalive_s,
            ttl_dns_cache=10,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,  # bytes pass through as the endpoint encoded them
            cookie_jar=aiohttp.DummyCookieJar(),  # never keep an endpoint's cookies
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            trust_env=False,
        )
        app[SESSION] = session
        proxy.bind_exchanger(Exchanger(session, settings, circuits))
        try:
            yield
        finally:
            proxy.bind_exchanger(None)
            await session.close()

    async def state_ctx(app: web.Application) -> AsyncIterator[None]:
        cache = StateCache(
            config, settings.redis_url, resync_interval_s=settings.resync_interval_s, instance_id=settings.instance_id
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
            await cache.close()

    app.cleanup_ctx.append(session_ctx)
    app.cleanup_ctx.append(state_ctx)
    add_routes(app, proxy, status)
    return app
