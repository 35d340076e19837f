"""The hot path: read the body, pick candidates from the in-memory routing table, walk them with failover.

Nothing here touches Redis: routing reads `StateCache.table` (swapped whole in the background). The body is
parsed once to find `model`, and forwarded as the client sent it unless an alias needs the name rewritten.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict

from services.router.affinity import Affinity
from services.router.anthropic_bridge import AnthropicBridge
from services.router.anthropic_check import check_messages
from services.router.circuit import Circuits
from services.router.decisions import Decisions
from services.router.errors import (
    REQUEST_ID_KEY,
    BodyTooLarge,
    CapacityExceeded,
    CircuitOpen,
    EngineUnavailable,
    Flavour,
    InvalidJSON,
    InvalidRequest,
    ModelNotFound,
    ModelRequired,
    RouteNotFound,
    RouterError,
    Unavailable,
    answer_error,
    check_header_size,
)
from services.router.exchange import Call, Exchanger, Failover
from services.router.headers import RequestIds, upstream_headers, with_endpoint_headers
from services.router.routing import Decision, RouteError
from services.router.runtime import Runtime
from services.router.settings import RouterSettings
from services.router.table import Candidate, Target
from services.router.telemetry import CURRENT, RequestTrace
from shared import jsontext
from shared.config import PierConfig
from shared.h1client import origin_of
from shared.jsontext import JSONTooDeep
from shared.names import normalise_model

if TYPE_CHECKING:
    from services.router.statecache import StateCache

log = logging.getLogger(__name__)

DMR_TYPE = "docker-model-runner"

# DMR's engine names (`/engines/{engine}/v1/...`); any other name is a 404, as on DMR.
ENGINES = frozenset({"llama.cpp", "vllm", "mlx", "sglang", "diffusers"})
_CONVERSATIONS = frozenset({"chat/completions", "responses"})  # the OpenAI operations a conversation uses


class Api(StrEnum):
    """What an inference route forwards to."""

    OPENAI = "openai"  # {api_prefix}/{op} or /engines/{engine}/v1/{op}
    ANTHROPIC = "anthropic"  # Messages: native passthrough or translation (services.router.anthropic_bridge)
    ANTHROPIC_COUNT = "anthropic_count_tokens"


_MODEL_KEY = b'"model"'
# `"model"` right after `{` or `,` (whitespace allowed), then `:` and a plain string (no escapes).
_MODEL_FIELD = re.compile(rb'[{,][ \t\r\n]*"model"[ \t\r\n]*:[ \t\r\n]*"([^"\\]{1,1024})"')


def sniff_model(body: bytes) -> str | None:
    """The body's `model` without parsing the JSON, or None when that is not certain (then parse it).

    In valid JSON a `"` not preceded by a backslash delimits a string, so the bytes `"model"` preceded by `{`
    or `,` and followed by `:` are an object key. When those bytes occur exactly once in the body (no nested
    `model` key, no string equal to "model") and hold a plain string, that is the model; the endpoint still
    validates the whole body (its 400s reach the client as JSON). Cost: one count and one regex search in C.
    """
    if body[:1] != b"{" or body.count(_MODEL_KEY) != 1:
        return None
    found = _MODEL_FIELD.search(body)
    if found is None:
        return None
    try:
        return found.group(1).decode("utf-8")
    except UnicodeDecodeError:
        return None


def parse_body(body: bytes) -> tuple[dict[str, Any], str | None]:
    """The JSON object and its `model` (None when absent); 400 for anything else."""
    if not body.strip():
        raise InvalidJSON("request body is empty; expected a JSON object")
    try:
        data = jsontext.loads(body.decode("utf-8-sig"))  # str: json skips its encoding detection
    except UnicodeDecodeError:
        raise InvalidJSON("request body is not valid UTF-8") from None
    except JSONTooDeep:
        raise InvalidJSON("request body is JSON nested too deeply") from None
    except ValueError as exc:
        raise InvalidJSON(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest("model must be a string", param="model")
    return data, model


def _may_be_loading(target: Target, model: str) -> bool:
    """Could `target` be loading `model` lazily right now? Only DMR loads on demand, and a model its
    /engines/ps reports loaded is not loading. (Then a client leaving must not close the upstream request.)"""
    return target.type == DMR_TYPE and model not in target.loaded


class Proxy:
    """Routes and forwards inference requests. Its resources are bound by the app's cleanup contexts."""

    def __init__(
        self,
        settings: RouterSettings,
        config: PierConfig,
        runtime: Runtime,
        circuits: Circuits,
        ids: RequestIds,
    ) -> None:
        self._settings = settings
        self._max_body_bytes = settings.max_body_bytes
        self._max_header_bytes = settings.max_header_bytes
        self._runtime = runtime
        self._circuits = circuits
        self._ids = ids
        self._decisions = Decisions(config, runtime, circuits)
        self._anthropic = AnthropicBridge()
        self._affinity = Affinity(settings, runtime) if settings.affinity else None
        self._state: StateCache | None = None
        self._exchanger: Exchanger | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._traced = False  # telemetry on: the app wraps each route in a span and stores a RequestTrace

    def bind_telemetry(self, traced: bool) -> None:
        self._traced = traced

    def bind_state(self, state: StateCache | None) -> None:
        self._state = state

    def bind_exchanger(self, exchanger: Exchanger | None) -> None:
        """Called from the app's start-up (in its event loop) and shutdown."""
        self._exchanger = exchanger
        self._loop = asyncio.get_running_loop() if exchanger is not None else None

    async def forward(
        self, request: web.Request, api: Api, op: str, engine_in_path: bool = False
    ) -> web.StreamResponse:
        """The handler of every inference route: route, then try the candidates in order until one answers.

        Failover happens only before the client got a byte. This coroutine is also the route's error boundary
        (JSON errors, never a traceback) and walks the candidates itself: each frame between aiohttp and the
        upstream call is paid again on every resumption of the request, so the chain is kept short.
        """
        try:
            loop, exchanger, state = self._loop, self._exchanger, self._state
            if loop is None or exchanger is None or state is None:
                raise RuntimeError("the proxy is used outside the app's lifetime")
            check_header_size(request, self._max_header_bytes)
            started = loop.time()
            request_id = self._ids.for_request(request.headers.get("X-Request-ID"))
            request[REQUEST_ID_KEY] = request_id
            engine: str | None = None
            if engine_in_path:
                engine = request.match_info["engine"].lower()
                if engine not in ENGINES:
                    raise RouteNotFound(f"unknown engine {engine!r}; DMR's engines are {', '.join(sorted(ENGINES))}")
            length = request.content_length
            if length is not None and length > self._max_body_bytes:
                raise BodyTooLarge(f"request body of {length} bytes is over the limit of {self._max_body_bytes}")
            body = await request.read()
            data: dict[str, Any] | None = None
            anthropic = api is not Api.OPENAI
            if anthropic:
                # Validated whole (a 400 naming the field, in both modes); translation needs the parsed body.
                data, model = parse_body(body)
                check_messages(data, count_tokens=api is Api.ANTHROPIC_COUNT)
            else:
                model = sniff_model(body)
                if model is None:
                    data, model = parse_body(body)
            traced: RequestTrace | None = CURRENT.get() if self._traced else None
            if traced is not None:
                body, data = traced.request_in(anthropic, op, body, data, model)
            decision = self._decisions.decide(state.table, model, engine, anthropic)
            if decision.error is not None or decision.all_full:
                decision = await self._wait_for_room(loop, decision, model, engine, anthropic)

            flavour = Flavour.ANTHROPIC if anthropic else Flavour.OPENAI
            candidates, reason = decision.candidates, decision.reason
            if self._affinity is not None and len(candidates) > 1 and (api is Api.ANTHROPIC or op in _CONVERSATIONS):
                placed = self._affinity.place(request.headers, body, data, decision, anthropic)
                if placed is not None:
                    candidates, reason = placed.candidates, f"{reason};affinity={placed.mark}"
            call = Call(request, flavour, request_id, started, reason, model or "")
            runtime, circuits = self._runtime, self._circuits
            query = request.rel_url.raw_query_string
            base_headers: CIMultiDict[str] | None = None
            last: RouterError | None = None
            refused: list[str] = []
            # Candidates skipped because they were full are tried again once a slot frees (bounded by the capacity
            # wait): after a fail-over the request has still not started, and a short wait beats an error.
            pending: Sequence[Candidate] = candidates
            wait_until = loop.time() + self._settings.capacity_wait_s
            while pending:
                full: list[Candidate] = []
                for candidate in pending:
                    target = candidate.target
                    name = target.name
                    if not runtime.has_room(name, target.max_concurrent):
                        full.append(candidate)
                        continue
                    if not circuits.allow(name):
                        refused.append(name)
                        continue
                    upstream_model = candidate.upstream_model
                    if upstream_model is not None and upstream_model != call.model:
                        if data is None:
                            data = parse_body(body)[0]  # an alias: the one case where the body is rewritten
                        send = json.dumps({**data, "model": upstream_model}).encode()
                        sent_model = normalise_model(upstream_model)
                    else:
                        send = body
                        sent_model = decision.model or ""
                    if base_headers is None:
                        base_headers = upstream_headers(request.headers, request_id)
                    headers = with_endpoint_headers(base_headers, target.headers)
                    runtime.acquire(name)
                    attempt = traced.attempt_start(call, target, sent_model, headers) if traced is not None else None
                    try:
                        if anthropic:
                            assert data is not None
                            count = api is Api.ANTHROPIC_COUNT
                            legs = self._anthropic.legs(target, count, data, send, upstream_model or model or "", query)
                            response = await self._anthropic.exchange(
                                exchanger,
                                call,
                                target,
                                headers,
                                legs,
                                sent_model,
                                shield_load=_may_be_loading(target, sent_model),
                            )
                        else:
                            path = _path(target, op, engine)
                            if query:
                                path = f"{path}?{query}"
                            response = await exchanger.exchange(
                                call,
                                target,
                                origin_of(target.url),
                                path,
                                headers,
                                send,
                                sent_model,
                                shield_load=_may_be_loading(target, sent_model),
                            )
                        if attempt is not None:
                            attempt.answered(response)
                        return response
                    except Failover as exc:
                        if attempt is not None:
                            attempt.failed(exc.error)
                        last = exc.error
                        runtime.count("failovers")
                        log.warning("endpoint %s failed before answering (%s): %s", name, request_id, exc.error.message)
                        if exc.mark_down:
                            state.mark_down(name, exc.error.message)
                    finally:
                        runtime.release(name)
                        circuits.settle(name)
                        if attempt is not None:
                            attempt.end(request)
                remaining = wait_until - loop.time()
                if not full or remaining <= 0 or not await runtime.wait_for_slot(remaining):
                    break
                pending = full
            raise self._exhausted(call, decision, last, refused)
        except Exception as exc:
            return answer_error(request, exc)

    async def _wait_for_room(
        self,
        loop: asyncio.AbstractEventLoop,
        decision: Decision,
        model: str | None,
        engine: str | None,
        anthropic: bool,
    ) -> Decision:
        """A routing error, or every candidate full: wait (bounded) for a slot and decide again, or raise."""
        deadline = loop.time() + self._settings.capacity_wait_s
        while True:
            if decision.error is not None:
                raise self._route_error(decision, model)
            if not decision.all_full:
                return decision
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self._runtime.wait_for_slot(remaining):
                raise CapacityExceeded(
                    f"every endpoint that serves {model} is at its concurrency limit", retry_after_s=1
                )
            if self._state is None:
                raise RuntimeError("the proxy is used outside the app's lifetime")
            decision = self._decisions.decide(self._state.table, model, engine, anthropic)

    def _route_error(self, decision: Decision, model: str | None) -> RouterError:
        err = self._route_error_of(decision, model)
        err.headers = {**err.headers, "X-Pier-Route": decision.reason}
        return err

    def _route_error_of(self, decision: Decision, model: str | None) -> RouterError:
        retry_after_s = decision.retry_after_s or self._settings.retry_after_s
        error = decision.error
        if error is RouteError.NO_MODEL:
            return ModelRequired("model is required", param="model")
        if error is RouteError.UNKNOWN_MODEL:
            return ModelNotFound(model or "", decision.available_models)
        if error is RouteError.ENGINE_UNAVAILABLE:
            return EngineUnavailable(
                f"no endpoint that serves {model} runs the engine it was asked for", retry_after_s=retry_after_s
            )
        return Unavailable(f"no endpoint that serves {model} is available now", retry_after_s=retry_after_s)

    def _exhausted(self, call: Call, decision: Decision, last: RouterError | None, refused: list[str]) -> RouterError:
        """Why no candidate answered: the last endpoint's failure, open circuits, or capacity."""
        if last is not None:
            last.headers = {**last.headers, "X-Pier-Route": call.route, "X-Pier-Attempts": str(call.attempts)}
            return last
        if refused:
            wait_s = min(self._circuits.retry_after_s(name) for name in refused)
            return CircuitOpen(
                f"the circuit of every endpoint that serves {decision.model} is open ({', '.join(refused)})",
                retry_after_s=max(1, math.ceil(wait_s)),
            )
        return CapacityExceeded(
            f"every endpoint that serves {decision.model} is at its concurrency limit", retry_after_s=1
        )


def _path(target: Target, op: str, engine: str | None) -> str:
    if engine is not None and target.engine_paths:
        return f"/engines/{engine}/v1/{op}"
    return f"{target.api_prefix}/{op}"
