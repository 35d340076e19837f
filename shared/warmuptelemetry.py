"""What the warm-up worker reports: one span per preload, linked to the event that caused it, and the
`pier.warmup.load.duration` histogram (the dashboard's warm-up panel).

The worker builds one `WarmupTelemetry` (providers injectable for tests, the process's global ones otherwise,
which `shared.telemetry.setup("pier-warmup")` installs in `__main__`) and wraps each preload:

    with warm.preload(model, endpoint, [event.traceparent]) as span:
        ...  # the load; events it publishes carry this span's traceparent
        warm.loaded(model, endpoint, seconds, "ok")
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager

from opentelemetry import metrics, trace

from shared.tracecontext import consumer_span

# Model loads take seconds to minutes.
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)


class WarmupTelemetry:
    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.tracer = trace.get_tracer("pier.warmup", tracer_provider=tracer_provider)
        meter = metrics.get_meter("pier.warmup", meter_provider=meter_provider)
        self.load_duration = meter.create_histogram(
            "pier.warmup.load.duration",
            unit="s",
            description="How long a preload took, by model, endpoint and outcome.",
            explicit_bucket_boundaries_advisory=LOAD_BUCKETS,
        )

    def preload(
        self, model: str, endpoint: str, traceparents: Iterable[str | None]
    ) -> AbstractContextManager[trace.Span]:
        """The span of one preload (`warmup preload`), current while the block runs, linked to the producers
        of the events that caused it (an endpoint that came back, a model that was unloaded)."""
        attributes = {"gen_ai.request.model": model, "pier.endpoint": endpoint}
        return consumer_span(self.tracer, "warmup preload", traceparents, attributes)

    def loaded(self, model: str, endpoint: str, seconds: float, outcome: str) -> None:
        """Record one preload's duration; `outcome` is low-cardinality (`ok`, `timeout`, `error`)."""
        self.load_duration.record(
            seconds, {"gen_ai.request.model": model, "pier.endpoint": endpoint, "pier.outcome": outcome}
        )
