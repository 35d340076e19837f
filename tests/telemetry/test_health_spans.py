"""Health spans only for probes that changed something, events carrying their traceparent, and a consumer of
such an event (the warm-up's shape) linked to it. A real emulator and redis-server; the worker in this process
with an in-memory exporter and metric reader."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis

from services.health.settings import HealthSettings
from services.health.worker import HealthWorker
from shared import statestore
from shared.config import build_config
from shared.profiles import load_profiles
from shared.state import EventKind
from shared.warmuptelemetry import WarmupTelemetry
from tests.harness import ProcessFactory
from tests.health.support import endpoint_entry, start_emulator


def traceparent_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-"


async def test_probe_spans_only_on_change_and_a_consumer_links_to_them(
    procs: ProcessFactory, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    emu = start_emulator(procs)
    settings = HealthSettings(redis_url=redis_url, docker_discovery="off", health_id_file=tmp_path / "id")
    config = build_config({"endpoints": [endpoint_entry("emu", emu.url)]}, load_profiles())
    worker = HealthWorker(settings, redis=redis, config=config, tracer_provider=provider, meter_provider=meters)
    try:
        await worker.run_once()  # first sight: endpoint added -> a span
        (added,) = exporter.get_finished_spans()
        await worker.run_once()
        await worker.run_once()  # nothing changed twice: no span
        assert len(exporter.get_finished_spans()) == 1

        await emu.fault(mode="status", status=500, paths=["/models", "/engines/ps", "/engines/v1/models"])
        await worker.run_once()
        down = exporter.get_finished_spans()[-1]
        await emu.fault(mode="none")
        await worker.run_once()
        back = exporter.get_finished_spans()[-1]
        await worker.run_once()  # unchanged again
    finally:
        await worker.close()
    spans = exporter.get_finished_spans()
    assert len(spans) == 3
    for span in spans:
        assert span.name == "health probe"
        assert span.kind is SpanKind.CLIENT
        assert span.parent is None
    assert added.attributes is not None
    assert added.attributes["pier.endpoint.status"] == "healthy"
    assert down.attributes is not None
    assert back.attributes is not None
    assert down.attributes["pier.endpoint.status"] != "healthy"
    assert back.attributes["pier.endpoint.status"] == "healthy"
    assert back.attributes["pier.endpoint.previous_status"] == down.attributes["pier.endpoint.status"]

    events = [e for _, e in await statestore.read_events(redis, "0-0")]
    came_back = [
        e for e in events if e.kind is EventKind.STATUS_CHANGED and e.state and e.state.status.value == "healthy"
    ]
    assert came_back
    assert came_back[-1].traceparent is not None
    assert came_back[-1].traceparent.startswith(traceparent_of(back))

    # The consumer's side (what the warm-up worker does with that event): its own trace, linked to the probe.
    consumer = InMemorySpanExporter()
    consumer_provider = TracerProvider()
    consumer_provider.add_span_processor(SimpleSpanProcessor(consumer))
    warm_reader = InMemoryMetricReader()
    warm_meters = MeterProvider(metric_readers=[warm_reader])
    warm = WarmupTelemetry(tracer_provider=consumer_provider, meter_provider=warm_meters)
    with warm.preload("ai/smollm2", "emu", [came_back[-1].traceparent, None]):
        warm.loaded("ai/smollm2", "emu", 1.5, "ok")
    (preload,) = consumer.get_finished_spans()
    assert preload.name == "warmup preload"
    assert preload.parent is None
    assert preload.attributes is not None
    assert preload.attributes["gen_ai.request.model"] == "ai/smollm2"
    warm_data = warm_reader.get_metrics_data()
    assert warm_data is not None
    (load,) = [m for r in warm_data.resource_metrics for s in r.scope_metrics for m in s.metrics]
    assert load.name == "pier.warmup.load.duration"
    (point,) = load.data.data_points
    assert isinstance(point, HistogramDataPoint)
    assert (point.count, point.sum) == (1, 1.5)
    warm_meters.shutdown()
    (link,) = preload.links
    assert back.context is not None
    assert (link.context.trace_id, link.context.span_id) == (back.context.trace_id, back.context.span_id)

    # Every probe is measured, changed or not (6 probes).
    data = reader.get_metrics_data()
    assert data is not None
    (metric,) = [m for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics]
    assert metric.name == "pier.health.probe.duration"
    assert sum(p.count for p in metric.data.data_points if isinstance(p, HistogramDataPoint)) == 6
    provider.shutdown()
    consumer_provider.shutdown()
    meters.shutdown()
