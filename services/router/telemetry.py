"""The router's traces and metrics, called from the request path at its named points.

- request in / request end: `RouterTelemetry.wrap` puts a SERVER span (`{method} {route template}`, HTTP
  attributes, the caller's `traceparent` honoured) around every route, and records `http.server.request.duration`;
- body read: `RequestTrace.request_in` notes the GenAI request attributes and, for a stream the client did not
  ask usage for, asks the endpoint for it (the relay strips that chunk again: `usage.ResponseWatch`);
- attempt start: `RequestTrace.attempt_start` opens a CLIENT span (`{operation} {model}`) as a child of the
  SERVER span (so failover attempts are siblings), puts its `traceparent` on the upstream request, and hands
  the relay a `ResponseWatch` (first byte, usage, finish reasons);
- attempt end: `Attempt.end` closes it after the last streamed byte, with `error.type` on failure, and records
  the GenAI metrics.

Built only when telemetry is on; with it off the request path checks one attribute and does nothing else.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind

from services.router.circuit import Circuits
from services.router.errors import RouterError
from services.router.runtime import Runtime
from services.router.usage import ResponseWatch, needs_usage, with_usage
from shared import jsontext
from shared.fastmetrics import Attrs
from shared.leanspan import (
    ACTIVE,
    Inbound,
    LeanSpan,
    LeanTracer,
    new_trace_id,
    parse_traceparent,
    unsampled_traceparent,
)
from shared.telemetry import HTTP_BUCKETS, Telemetry

if TYPE_CHECKING:
    from services.router.exchange import Call
    from services.router.statecache import StateCache
    from services.router.table import Target

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_OPERATIONS = {
    "chat/completions": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
    "responses": "chat",
    "messages": "chat",
    "messages/count_tokens": "count_tokens",
}
_REQUEST_PARAMS = (
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("top_k", "gen_ai.request.top_k"),
    ("frequency_penalty", "gen_ai.request.frequency_penalty"),
    ("presence_penalty", "gen_ai.request.presence_penalty"),
    ("seed", "gen_ai.request.seed"),
)
_STATUS_VALUE = {"healthy": 1.0, "busy": 0.75, "degraded": 0.5, "unknown": 0.25}
# Histogram buckets for GenAI durations (the semantic conventions' advice), in seconds.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)


class RouterTelemetry:
    """The router's instruments, built once per process from `Telemetry`."""

    def __init__(
        self,
        telemetry: Telemetry,
        runtime: Runtime,
        circuits: Circuits,
        state: Callable[[], StateCache | None],
        *,
        port: int = 0,
    ) -> None:
        self.telemetry = telemetry
        self.port = port  # the router's listening port (server.port on SERVER spans)
        # The router's spans are Pier's own lean records (`shared.leanspan`), handed to the provider's processors.
        provider = telemetry.tracer_provider
        self.lean = LeanTracer(provider, "pier.router") if provider is not None else None
        self.capture_content = telemetry.capture_content
        # No metric reader (OTEL_METRICS_EXPORTER=none, no Prometheus): an unsampled request needs nothing read
        # from its answer and no measurement taken, only its trace context sent on.
        self.metrics_on = bool(telemetry.metric_readers)
        self._runtime = runtime
        self._circuits = circuits
        self._state = state
        self._clock = time.perf_counter
        # Per-request measurements go to pre-aggregated instruments (shared.fastmetrics: ~1 µs instead of the
        # SDK's 25-50 µs each); what is read at collection time stays on the SDK's observable instruments.
        fast = telemetry.fast_metrics("pier.router")
        self.attribute_sets: dict[tuple[str, str, str, str, str, str | None], _AttributeSets] = {}
        self.http_duration = fast.histogram(
            "http.server.request.duration", "s", "Duration of HTTP server requests.", HTTP_BUCKETS
        )
        self.op_duration = fast.histogram(
            "gen_ai.client.operation.duration",
            "s",
            "GenAI operation duration (one upstream attempt).",
            DURATION_BUCKETS,
        )
        self.token_usage = fast.histogram(
            "gen_ai.client.token.usage", "{token}", "Number of input and output tokens used.", TOKEN_BUCKETS
        )
        self.ttfc = fast.histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            "s",
            "Time to the first chunk of a streamed answer.",
            DURATION_BUCKETS,
        )
        self.attempts = fast.counter(
            "pier.router.attempts", "{attempt}", "Upstream attempts by endpoint, route reason and outcome."
        )
        self.failovers = fast.counter("pier.router.failovers", "{failover}", "Attempts that failed before answering.")
        meter = telemetry.meter("pier.router")
        meter.create_observable_up_down_counter(
            "pier.router.inflight", [self._inflight], unit="{request}", description="Requests in flight per endpoint."
        )
        meter.create_observable_counter(
            "pier.router.circuit.openings", [self._openings], unit="{opening}", description="Circuit-breaker openings."
        )
        meter.create_observable_gauge(
            "pier.endpoint.status",
            [self._status],
            description="Endpoint status seen by the router: 1 healthy, 0.75 busy, 0.5 degraded, 0.25 unknown, 0 down.",
        )
        meter.create_observable_gauge(
            "pier.endpoint.model.loaded",
            [self._loaded],
            description="1 when the model is loaded (warm) on the endpoint, 0 when pulled but not loaded.",
        )

    # ---- request in / request end ------------------------------------------------------------------

    def wrap(self, handler: Handler) -> Handler:
        """`handler` inside a SERVER span and the HTTP duration metric."""
        lean, clock, duration, port = self.lean, self._clock, self.http_duration, self.port
        metrics_on = self.metrics_on
        # Each wrapped handler serves one route: its template is read once, and the duration metric's attribute
        # sets are built once per method and status.
        template: list[str] = []
        metric_attrs: dict[tuple[str, int], Attrs] = {}

        async def traced(request: web.Request) -> web.StreamResponse:
            if template:
                route = template[0]
            else:
                resource = request.match_info.route.resource
                route = resource.canonical if resource is not None else "unmatched"
                template.append(route)
            method = request.method
            started = clock()
            span: LeanSpan | None = None
            inbound: Inbound | None = None
            trace_id = 0
            if lean is not None:
                # The caller's trace continues through Pier; without a (valid) traceparent Pier starts one.
                headers = request.headers
                caller = headers.get("traceparent")
                inbound = parse_traceparent(caller, headers.get("tracestate")) if caller is not None else None
                trace_id = inbound.trace_id if inbound is not None else new_trace_id()
                if lean.sampled(trace_id, inbound):
                    span = lean.start(
                        f"{method} {route}",
                        SpanKind.SERVER,
                        trace_id,
                        inbound,
                        {
                            "http.request.method": method,
                            "http.route": route,
                            "url.path": request.path,
                            "url.scheme": "http",
                            "server.port": port,
                        },
                    )
            current = CURRENT.set(RequestTrace(self, span, trace_id, inbound))
            token = ACTIVE.set(span) if span is not None else None
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            except asyncio.CancelledError:
                status = 499  # the client left: not an error of the router's
                raise
            finally:
                CURRENT.reset(current)
                if token is not None:
                    ACTIVE.reset(token)
                if span is not None:
                    attributes = span.attributes
                    if status == 499:
                        attributes["pier.client.cancelled"] = True
                    else:
                        attributes["http.response.status_code"] = status
                    failed = status >= 500 and status != 499
                    if failed:
                        attributes["error.type"] = str(status)
                    span.end(error=failed)
                if metrics_on:
                    attrs = metric_attrs.get((method, status))
                    if attrs is None:
                        if len(metric_attrs) >= _ATTRIBUTE_SETS:  # methods are the client's: bounded all the same
                            metric_attrs.clear()
                        attrs = metric_attrs[method, status] = (
                            ("http.request.method", method),
                            ("http.route", route),
                            ("http.response.status_code", status),
                        )
                    duration.record(clock() - started, attrs)

        return traced

    # ---- observed state ------------------------------------------------------------------------------

    def _targets(self) -> Iterable[Target]:
        state = self._state()
        return state.table.targets.values() if state is not None else ()

    def _inflight(self, options: CallbackOptions) -> list[Observation]:
        counts = self._runtime.inflight
        return [Observation(counts.get(t.name, 0), {"pier.endpoint": t.name}) for t in self._targets()]

    def _openings(self, options: CallbackOptions) -> list[Observation]:
        return [
            Observation(int(self._circuits.describe(t.name).get("times_opened", 0)), {"pier.endpoint": t.name})
            for t in self._targets()
        ]

    def _status(self, options: CallbackOptions) -> list[Observation]:
        return [
            Observation(
                _STATUS_VALUE.get(t.status.value, 0.0), {"pier.endpoint": t.name, "pier.status": t.status.value}
            )
            for t in self._targets()
        ]

    def _loaded(self, options: CallbackOptions) -> list[Observation]:
        out: list[Observation] = []
        for target in self._targets():
            for model in sorted(target.models):
                warm = 1 if model in target.loaded else 0
                out.append(Observation(warm, {"pier.endpoint": target.name, "gen_ai.request.model": model}))
        return out


