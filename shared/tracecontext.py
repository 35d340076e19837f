"""W3C trace context carried across Redis: writers stamp events with `traceparent`, readers link to it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link
from opentelemetry.util.types import AttributeValue

if TYPE_CHECKING:
    from shared.leanspan import LeanSpan

# The router's current request span when it is one of Pier's own records (`shared.leanspan`), which the SDK's
# context does not know. Here (not in `shared.leanspan`) so that log set-up does not import the SDK.
ACTIVE: ContextVar[LeanSpan | None] = ContextVar("pier_active_lean_span", default=None)


def current_traceparent() -> str | None:
    """The `traceparent` of the active span, or None when nothing is being traced."""
    lean = ACTIVE.get()
    if lean is not None:  # the router's request span (Pier's own record, `shared.leanspan`)
        return lean.traceparent
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def context_from(traceparent: str | None) -> Context | None:
    if not traceparent:
        return None
    return propagate.extract({"traceparent": traceparent})


def links_to(*traceparents: str | None) -> list[Link]:
    """Span links to the producers of Redis events (their `traceparent`s); invalid or missing ones are skipped.

    A consumer starts its own trace and links to the producer's, so a slow consumer never stretches the
    producer's trace, and one span may follow several events.
    """
    links: list[Link] = []
    for traceparent in traceparents:
        context = context_from(traceparent)
        if context is None:
            continue
        span_context = trace.get_current_span(context).get_span_context()
        if span_context.is_valid:
            links.append(Link(span_context, {"pier.link": "redis event"}))
    return links


def consumer_span(
    tracer: trace.Tracer, name: str, traceparents: Iterable[str | None], attributes: Mapping[str, AttributeValue]
) -> AbstractContextManager[trace.Span]:
    """`with consumer_span(tracer, "warmup preload", [event.traceparent], {...}):` a CONSUMER-side span of work
    an event caused, linked to the event's producer, current while the block runs (its writes carry its
    traceparent on)."""
    return tracer.start_as_current_span(
        name, kind=trace.SpanKind.INTERNAL, attributes=attributes, links=links_to(*traceparents)
    )
