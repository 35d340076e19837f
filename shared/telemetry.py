"""Telemetry set-up shared by the three services: providers, exporters, shutdown. Driven by the standard variables.

- `OTEL_SERVICE_NAME` (default `pier-router` / `pier-health` / `pier-warmup`), `OTEL_RESOURCE_ATTRIBUTES`;
- `OTEL_EXPORTER_OTLP_ENDPOINT` and the per-signal `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
  `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` (OTLP over HTTP/protobuf; the SDK's exporters read the rest of the
  `OTEL_EXPORTER_OTLP_*` family themselves: headers, timeout, compression);
- `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (read by the SDK's TracerProvider); `OTEL_SDK_DISABLED`;
- `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT` (prompt and completion content; off unless `true`).

With no endpoint configured no exporter runs and nothing is logged: the services then pay nothing for
telemetry (the router checks one attribute per request). Spans go through batch processors whose worker
thread does the export, so an endpoint that is down or slow never blocks a request: when the queue is full
the oldest spans are dropped, and the drops (and failed exports) are counted in `pier.telemetry.spans.dropped`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from shared.fastmetrics import FastMetrics, export_through
from shared.leanspan import LeanSpan
from shared.otlpencode import encode_spans

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 5.0  # on shutdown: what is still queued gets this long to leave (inside the drain time)
# The HTTP semantic conventions' advice for duration histograms, in seconds (the SDK's default buckets are
# made for milliseconds).
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_QUEUE_SIZE = 2048  # the SDK's default, stated here because the drop counter needs it


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


@dataclass(frozen=True, slots=True)
class TelemetryEnv:
    """What the standard OTEL_* variables ask for (read once, in `__main__`)."""

    disabled: bool = False
    traces_endpoint: str | None = None
    metrics_endpoint: str | None = None
    capture_content: bool = False

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> TelemetryEnv:
        env = os.environ if environ is None else environ
        base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or None

        def signal(name: str, exporter_var: str) -> str | None:
            if env.get(exporter_var, "otlp").strip().lower() == "none":
                return None
            own = env.get(f"OTEL_EXPORTER_OTLP_{name}_ENDPOINT", "").strip()
            if own:
                return own
            return f"{base.rstrip('/')}/v1/{name.lower()}" if base else None

        return cls(
            disabled=_true(env.get("OTEL_SDK_DISABLED")),
            traces_endpoint=signal("TRACES", "OTEL_TRACES_EXPORTER"),
            metrics_endpoint=signal("METRICS", "OTEL_METRICS_EXPORTER"),
            capture_content=_true(env.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")),
        )


class DropCounter:
    """Spans lost on their way out: queue overflow (endpoint slow) and failed exports (endpoint down)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.queue_full = 0
        self.export_failed = 0

    def observe(self, options: CallbackOptions) -> list[Observation]:
        return [
            Observation(self.queue_full, {"reason": "queue_full"}),
            Observation(self.export_failed, {"reason": "export_failed"}),
        ]


