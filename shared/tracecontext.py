"""W3C trace context carried across Redis: writers stamp events with `traceparent`, readers link to it."""

from __future__ import annotations

from opentelemetry import propagate
from opentelemetry.context import Context


def current_traceparent() -> str | None:
    """The `traceparent` of the active span, or None when nothing is being traced."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def context_from(traceparent: str | None) -> Context | None:
    if not traceparent:
        return None
    return propagate.extract({"traceparent": traceparent})
