"""`shared.leanspan`: the router's own span records reach the provider's processors as the SDK's spans would,
sampled as the provider's sampler decides, and `shared.otlpencode` writes them as the official encoder does."""

from __future__ import annotations

import random
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as official
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind, StatusCode

from shared.leanspan import ACTIVE, LeanSpan, LeanTracer, new_trace_id, parse_traceparent, unsampled_traceparent
from shared.otlpencode import encode_spans
from shared.telemetry import DropCounter, _BatchProcessor
from shared.tracecontext import current_traceparent

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


def test_traceparent_is_read_as_the_w3c_spec_says() -> None:
    inbound = parse_traceparent(f"00-{TRACE}-{PARENT}-01", "vendor=x")
    assert inbound is not None
    assert (inbound.trace_id, inbound.span_id, inbound.sampled, inbound.tracestate) == (
        int(TRACE, 16),
        int(PARENT, 16),
        True,
        "vendor=x",
    )
    unsampled = parse_traceparent(f"00-{TRACE}-{PARENT}-00")
    assert unsampled is not None
    assert not unsampled.sampled
    future = parse_traceparent(f"01-{TRACE}-{PARENT}-01-more")
    assert future is not None
    assert future.sampled
    for bad in (
        None,
        "",
        "garbage",
        f"ff-{TRACE}-{PARENT}-01",
        f"00-{'0' * 32}-{PARENT}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"00-{TRACE.upper()}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-01-extra",
    ):
        assert parse_traceparent(bad) is None, bad
    assert unsampled_traceparent(int(TRACE, 16)).startswith(f"00-{TRACE}-")
    assert unsampled_traceparent(int(TRACE, 16)).endswith("-00")


def provider(sampler: Sampler | None = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=sampler, resource=Resource({"service.name": "pier-router"}))
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider, exporter


def test_sampling_follows_the_providers_sampler() -> None:
    rng = random.Random(7)
    ids = [rng.getrandbits(128) for _ in range(2000)]
    remote_sampled = parse_traceparent(f"00-{TRACE}-{PARENT}-01")
    remote_unsampled = parse_traceparent(f"00-{TRACE}-{PARENT}-00")
    samplers: list[Sampler] = [
        ALWAYS_ON,
        ALWAYS_OFF,
        DEFAULT_ON,
        TraceIdRatioBased(0.1),
        ParentBasedTraceIdRatio(0.1),
        ParentBased(TraceIdRatioBased(0.3), remote_parent_not_sampled=ALWAYS_ON),
    ]
    for sampler in samplers:
        lean = LeanTracer(provider(sampler)[0], "pier.router")
        for inbound in (None, remote_sampled, remote_unsampled):
            context = None
            if inbound is not None:
                context = trace.set_span_in_context(trace.NonRecordingSpan(inbound.context()))
            for trace_id in ids:
                tid = inbound.trace_id if inbound is not None else trace_id
                expected = sampler.should_sample(context, tid, "x").decision is Decision.RECORD_AND_SAMPLE
                assert lean.sampled(tid, inbound) == expected, (sampler.get_description(), inbound)
    ratio = LeanTracer(provider(ParentBasedTraceIdRatio(0.1))[0], "pier.router")
    share = sum(ratio.sampled(t, None) for t in ids) / len(ids)
    assert 0.07 < share < 0.13


def test_spans_reach_the_processors_and_encode_as_the_official_encoder() -> None:
    tracer_provider, exporter = provider()
    lean = LeanTracer(tracer_provider, "pier.router")
    inbound = parse_traceparent(f"00-{TRACE}-{PARENT}-01", "vendor=x")
    server = lean.start("POST /v1/chat/completions", SpanKind.SERVER, int(TRACE, 16), inbound, {"http.route": "/x"})
    token = ACTIVE.set(server)
    try:
        assert current_traceparent() == server.traceparent
    finally:
        ACTIVE.reset(token)
    # The same key with values that are equal as dict keys but not on the wire (True == 1 == 1.0).
    for value in (True, 1, 1.0, "1"):
        attempt = server.child("chat m", SpanKind.CLIENT, {"x": value, "pier.attempt": 1, "t": ("stop",)})
        attempt.attributes["gen_ai.usage.output_tokens"] = 7
        attempt.end(error=value == 1.0)
    server.attributes["http.response.status_code"] = 200
    server.end()
    spans = list(exporter.get_finished_spans())
    assert len(spans) == 5
    *clients, root = spans
    assert root.kind is SpanKind.SERVER
    assert root.parent is not None
    assert root.parent.is_remote
    assert root.parent.span_id == int(PARENT, 16)
    assert root.context is not None
    assert root.context.trace_id == int(TRACE, 16)
    assert root.context.trace_state.get("vendor") == "x"
    for client in clients:
        assert client.parent is not None
        assert client.parent.span_id == root.context.span_id
        assert client.context is not None
        assert client.context.trace_flags.sampled
        assert client.start_time is not None
        assert client.end_time is not None
        assert client.start_time <= client.end_time
    assert [type(c.attributes["x"]) for c in clients if c.attributes is not None] == [bool, int, float, str]
    assert [c.status.status_code for c in clients][2] is StatusCode.ERROR
    for _ in range(2):  # the second time from the encoder's table of attribute fields
        ours = ExportTraceServiceRequest.FromString(encode_spans(spans))
        theirs = ExportTraceServiceRequest.FromString(official(spans).SerializeToString())
        assert ours == theirs


class _LeanCapture(SpanExporter):
    """An exporter that, like Pier's OTLP exporter, takes the router's records as they are."""

    takes_lean = True

    def __init__(self) -> None:
        self.batches: list[list[object]] = []

    def export(self, spans: Sequence[object]) -> SpanExportResult:
        self.batches.append(list(spans))
        return SpanExportResult.SUCCESS


def test_records_reach_pier_s_batch_processor_as_they_are_and_encode_as_their_sdk_spans() -> None:
    capture = _LeanCapture()
    tracer_provider = TracerProvider(resource=Resource({"service.name": "pier-router"}))
    tracer_provider.add_span_processor(_BatchProcessor(capture, DropCounter(), {}))
    lean = LeanTracer(tracer_provider, "pier.router")
    for tracestate in ("vendor=x,other=y", "not a valid state", None):
        inbound = parse_traceparent(f"00-{TRACE}-{PARENT}-01", tracestate)
        server = lean.start("POST /v1/chat/completions", SpanKind.SERVER, int(TRACE, 16), inbound, {"http.route": "/x"})
        attempt = server.child("chat m", SpanKind.CLIENT, {"pier.attempt": 1, "t": ("stop",), "ok": True})
        attempt.end(error=True)
        server.end()
    root = lean.start("GET /health", SpanKind.SERVER, new_trace_id(), None, {"n": 2.5})
    root.end()
    tracer_provider.force_flush()
    records = [span for batch in capture.batches for span in batch]
    assert len(records) == 7
    assert all(isinstance(span, LeanSpan) for span in records)  # no SDK span object was built for them
    readable = [span.readable() for span in records if isinstance(span, LeanSpan)]
    assert readable[0].status.status_code is StatusCode.ERROR
    assert readable[0].parent is not None
    assert readable[0].parent.span_id == readable[1].context.span_id
    assert readable[1].parent is not None
    assert readable[1].parent.is_remote
    assert readable[-1].parent is None
    ours = ExportTraceServiceRequest.FromString(encode_spans(records))  # type: ignore[arg-type]
    theirs = ExportTraceServiceRequest.FromString(official(readable).SerializeToString())
    assert ours == theirs