class _BatchProcessor(SpanProcessor):
    """Queues ended spans and exports them in batches from one worker thread; drops are counted.

    Like the SDK's `BatchSpanProcessor` (same queue and batch sizes, `OTEL_BSP_SCHEDULE_DELAY` and
    `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` read the same way), with one difference that matters on a loaded router:
    the worker waits without a timeout. Measured in the benchmark suite, a thread parked in a timed wait (the
    SDK's worker sleeps `wait(schedule_delay)`) costs the router's busy event loop tens of µs per request, and
    one parked in an untimed wait costs nothing measurable. So the worker is woken instead: when a batch is
    full, and by a timer the event loop runs (`call_later`) once the first span of a batch is queued (outside
    an event loop, a `threading.Timer`), so a span never waits longer than the schedule delay.
    """

    def __init__(self, exporter: SpanExporter, drops: DropCounter, environ: Mapping[str, str]) -> None:
        self._exporter = exporter
        # Pier's OTLP exporter encodes `LeanSpan` records as they are; any other exporter gets the SDK's spans.
        self._takes_lean = bool(getattr(exporter, "takes_lean", False))
        self._drops = drops
        self._batch = max(1, int(environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "") or 512))
        self._delay_s = max(0.0, float(environ.get("OTEL_BSP_SCHEDULE_DELAY", "") or 5000) / 1000)
        self._queue: deque[ReadableSpan | LeanSpan] = deque()
        self._wake = threading.Event()
        self._export_lock = threading.Lock()
        self._armed = False  # a timer will wake the worker
        self._flush_due = False  # the timer fired: the worker sends a partial batch too
        self._full_signalled = False  # the worker was woken for a full batch and has not started on it yet
        self._stopping = False
        self._worker = threading.Thread(target=self._run, name="pier-span-export", daemon=True)
        self._worker.start()

    def on_end(self, span: ReadableSpan) -> None:
        if self._stopping or span.context is None or not span.context.trace_flags.sampled:
            return
        self._queue_span(span)

    def on_end_lean(self, span: LeanSpan) -> None:
        """The router's own records (`shared.leanspan`, always sampled), queued as they are: the encoder reads them."""
        if not self._stopping:
            self._queue_span(span)

    def _queue_span(self, span: ReadableSpan | LeanSpan) -> None:
        queue = self._queue
        if len(queue) >= _QUEUE_SIZE:
            queue.popleft()  # the oldest goes: the collector is slow or down
            with self._drops._lock:
                self._drops.queue_full += 1
        queue.append(span)
        if len(queue) >= self._batch:
            if not self._full_signalled:  # once per full batch, not once per span while the worker is busy
                self._full_signalled = True
                self._wake.set()
        elif not self._armed:
            self._arm()

    def _arm(self) -> None:
        self._armed = True
        try:
            asyncio.get_running_loop().call_later(self._delay_s, self._timeout)
        except RuntimeError:  # not on an event loop's thread
            timer = threading.Timer(self._delay_s, self._timeout)
            timer.daemon = True
            timer.start()

    def _timeout(self) -> None:
        self._armed = False
        self._flush_due = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait()  # untimed on purpose (see the class docstring)
            self._wake.clear()
            self._full_signalled = False
            partial, self._flush_due = self._flush_due, False
            self._export_queued(partial=partial)
            if self._queue and not self._armed:
                self._arm()  # a partial batch left behind waits no longer than the schedule delay

    def _export_queued(self, *, partial: bool = True) -> None:
        """Send what is queued in batches; a last partial batch only when `partial` (the schedule delay passed,
        a flush, shutdown): woken for a full batch, the worker leaves the rest for the next one or the timer
        (measured: sending whatever had arrived meant many small exports, each paying a whole HTTP request)."""
        with self._export_lock:
            queue = self._queue
            while len(queue) >= self._batch or (partial and queue):
                batch = [queue.popleft() for _ in range(min(self._batch, len(queue)))]
                if not self._takes_lean:
                    batch = [s.readable() if isinstance(s, LeanSpan) else s for s in batch]
                try:
                    result = self._exporter.export(batch)  # type: ignore[arg-type]  # lean records: see takes_lean
                except Exception:  # an exporter bug must not end the worker
                    log.exception("telemetry: span export failed")
                    result = SpanExportResult.FAILURE
                if result is not SpanExportResult.SUCCESS:
                    with self._drops._lock:
                        self._drops.export_failed += len(batch)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self._export_queued()  # in the caller's thread; `Telemetry.shutdown` bounds how long it may take
        return True

    def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        self._export_queued()
        self._exporter.shutdown()


