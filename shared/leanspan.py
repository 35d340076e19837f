"""Pier's own span records for a hot request path: the OpenTelemetry SDK's spans without their layers.

Why: with every request traced, the SDK's spans cost more than the router's whole request (the sampler call,
context objects attached and detached, every attribute validated and copied into `BoundedAttributes` under a
lock, the propagator's parse and format). The router builds its attributes itself (names and value types fixed
in code), so a span here is a plain record: ids drawn like the SDK's `RandomIdGenerator`, attributes in a dict,
and one `ReadableSpan` built when it ends and handed to the provider's span processors (the batch processor and
the OTLP exporter in production, an in-memory exporter in tests). What they receive is what the SDK's spans
would give them; the processors' `on_start` is not called (the SDK's batch and simple processors do nothing
there).

Sampling follows the provider's sampler: the standard ones (`always_on/off`, `traceidratio`, their
`parentbased_` forms) are decided inline from the trace id and the caller's flags, any other one is asked.
An unsampled request makes no span at all; only its `traceparent` travels on (`unsampled_traceparent`).

While a request's span is current (`ACTIVE`), `shared.tracecontext.current_traceparent` and the JSON log lines
name it, as they do for the SDK's current span.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, StaticSampler, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from shared.tracecontext import ACTIVE

__all__ = ["ACTIVE", "Inbound", "LeanSpan", "LeanTracer", "new_trace_id", "parse_traceparent", "unsampled_traceparent"]

# The W3C header as the SDK's propagator reads it (lower-case hex, a future version may append fields).
_TRACEPARENT = re.compile(r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$")
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_ERROR = Status(StatusCode.ERROR)
_UNSET = Status(StatusCode.UNSET)
_RATIO_MASK = TraceIdRatioBased.TRACE_ID_LIMIT
_bits = random.getrandbits


class Inbound:
    """A caller's valid `traceparent` (and `tracestate`, kept as sent)."""

    __slots__ = ("sampled", "span_id", "trace_id", "tracestate")

    def __init__(self, trace_id: int, span_id: int, sampled: bool, tracestate: str | None) -> None:
        self.trace_id, self.span_id, self.sampled, self.tracestate = trace_id, span_id, sampled, tracestate

    def context(self) -> SpanContext:
        state = TraceState.from_header([self.tracestate]) if self.tracestate else None
        return SpanContext(self.trace_id, self.span_id, True, TraceFlags(int(self.sampled)), state)


def parse_traceparent(value: str | None, tracestate: str | None = None) -> Inbound | None:
    """The caller's trace context, or None when `value` is missing or not a valid W3C `traceparent`."""
    if not value:
        return None
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_hex, span_hex, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return Inbound(trace_id, span_id, bool(int(flags, 16) & 1), tracestate)


def new_trace_id() -> int:
    trace_id = _bits(128)
    while not trace_id:
        trace_id = _bits(128)
    return trace_id


def new_span_id() -> int:
    span_id = _bits(64)
    while not span_id:
        span_id = _bits(64)
    return span_id


def unsampled_traceparent(trace_id: int) -> str:
    """What an endpoint receives from an unsampled request: the trace goes on, flagged not sampled."""
    return f"00-{trace_id:032x}-{new_span_id():016x}-00"


class LeanSpan:
    """One sampled span being recorded; `end` hands it to the provider's processors (once).

    The parent is kept as what it is (the caller's `Inbound`, or the local parent `LeanSpan`), not as a
    `SpanContext`: the OTLP encoder needs only its span id, and a processor that takes lean records
    (`LeanTracer`) never needs the SDK's objects at all."""

    __slots__ = (
        "attributes",
        "end_ns",
        "error",
        "inbound",
        "kind",
        "name",
        "parent_span",
        "span_id",
        "start_ns",
        "trace_id",
        "tracer",
        "tracestate",
    )

    def __init__(
        self,
        tracer: LeanTracer,
        name: str,
        kind: SpanKind,
        trace_id: int,
        inbound: Inbound | None,
        parent_span: LeanSpan | None,
        attributes: dict[str, Any],
        tracestate: str | None,
    ) -> None:
        self.tracer = tracer
        self.name = name
        self.kind = kind
        self.trace_id = trace_id
        self.span_id = new_span_id()
        self.inbound = inbound  # a remote parent (the caller's traceparent)
        self.parent_span = parent_span  # a local parent
        self.attributes = attributes
        self.tracestate = tracestate
        self.start_ns = time.time_ns()
        self.end_ns = 0
        self.error = False

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-01"

    @property
    def parent_id(self) -> int:
        """The parent's span id (0: a root span)."""
        if self.parent_span is not None:
            return self.parent_span.span_id
        return self.inbound.span_id if self.inbound is not None else 0

    def context(self, *, remote: bool = False) -> SpanContext:
        state = TraceState.from_header([self.tracestate]) if self.tracestate else None
        return SpanContext(self.trace_id, self.span_id, remote, _SAMPLED, state)

    @property
    def parent(self) -> SpanContext | None:
        if self.parent_span is not None:
            return self.parent_span.context()
        return self.inbound.context() if self.inbound is not None else None

    def child(self, name: str, kind: SpanKind, attributes: dict[str, Any]) -> LeanSpan:
        """A span inside this one (same trace, sampled with it: the parent-based rule for a local parent)."""
        return LeanSpan(self.tracer, name, kind, self.trace_id, None, self, attributes, self.tracestate)

    def end(self, *, error: bool = False) -> None:
        self.end_ns = time.time_ns()
        self.error = error
        self.tracer.finish(self)

    def readable(self) -> ReadableSpan:
        """The SDK's span for this record (for processors and exporters that take only those)."""
        return ReadableSpan(
            self.name,
            self.context(),
            self.parent,
            self.tracer.resource,
            self.attributes,
            (),
            (),
            self.kind,
            None,
            _ERROR if self.error else _UNSET,
            self.start_ns,
            self.end_ns,
            self.tracer.scope,
        )


