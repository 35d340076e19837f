"""`shared.telemetry.setup`: driven by the OTEL_* variables; nothing at all without an endpoint; an endpoint that
hangs or is down never blocks the code that ends spans, and what is lost is counted; batches leave when full or
after the schedule delay."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

from shared.telemetry import DropCounter, TelemetryEnv, _BatchProcessor, resource_for, setup
from tests.harness import free_port, wait_for, wait_for_sync


def test_no_endpoint_means_no_exporter_and_no_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        telemetry = setup("pier-router", environ={}, install_global=False)
    assert not telemetry.enabled
    assert telemetry.tracer_provider is None
    assert telemetry.meter_provider is None
    assert caplog.records == []
    assert not telemetry.tracer("x").start_span("s").get_span_context().is_valid  # the no-op tracer
    telemetry.shutdown()


def test_disabled_wins_over_an_endpoint() -> None:
    env = {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert not setup("pier-router", environ=env, install_global=False, prometheus=True).enabled


def test_endpoints_per_signal() -> None:
    env = TelemetryEnv.read({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"})
    assert (env.traces_endpoint, env.metrics_endpoint) == ("http://c:4318/v1/traces", "http://c:4318/v1/metrics")
    env = TelemetryEnv.read({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x", "OTEL_METRICS_EXPORTER": "none"})
    assert (env.traces_endpoint, env.metrics_endpoint) == ("http://t/x", None)
    assert TelemetryEnv.read({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "True"}).capture_content
    assert not TelemetryEnv.read({}).capture_content


def test_service_name_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod")
    resource = resource_for("pier-health")
    assert resource.attributes["service.name"] == "pier-health"
    assert resource.attributes["deployment.environment"] == "prod"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "health-eu")
    assert resource_for("pier-health").attributes["service.name"] == "health-eu"


def test_sampler_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.1")
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces"}
    telemetry = setup("pier-router", environ=env, install_global=False)
    try:
        assert telemetry.tracer_provider is not None
        assert isinstance(telemetry.tracer_provider.sampler, ParentBasedTraceIdRatio)
    finally:
        telemetry.shutdown(timeout_s=0.5)


@pytest.fixture
def hanging_endpoint() -> Iterator[str]:
    """A port that accepts connections (kernel backlog) and never answers: the slowest collector there is."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_a_hanging_endpoint_never_blocks_and_drops_are_counted(
    hanging_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The exporter waits 10 s on the endpoint, so any wait on it stands far above the bounds below, which leave
    # room for a loaded 2-core CI machine to deschedule the test (a 0.5 s bound once failed there at 0.502 s).
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "10")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512")
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{hanging_endpoint}/v1/traces"}
    telemetry = setup("pier-router", environ=env, install_global=False)
    tracer = telemetry.tracer("t")
    worst_s = 0.0
    for _ in range(3000):
        started = time.perf_counter()
        tracer.start_span("s").end()
        worst_s = max(worst_s, time.perf_counter() - started)
    assert worst_s < 2.0  # ending a span never waits for the exporter (stuck for its 10 s timeout per batch)
    # The worker took at most one batch (stuck on the endpoint); the queue holds 2048; the rest was dropped.
    assert telemetry.drops.queue_full >= 3000 - 2048 - 512
    started = time.perf_counter()
    telemetry.shutdown(timeout_s=1.0)
    assert time.perf_counter() - started < 2.5  # the 1 s flush budget, not the exporter's 10 s, bounds it


def test_a_down_endpoint_counts_failed_exports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{free_port()}/v1/traces"}
    telemetry = setup("pier-router", environ=env, install_global=False)
    for _ in range(10):
        telemetry.tracer("t").start_span("s").end()
    assert telemetry.tracer_provider is not None
    telemetry.tracer_provider.force_flush(5000)
    assert telemetry.drops.export_failed == 10
    telemetry.shutdown(timeout_s=1.0)


def test_json_logs_carry_the_active_trace() -> None:
    import json

    from opentelemetry.sdk.trace import TracerProvider

    from shared.logs import _JsonFormatter

    formatter = _JsonFormatter()
    record = logging.LogRecord("pier", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    assert "trace_id" not in json.loads(formatter.format(record))  # no span: no ids
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("s") as span:
        line = json.loads(formatter.format(record))
    context = span.get_span_context()
    assert line["msg"] == "hello there"
    assert line["trace_id"] == f"{context.trace_id:032x}"
    assert line["span_id"] == f"{context.span_id:016x}"


class _Collect(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.sizes: list[int] = []  # one per export call

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        self.sizes.append(len(spans))
        return SpanExportResult.SUCCESS


def _processor(delay_ms: int, batch: int) -> tuple[TracerProvider, _Collect]:
    exporter = _Collect()
    env = {"OTEL_BSP_SCHEDULE_DELAY": str(delay_ms), "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": str(batch)}
    provider = TracerProvider()
    provider.add_span_processor(_BatchProcessor(exporter, DropCounter(), env))
    return provider, exporter


async def test_batches_leave_when_full_or_after_the_delay_from_an_event_loop() -> None:
    provider, exporter = _processor(delay_ms=60_000, batch=4)
    tracer = provider.get_tracer("t")
    for _ in range(3):
        tracer.start_span("s").end()
    assert exporter.spans == []  # neither full nor late
    tracer.start_span("s").end()
    await wait_for(lambda: len(exporter.spans) == 4, timeout_s=5, what="the full batch to leave at once")
    provider.shutdown()

    provider, exporter = _processor(delay_ms=200, batch=512)
    provider.get_tracer("t").start_span("late").end()
    await wait_for(lambda: len(exporter.spans) == 1, timeout_s=5, what="the span to leave after the delay")
    provider.shutdown()


async def test_a_full_batch_leaves_alone_and_the_rest_waits_for_the_delay() -> None:
    """Woken for a full batch, the worker sends full batches only: spans arriving meanwhile wait for the next
    full batch or the schedule delay, instead of leaving in many small exports."""
    provider, exporter = _processor(delay_ms=1500, batch=4)
    tracer = provider.get_tracer("t")
    for _ in range(10):
        tracer.start_span("s").end()
    await wait_for(lambda: len(exporter.spans) == 8, timeout_s=5, what="the two full batches")
    assert exporter.sizes == [4, 4]
    await wait_for(lambda: len(exporter.spans) == 10, timeout_s=10, what="the last two after the delay")
    assert exporter.sizes == [4, 4, 2]
    provider.shutdown()


def test_a_span_leaves_after_the_delay_outside_an_event_loop() -> None:
    provider, exporter = _processor(delay_ms=200, batch=512)
    provider.get_tracer("t").start_span("late").end()
    wait_for_sync(lambda: len(exporter.spans) == 1, timeout_s=5, what="the span to leave after the delay")
    provider.shutdown()