@dataclass(slots=True)
class Telemetry:
    """One process's providers (None when that signal is off) and what the services ask of them."""

    service: str
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    prometheus_registry: object | None = None  # prometheus_client's CollectorRegistry when scraping is on
    capture_content: bool = False
    drops: DropCounter = field(default_factory=DropCounter)
    metric_readers: list[MetricReader] = field(default_factory=list)  # of `meter_provider`
    resource: Resource = field(default_factory=Resource.get_empty)
    ticked_readers: list[MetricReader] = field(default_factory=list)  # exported by `start_metric_ticks`
    metric_interval_s: float = 60.0
    _ticks: threading.Event | None = None

    def start_metric_ticks(self) -> None:
        """On the running event loop: every `OTEL_METRIC_EXPORT_INTERVAL` the loop wakes a thread that collects
        and exports the ticked readers (the collection and the HTTP export stay off the loop)."""
        if not self.ticked_readers or self._ticks is not None:
            return
        loop = asyncio.get_running_loop()
        wake = self._ticks = threading.Event()
        readers = list(self.ticked_readers)

        def export() -> None:
            while True:
                wake.wait()  # untimed on purpose (see `_BatchProcessor`)
                wake.clear()
                if self._ticks is None:
                    return
                for reader in readers:
                    try:
                        reader.collect()
                    except Exception:  # a failed export is the exporter's to log; the thread goes on
                        log.debug("telemetry: metric export failed", exc_info=True)

        def tick() -> None:
            if self._ticks is not None:
                wake.set()
                loop.call_later(self.metric_interval_s, tick)

        threading.Thread(target=export, name="pier-metric-export", daemon=True).start()
        loop.call_later(self.metric_interval_s, tick)

    def fast_metrics(self, scope: str) -> FastMetrics:
        """Hot-path counters and histograms (`shared.fastmetrics`) exported by this process's metric readers."""
        fast = FastMetrics(scope)
        if self.metric_readers:
            export_through(self.metric_readers, fast, self.resource)
        return fast

    @property
    def tracing(self) -> bool:
        return self.tracer_provider is not None

    @property
    def enabled(self) -> bool:
        return self.tracer_provider is not None or self.meter_provider is not None

    def tracer(self, name: str) -> trace.Tracer:
        """A tracer of this process's provider; the no-op tracer when tracing is off."""
        if self.tracer_provider is None:
            return trace.NoOpTracer()
        return self.tracer_provider.get_tracer(name)

    def meter(self, name: str) -> metrics.Meter:
        if self.meter_provider is None:
            return metrics.NoOpMeter(name)
        return self.meter_provider.get_meter(name)

    def shutdown(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Flush what is queued and stop the exporters, giving up after `timeout_s` (a hung collector must not
        hold the process past its drain time: the export threads are daemons). Safe to call twice."""
        ticks, self._ticks = self._ticks, None
        if ticks is not None:
            ticks.set()  # the metric export thread ends
        tracer_provider, self.tracer_provider = self.tracer_provider, None
        meter_provider, self.meter_provider = self.meter_provider, None
        if tracer_provider is None and meter_provider is None:
            return
        timeout_ms = max(1, int(timeout_s * 1000))

        def stop() -> None:
            if tracer_provider is not None:
                tracer_provider.force_flush(timeout_ms)
                tracer_provider.shutdown()
            if meter_provider is not None:
                meter_provider.force_flush(timeout_millis=timeout_ms)  # the ticked readers' last export
                meter_provider.shutdown(timeout_millis=timeout_ms)

        worker = threading.Thread(target=stop, name="pier-telemetry-shutdown", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            log.warning("telemetry: the collector did not take the last spans/metrics in %gs; dropped", timeout_s)


def _span_exporter(endpoint: str) -> SpanExporter:
    """The SDK's OTLP/HTTP span exporter (its transport: headers, TLS, compression, retries, timeout), with the
    request body written by `shared.otlpencode` (a third of the SDK encoder's CPU per span; same bytes)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    class _Exporter(OTLPSpanExporter):
        takes_lean = True  # `encode_spans` reads `LeanSpan` records (see `_BatchProcessor`)

        def export(self, spans: Sequence[ReadableSpan | LeanSpan]) -> SpanExportResult:
            if self._shutdown:
                return SpanExportResult.FAILURE
            try:
                body = encode_spans(spans)
            except Exception:  # a span the encoder cannot write: the SDK's encoder takes this batch
                log.exception("telemetry: could not encode a span batch; using the SDK's encoder")
                return super().export([s.readable() if isinstance(s, LeanSpan) else s for s in spans])
            result = self._client.export(body)
            return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE

    return _Exporter(endpoint=endpoint)


def _metric_interval_s() -> float:
    """`OTEL_METRIC_EXPORT_INTERVAL` (ms, default 60 s) as the SDK reads it."""
    try:
        return max(0.1, float(os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "") or 60000) / 1000)
    except ValueError:
        return 60.0


def resource_for(default_service: str) -> Resource:
    """`OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` as the SDK reads them; the service's default name
    when neither names the service."""
    detected = Resource.create()
    name = str(detected.attributes.get("service.name", ""))
    if not name or name.startswith("unknown_service"):
        detected = detected.merge(Resource({"service.name": default_service}))
    return detected


def setup(
    default_service: str,
    *,
    prometheus: bool = False,
    environ: Mapping[str, str] | None = None,
    install_global: bool = True,
    loop_ticks: bool = False,
) -> Telemetry:
    """Build this process's telemetry from the OTEL_* variables (see the module docstring).

    `loop_ticks`: the OTLP metric export is paced by the event loop (`Telemetry.start_metric_ticks`, which the
    caller runs on its loop) rather than by the SDK's ticker thread (the router's choice).
    `prometheus`: also keep the metrics for a scrape endpoint (the router's `/internal/metrics`), from the same
    MeterProvider as the OTLP export. `install_global`: make the providers the process's global ones, so code
    that uses `trace.get_tracer()` exports too (services call this once, in `__main__` or per worker process).
    """
    env = TelemetryEnv.read(environ)
    telemetry = Telemetry(service=default_service, capture_content=env.capture_content)
    if env.disabled or (env.traces_endpoint is None and env.metrics_endpoint is None and not prometheus):
        return telemetry
    resource = resource_for(default_service)
    readers: list[MetricReader] = []
    if env.metrics_endpoint is not None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        metric_exporter = OTLPMetricExporter(endpoint=env.metrics_endpoint)
        if loop_ticks:
            # No ticker thread (an idle thread in a timed wait slows a loaded event loop): `start_metric_ticks`
            # has the event loop wake an export thread that waits without a timeout.
            reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=math.inf)
            telemetry.ticked_readers.append(reader)
            telemetry.metric_interval_s = _metric_interval_s()
            readers.append(reader)
        else:
            readers.append(PeriodicExportingMetricReader(metric_exporter))
    if prometheus:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry(auto_describe=True)
        readers.append(PrometheusMetricReader(registry=registry))
        telemetry.prometheus_registry = registry
    telemetry.resource = resource
    if readers:
        # shutdown_on_exit=False: `Telemetry.shutdown` bounds the flush; the SDK's atexit hook would not.
        telemetry.meter_provider = MeterProvider(resource=resource, metric_readers=readers, shutdown_on_exit=False)
        telemetry.metric_readers = readers
        meter = telemetry.meter_provider.get_meter("pier.telemetry")
        meter.create_observable_counter(
            "pier.telemetry.spans.dropped", [telemetry.drops.observe], unit="{span}", description="spans not exported"
        )
    if env.traces_endpoint is not None:
        # The sampler comes from OTEL_TRACES_SAMPLER(_ARG).
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        exporter = _span_exporter(env.traces_endpoint)
        provider.add_span_processor(
            _BatchProcessor(exporter, telemetry.drops, os.environ if environ is None else environ)
        )
        telemetry.tracer_provider = provider
    if install_global:
        if telemetry.tracer_provider is not None:
            trace.set_tracer_provider(telemetry.tracer_provider)
        if telemetry.meter_provider is not None:
            metrics.set_meter_provider(telemetry.meter_provider)
    log.info(
        "telemetry: traces %s, metrics %s%s",
        env.traces_endpoint or "off",
        env.metrics_endpoint or "off",
        " + Prometheus scrape" if prometheus else "",
    )
    return telemetry
