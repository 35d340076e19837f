"""`shared.otlpencode` writes the same export request as the OpenTelemetry exporter's encoder: both decoded
with the official protobuf classes compare equal, for spans with every feature the services use."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as official
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from shared.otlpencode import encode_spans
from shared.tracecontext import context_from


def spans() -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    resource = Resource({"service.name": "pier-router", "deployment.environment": "test", "n": 3})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("pier.router", "1.0")
    other = provider.get_tracer("pier.health")
    remote = context_from("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    with tracer.start_as_current_span("POST /engines/v1/chat/completions", context=remote, kind=SpanKind.SERVER):
        span = tracer.start_span(
            "chat ai/smollm2",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.request.model": "ai/smollm2",
                "server.port": 12434,
                "pier.route.warm": True,
                "gen_ai.request.temperature": 0.5,
                "gen_ai.response.finish_reasons": ("stop", "length"),
                "big": 2**40,
                "negative": -3,
                "unicode": "héllo ✓",
            },
        )
        span.add_event("retry", {"reason": "loading"})
        span.set_status(Status(StatusCode.ERROR, "upstream_timeout"))
        span.end()
    linked = other.start_span("health probe", links=[Link(span.get_span_context(), {"pier.link": "redis event"})])
    linked.end()
    return list(exporter.get_finished_spans())


def test_same_request_as_the_official_encoder() -> None:
    batch = spans()
    ours = ExportTraceServiceRequest.FromString(encode_spans(batch))
    theirs = ExportTraceServiceRequest.FromString(official(batch).SerializeToString())
    assert len(batch) == 3
    # Same content; the order of resource/scope groups may differ, so compare each group.
    assert ours == theirs
