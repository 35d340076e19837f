"""The router's front door: one aiohttp middleware for client keys, model globs, rate and concurrency limits.

It is installed only when access control or a limit is on (`build_gate` returns None otherwise), so with both
off the request path pays nothing at all. The decisions are the pure functions of `services.router.access`
(who, and may they) and `services.router.ratelimit` (how often, how many at once); this module reads the
request, calls them, and answers refusals as JSON in the route's API shape with the standard headers.

Named points: `CLIENT_NAME` on the request (the key's name, for logs and telemetry: never the key).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from services.router.access import (
    ClientKey,
    Family,
    KeyTable,
    Network,
    Outcome,
    authorize,
    client_address,
    family_of,
    parse_networks,
)
from services.router.errors import Flavour, RouterError, answer_error, error_response, flavour_of
from services.router.inputs import InputLimits, check_input
from services.router.proxy import parse_body, sniff_model
from services.router.ratelimit import KEY_PREFIX, Limit, Limiter, Taken
from services.router.settings import RouterSettings
from services.router.sharedlimit import SharedLimiter
from services.router.visibility import HIDDEN, visible
from shared import redisconn
from shared.redisconn import RedisTarget

log = logging.getLogger(__name__)

CLIENT_NAME: web.RequestKey[str] = web.RequestKey("pier.client_name", str)
_RATE: web.RequestKey[Taken] = web.RequestKey("pier.rate", Taken)

HEALTH_PATH = "/internal/health"  # the container healthcheck: never rate limited, so it keeps working

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MissingKey(RouterError):
    status = 401
    type = "invalid_request_error"
    code = "missing_api_key"


class InvalidKey(RouterError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class InternalForbidden(RouterError):
    status = 403
    type = "permission_error"
    code = "internal_forbidden"


class ModelForbidden(RouterError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class ModelHidden(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class RateLimited(RouterError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ConcurrencyLimited(RateLimited):
    code = "concurrency_limit_exceeded"


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="pier"'}


def refusal(outcome: Outcome) -> RouterError:
    """The error for a refused `Verdict` (the message never repeats what the client sent)."""
    if outcome is Outcome.MISSING_KEY:
        return MissingKey(
            "an API key is required: send `Authorization: Bearer <key>` or `x-api-key: <key>`", headers=_CHALLENGE
        )
    if outcome is Outcome.INVALID_KEY:
        return InvalidKey("the API key is not valid", headers=_CHALLENGE)
    return InternalForbidden("/internal routes are open to the internal networks and the admin key only")


def flavour_for(request: web.Request, family: Family) -> Flavour:
    # The Anthropic SDK's `models.list()` asks `/v1/models` with `anthropic-version`: it reads Anthropic errors.
    # The path as spelled picks the shape where no route matched (the catch-all), as the router's own 404 does.
    if family is Family.ANTHROPIC or flavour_of(request.path) is Flavour.ANTHROPIC:
        return Flavour.ANTHROPIC
    if "anthropic-version" in request.headers and request.path.startswith("/v1/models"):
        return Flavour.ANTHROPIC
    return Flavour.OPENAI


def rate_headers(taken: Taken) -> dict[str, str]:
    """`X-RateLimit-*` for a bucket: its size, the whole tokens left, seconds until it is full again."""
    return {
        "X-RateLimit-Limit": str(taken.limit.burst),
        "X-RateLimit-Remaining": str(taken.remaining),
        "X-RateLimit-Reset": str(math.ceil(taken.reset_s)),
    }


def _too_many(taken: Taken, what: str) -> RateLimited:
    retry_s = max(1, math.ceil(taken.retry_after_s))
    headers = {"Retry-After": str(retry_s), **rate_headers(taken)}
    return RateLimited(f"{what} rate limit exceeded; retry in {retry_s}s", headers=headers)


def _route_path(request: web.Request) -> str:
    # The matched route's pattern, not the path as spelled: `/%69nternal/status` and friends are judged by the
    # route they reach. (The catch-all's pattern names no family: it needs a client key, and then answers 404.)
    info = request.match_info
    resource = info.route.resource if info is not None else None
    return resource.canonical if resource is not None else request.path


class Gate:
    """Access control (when `table` is set), limits (when `limiter` is set) and input limits (when `inputs` is
    set), as one middleware. Order: what the headers decide (key, rate, concurrency), then what the body does
    (the key's model globs, input limits): a refused client never gets a body read."""

    def __init__(
        self,
        table: KeyTable | None,
        limiter: Limiter | None,
        trusted: tuple[Network, ...] = (),
        inputs: InputLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.limiter = limiter
        self.trusted = trusted
        self.inputs = inputs
        self.clock = clock
        self.remote: SharedLimiter | None = None  # bound by `shared_ctx` when buckets live in Redis

    def install(
        self, app: web.Application, *, shared_redis_url: RedisTarget | str | None = None, timeout_s: float = 0.25
    ) -> None:
        app.middlewares.append(self.middleware)
        if self.limiter is not None:
            app.on_response_prepare.append(self._add_rate_headers)
            if shared_redis_url is not None:
                app.cleanup_ctx.append(functools.partial(self._shared_ctx, shared_redis_url, timeout_s))

    async def _shared_ctx(self, url: RedisTarget | str, timeout_s: float, app: web.Application) -> AsyncIterator[None]:
        assert self.limiter is not None
        redis = redisconn.connect(url, timeout_s=timeout_s, socket_timeout_s=timeout_s, decode_responses=False)
        self.remote = SharedLimiter(redis, self.limiter, timeout_s=timeout_s)
        try:
            yield
        finally:
            self.remote = None
            await redis.aclose()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = _route_path(request)
        family = family_of(path)
        try:
            client_id, client = self._who(request, path)
        except RouterError as exc:
            return error_response(exc, flavour_for(request, family))
        limiter = self.limiter
        if limiter is None or path == HEALTH_PATH:
            return await self._with_body_checks(request, handler, family, client)
        own = client.limit if client is not None else None
        remote = self.remote
        if remote is not None:
            mine, shared = await remote.admit(client_id, self.clock(), own)
        else:
            mine, shared = limiter.admit(client_id, self.clock(), own)
        refused = mine if mine is not None and not mine.allowed else shared
        if refused is not None and not refused.allowed:
            what = "global" if refused is shared else "client"
            return error_response(_too_many(refused, what), flavour_for(request, family))
        shown = mine or shared
        if shown is not None:
            request[_RATE] = shown
        if not limiter.enter(client_id, client.max_concurrent if client is not None else 0):
            err = ConcurrencyLimited(
                "too many requests in flight for this client; retry when one finishes", headers={"Retry-After": "1"}
            )
            return error_response(err, flavour_for(request, family))
        try:
            # A stream returns when it ends: the slot covers all of it (and a client that leaves ends it).
            return await self._with_body_checks(request, handler, family, client)
        finally:
            limiter.leave(client_id)

    def _who(self, request: web.Request, path: str) -> tuple[str, ClientKey | None]:
        """The client's bucket name and key; raises the refusal when its headers may not go on."""
        table = self.table
        if table is None:
            address = client_address(request.remote, request.headers.getall("X-Forwarded-For", ()), self.trusted)
            return f"ip:{address}", None
        verdict = authorize(request.headers, request.remote, path, table)
        if not verdict.allowed:
            log.info("refused %s %s from %s: %s", request.method, path, verdict.address, verdict.outcome.value)
            raise refusal(verdict.outcome)
        client = verdict.client
        if client is None:  # /internal/* by address or admin key
            return ("key:admin" if verdict.admin else f"ip:{verdict.address}"), None
        request[CLIENT_NAME] = client.name
        return f"{KEY_PREFIX}{client.name}", client

    async def _with_body_checks(
        self, request: web.Request, handler: Handler, family: Family, client: ClientKey | None
    ) -> web.StreamResponse:
        restricted = client is not None and bool(client.models)
        if restricted and request.method == "GET" and client is not None:
            return await _only_allowed_models(request, handler, client, family)
        if (restricted or self.inputs is not None) and request.method == "POST" and family is not Family.INTERNAL:
            try:
                await self._check_body(request, client, restricted)
            except RouterError as exc:
                return error_response(exc, flavour_for(request, family))
            except web.HTTPException as exc:  # the body was over the size limit while the gate read it
                return answer_error(request, exc)
        return await handler(request)

    async def _check_body(self, request: web.Request, client: ClientKey | None, restricted: bool) -> None:
        # aiohttp keeps the body it read: the proxy's own read returns it without reading the socket again.
        body = await request.read()
        model: str | None = None
        if self.inputs is not None:
            data = _parsed(body)
            if data is None:
                return  # not a JSON object: the proxy answers that 400 itself
            check_input(data, self.inputs)
            found = data.get("model")
            model = found if isinstance(found, str) else None
        elif restricted:
            model = sniff_model(body)
            if model is None:
                data = _parsed(body)
                found = data.get("model") if data is not None else None
                model = found if isinstance(found, str) else None
        if restricted and model is not None and client is not None and not client.allows_model(model):
            log.info("refused model %r to key %s", model, client.name)
            raise ModelForbidden(f"this API key may not use the model {model!r}", param="model")

    @staticmethod
    async def _add_rate_headers(request: web.Request, response: web.StreamResponse) -> None:
        taken = request.get(_RATE)
        if taken is not None:
            response.headers.update(rate_headers(taken))


async def _only_allowed_models(
    request: web.Request, handler: Handler, client: ClientKey, family: Family
) -> web.StreamResponse:
    """A listing as a restricted key may see it: only the models its globs allow (404 for a single other one)."""
    response = await handler(request)
    if (
        response.status != 200
        or not isinstance(response, web.Response)
        or response.content_type != "application/json"
        or not isinstance(response.body, bytes)
    ):
        return response
    shown = visible(json.loads(response.body), client.allows_model)
    if shown is HIDDEN:
        err = ModelHidden(f"model {request.match_info.get('model') or request.match_info.get('name')!r} not found")
        return error_response(err, flavour_for(request, family))
    response.body = json.dumps(shown).encode()
    return response


def _parsed(body: bytes) -> dict[str, Any] | None:
    """The body as the proxy parses it, or None when the proxy would refuse it (it answers that 400)."""
    try:
        return parse_body(body)[0]
    except RouterError:
        return None


def build_gate(settings: RouterSettings) -> Gate | None:
    """The gate these settings ask for, or None when access control and every limit are off (then no
    middleware is installed: the request path costs nothing more)."""
    inputs = InputLimits(settings.max_json_depth, settings.max_messages, settings.max_string_chars)
    if not settings.access_control and not settings.limits_on and not inputs.on:
        return None
    table = settings.key_table() if settings.access_control else None
    limiter = None
    if settings.limits_on:
        limiter = Limiter(
            Limit.of(settings.rate_limit_global_per_s, settings.rate_limit_global_burst),
            Limit.of(settings.rate_limit_per_s, settings.rate_limit_burst),
            settings.max_concurrent_per_client,
        )
    trusted = parse_networks(settings.trusted_proxies, "PIER_TRUSTED_PROXIES")
    return Gate(table, limiter, trusted, inputs if inputs.on else None)