class RequestTrace:
    """One request's SERVER span and what its attempts share."""

    __slots__ = (
        "_owner",
        "inbound",
        "operation",
        "params",
        "provider",
        "request_model",
        "span",
        "strip_usage",
        "trace_id",
    )

    def __init__(self, owner: RouterTelemetry, span: LeanSpan | None, trace_id: int, inbound: Inbound | None) -> None:
        self._owner = owner
        self.span = span  # None: not sampled (or tracing off): no spans, only the trace context goes on
        self.trace_id = trace_id  # 0 when tracing is off
        self.inbound = inbound
        self.operation = "chat"
        self.provider = "openai"
        self.request_model = ""
        self.params: dict[str, Any] = {}
        self.strip_usage = False

    def request_in(
        self, anthropic: bool, op: str, body: bytes, data: dict[str, Any] | None, model: str | None
    ) -> tuple[bytes, dict[str, Any] | None]:
        """Note the GenAI request; returns the body to send (with usage asked for when Pier needs it)."""
        self.operation = _OPERATIONS.get(op, op)
        self.provider = "anthropic" if anthropic else "openai"
        self.request_model = model or ""
        recording = self.span is not None
        if not recording and not self._owner.metrics_on:
            return body, data  # nothing will read the answer's usage: not asked for
        if data is None:
            if not recording and b'"stream"' not in body:
                return body, data  # not sampled and not a stream: nothing here needs the parsed body
            try:
                parsed = jsontext.loads(body)
            except ValueError:
                return body, data
            if not isinstance(parsed, dict):
                return body, data
            data = parsed
        if recording:
            self.params = self._params(data)
        if needs_usage(op, data):
            self.strip_usage = True
            data = with_usage(data)
            body = json.dumps(data).encode()
        return body, data

    def _params(self, data: dict[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for key, attribute in _REQUEST_PARAMS:
            value = data.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                params[attribute] = value
        stop = data.get("stop", data.get("stop_sequences"))
        if isinstance(stop, str):
            params["gen_ai.request.stop_sequences"] = (stop,)
        elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
            params["gen_ai.request.stop_sequences"] = tuple(stop)
        if isinstance(data.get("stream"), bool):
            params["gen_ai.request.stream"] = data["stream"]
        if self._owner.capture_content:
            for key in ("messages", "prompt", "input", "system"):
                if key in data:
                    params[f"gen_ai.input.{key}"] = json.dumps(data[key])
        return params

    def attempt_start(self, call: Call, target: Target, model: str, headers: CIMultiDict[str]) -> Attempt | None:
        """A CLIENT span for one endpoint, sibling of the other attempts; its context goes to the endpoint.
        None when there is nothing to record (not sampled, no metrics): only the trace context goes on."""
        owner = self._owner
        if self.span is None and not owner.metrics_on:
            self._send_unsampled(headers)
            return None
        # Unsampled: only the token counts are needed (metrics), so a whole JSON answer is not parsed whole.
        watch = ResponseWatch(strip_usage=self.strip_usage, clock=owner._clock, usage_only=self.span is None)
        call.watch = watch
        name = model or self.request_model
        span = self.span
        if span is None:
            self._send_unsampled(headers)  # not sampled: no CLIENT span, only the metrics
            return Attempt(self, None, watch, target.name, name, call.route, owner._clock())
        host, origin_port = _origin(target.url)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": self.operation,
            "gen_ai.provider.name": self.provider,
            "gen_ai.request.model": model or self.request_model,
            "server.address": host,
            "server.port": origin_port,
            "pier.endpoint": target.name,
            "pier.route.reason": call.route,
            "pier.route.warm": model in target.loaded,
            "pier.attempt": call.attempts + 1,
            **self.params,
        }
        attempt_span = span.child(f"{self.operation} {name}", SpanKind.CLIENT, attributes)
        headers["traceparent"] = attempt_span.traceparent
        if attempt_span.tracestate:
            headers["tracestate"] = attempt_span.tracestate
        return Attempt(self, attempt_span, watch, target.name, name, call.route, owner._clock())

    def _send_unsampled(self, headers: CIMultiDict[str]) -> None:
        """The endpoint still gets the trace context, flagged not sampled (none when tracing is off)."""
        if self.trace_id:
            headers["traceparent"] = unsampled_traceparent(self.trace_id)
            if self.inbound is not None and self.inbound.tracestate:
                headers["tracestate"] = self.inbound.tracestate


# The request's RequestTrace for the proxy's hooks, set by `RouterTelemetry.wrap` in the request's own task (a
# context variable: the request mapping's Python-level get and set cost more than the hooks they serve).
CURRENT: ContextVar[RequestTrace | None] = ContextVar("pier_request_trace", default=None)


class Attempt:
    """One upstream attempt's CLIENT span; ended once, after the last byte reached the client."""

    __slots__ = ("_trace", "endpoint", "error_type", "model", "response", "route", "span", "started", "watch")

    def __init__(
        self,
        trace_: RequestTrace,
        span: LeanSpan | None,
        watch: ResponseWatch,
        endpoint: str,
        model: str,
        route: str,
        at: float,
    ) -> None:
        self._trace = trace_
        self.span = span
        self.watch = watch
        self.endpoint = endpoint
        self.model = model
        self.route = route
        self.started = at
        self.response: web.StreamResponse | None = None
        self.error_type: str | None = None

    def answered(self, response: web.StreamResponse) -> None:
        self.response = response

    def failed(self, error: RouterError) -> None:
        self.error_type = error.code
        self._trace._owner.failovers.add(1, (("pier.endpoint", self.endpoint), ("error.type", error.code)))

    def end(self, request: web.Request) -> None:
        owner = self._trace._owner
        answer = self.watch.answer
        now = owner._clock()
        ttfc: float | None = None
        if answer.stream and answer.first_chunk_at is not None:
            ttfc = answer.first_chunk_at - self.started
        error_type = self.error_type
        response = self.response
        if response is not None and response.status >= 400 and error_type is None:
            error_type = str(response.status)
        if answer.cut is not None:
            error_type = answer.cut
        if self.span is not None:
            self._finish_span(self.span, request, ttfc, error_type)
        if owner.metrics_on:
            self._record(now, ttfc, error_type)

    def _finish_span(self, span: LeanSpan, request: web.Request, ttfc: float | None, error_type: str | None) -> None:
        attrs = span.attributes
        answer = self.watch.answer
        if answer.response_id is not None:
            attrs["gen_ai.response.id"] = answer.response_id
        if answer.response_model is not None:
            attrs["gen_ai.response.model"] = answer.response_model
        if answer.finish_reasons:
            attrs["gen_ai.response.finish_reasons"] = tuple(answer.finish_reasons)
        if answer.input_tokens is not None:
            attrs["gen_ai.usage.input_tokens"] = answer.input_tokens
        if answer.output_tokens is not None:
            attrs["gen_ai.usage.output_tokens"] = answer.output_tokens
        if ttfc is not None:
            attrs["gen_ai.response.time_to_first_chunk"] = ttfc
        response = self.response
        if response is not None:
            attrs["http.response.status_code"] = response.status
        transport = request.transport
        if error_type is None and (response is None or transport is None or transport.is_closing()):
            # The client left (before or during the answer): not the endpoint's failure, and not an error.
            attrs["pier.client.cancelled"] = True
        if error_type is not None:
            attrs["error.type"] = error_type
        span.end(error=error_type is not None)

    def _record(self, now: float, ttfc: float | None, error_type: str | None) -> None:
        owner, answer, trace_ = self._trace._owner, self.watch.answer, self._trace
        key = (trace_.operation, trace_.provider, self.model, self.endpoint, self.route, error_type)
        sets = owner.attribute_sets.get(key)
        if sets is None:
            sets = _AttributeSets(*key)
            if len(owner.attribute_sets) >= _ATTRIBUTE_SETS:
                owner.attribute_sets.clear()
            owner.attribute_sets[key] = sets
        owner.attempts.add(1, sets.attempt)
        owner.op_duration.record(now - self.started, sets.duration)
        if ttfc is not None:
            owner.ttfc.record(ttfc, sets.metric)
        if answer.input_tokens is not None:
            owner.token_usage.record(answer.input_tokens, sets.input_tokens)
        if answer.output_tokens is not None:
            owner.token_usage.record(answer.output_tokens, sets.output_tokens)


_ATTRIBUTE_SETS = 4096  # distinct (operation, provider, model, endpoint, route, outcome): few; bounded all the same


class _AttributeSets:
    """The metric attributes of one kind of attempt, built once (the measurements then only look them up)."""

    __slots__ = ("attempt", "duration", "input_tokens", "metric", "output_tokens")

    def __init__(
        self, operation: str, provider: str, model: str, endpoint: str, route: str, error_type: str | None
    ) -> None:
        metric: Attrs = (
            ("gen_ai.operation.name", operation),
            ("gen_ai.provider.name", provider),
            ("gen_ai.request.model", model),
            ("pier.endpoint", endpoint),
        )
        outcome: Attrs = (("error.type", error_type),) if error_type else ()
        self.metric = metric
        self.attempt: Attrs = (*metric, ("pier.route", _reason(route)), *outcome)
        self.duration: Attrs = (*metric, *outcome)
        self.input_tokens: Attrs = (*metric, ("gen_ai.token.type", "input"))
        self.output_tokens: Attrs = (*metric, ("gen_ai.token.type", "output"))


def _reason(route: str) -> str:
    """The route reason's kind ("priority;tier=95;candidates=2" -> "priority"): low cardinality."""
    return route.split(";", 1)[0]


@functools.lru_cache(maxsize=1024)
def _origin(url: str) -> tuple[str, int]:
    """`server.address` and `server.port` of an endpoint URL (few distinct URLs: cached)."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def prometheus_handler(telemetry: Telemetry | None) -> Handler:
    """`GET /internal/metrics`: the MeterProvider's metrics in Prometheus text format (the OTel Prometheus
    exporter's registry), or a JSON 404 that says how to turn it on."""
    registry = telemetry.prometheus_registry if telemetry is not None else None

    async def metrics(request: web.Request) -> web.StreamResponse:
        if registry is None:
            raise MetricsOff("Prometheus metrics are off; set PIER_PROMETHEUS_METRICS=true to serve them here")
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = generate_latest(registry)  # type: ignore[arg-type]
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    return metrics


class MetricsOff(RouterError):
    status = 404
    type = "not_found_error"
    code = "metrics_off"