Decide = Callable[[int, Inbound | None], bool]


class LeanTracer:
    """Starts `LeanSpan`s for one instrumentation scope of a `TracerProvider`, sampled by its sampler."""

    def __init__(self, provider: TracerProvider, scope: str) -> None:
        # The provider's processors, as its own spans reach them (the SDK keeps them in this attribute; there is
        # no public accessor).
        on_end: Callable[[ReadableSpan], None] = provider._active_span_processor.on_end
        self.resource = provider.resource
        self.scope = InstrumentationScope(scope)
        self._decide = _decider(provider.sampler)
        # The usual case, the provider's only processor is Pier's batch processor: the record itself is queued
        # (no SDK span objects built on the request path; the encoder reads the record). Any other processor (an
        # in-memory exporter in tests, a user's own) gets the SDK's `ReadableSpan`.
        processors: tuple[Any, ...] = tuple(getattr(provider._active_span_processor, "_span_processors", ()))
        sink = processors[0] if len(processors) == 1 else None
        if sink is not None and hasattr(sink, "on_end_lean"):
            self.finish: Callable[[LeanSpan], None] = sink.on_end_lean
        else:
            self.finish = lambda span: on_end(span.readable())

    def sampled(self, trace_id: int, inbound: Inbound | None) -> bool:
        return self._decide(trace_id, inbound)

    def start(
        self, name: str, kind: SpanKind, trace_id: int, inbound: Inbound | None, attributes: dict[str, Any]
    ) -> LeanSpan:
        """A sampled span: a root of `trace_id`, or the remote caller's child when `inbound` is given."""
        tracestate = inbound.tracestate if inbound is not None else None
        return LeanSpan(self, name, kind, trace_id, inbound, None, attributes, tracestate)


def _decider(sampler: Sampler) -> Decide:
    if isinstance(sampler, ParentBased):
        root = _static_or_ratio(sampler._root)
        sampled_parent = _static_or_ratio(sampler._remote_parent_sampled)
        unsampled_parent = _static_or_ratio(sampler._remote_parent_not_sampled)
        if root is not None and sampled_parent is not None and unsampled_parent is not None:
            return lambda trace_id, inbound: (
                root(trace_id)
                if inbound is None
                else (sampled_parent if inbound.sampled else unsampled_parent)(trace_id)
            )
    else:
        own = _static_or_ratio(sampler)
        if own is not None:
            return lambda trace_id, inbound: own(trace_id)
    return lambda trace_id, inbound: _ask(sampler, trace_id, inbound)


def _static_or_ratio(sampler: Sampler) -> Callable[[int], bool] | None:
    if isinstance(sampler, StaticSampler):
        sampled = sampler._decision is Decision.RECORD_AND_SAMPLE
        return lambda trace_id: sampled
    if isinstance(sampler, TraceIdRatioBased):
        bound = sampler.bound
        return lambda trace_id: trace_id & _RATIO_MASK < bound
    return None


def _ask(sampler: Sampler, trace_id: int, inbound: Inbound | None) -> bool:
    """A sampler Pier does not know: asked the SDK's way, with the caller's context as the parent."""
    parent = None
    if inbound is not None:
        parent = trace.set_span_in_context(trace.NonRecordingSpan(inbound.context()))
    return sampler.should_sample(parent, trace_id, "", SpanKind.SERVER).decision is Decision.RECORD_AND_SAMPLE
