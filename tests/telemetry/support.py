"""An in-process router with injected telemetry providers (in-memory spans and metrics), on real emulators,
a real redis-server and the health worker as a process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.trace import SpanKind

from services.router.server import make_runner
from services.router.settings import RouterSettings
from shared.telemetry import Telemetry
from tests.harness import ProcessFactory, free_port, wait_for
from tests.router.support import MODEL, Emu, endpoint, start_emulator, start_health, write_config

ROUTABLE_S = 30.0


async def wait_routable(url: str, names: Sequence[str], *, loaded: bool = False) -> None:
    """The router in this process's loop: poll its status route with an async client (never a blocking one)."""

    async def routable() -> bool:
        try:
            async with aiohttp.ClientSession() as http, http.get(f"{url}/internal/status/endpoints") as resp:
                data = await resp.json()
        except (aiohttp.ClientError, OSError, ValueError):
            return False
        status = {entry["name"]: entry for entry in data["endpoints"]}
        for name in names:
            entry = status.get(name)
            if entry is None or not entry["routable"] or MODEL not in entry["models"]:
                return False
            if loaded and MODEL not in entry["loaded"]:
                return False
        return True

    await wait_for(routable, timeout_s=ROUTABLE_S, what=f"router to see {', '.join(names)} routable")


@dataclass
class Traced:
    url: str
    emus: dict[str, Emu]
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def server_spans(self) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.kind is SpanKind.SERVER]

    def client_spans(self) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.kind is SpanKind.CLIENT]

    def metric_points(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        points: list[Any] = []
        if data is None:
            return points
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points


def in_memory_telemetry(
    *, capture_content: bool = False, sampler: Sampler | None = None, metrics: bool = True
) -> tuple[Telemetry, InMemorySpanExporter, InMemoryMetricReader]:
    """Tracing into memory, and metrics into `reader` unless `metrics` is false (then no reader is registered: the
    router sees what OTEL_METRICS_EXPORTER=none without Prometheus gives it, and `reader` stays empty)."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=sampler)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry = Telemetry(
        "pier-router",
        tracer_provider=tracer_provider,
        meter_provider=meter_provider if metrics else None,
        capture_content=capture_content,
        metric_readers=[reader] if metrics else [],
    )
    return telemetry, exporter, reader


@contextlib.asynccontextmanager
async def traced_router(
    procs: ProcessFactory,
    workdir: Path,
    redis_url: str,
    emus: Sequence[tuple[str, int, tuple[str, ...]]],
    *,
    entry: dict[str, Any] | None = None,
    wait_loaded: bool = False,
    capture_content: bool = False,
    sampler: Sampler | None = None,
    metrics: bool = True,
) -> AsyncIterator[Traced]:
    """Emulators `(name, priority, args)`, the health worker, and a router in this process with in-memory telemetry."""
    started = {name: start_emulator(procs, name, *args) for name, _, args in emus}
    entries = [endpoint(name, started[name].url, priority, **(entry or {})) for name, priority, _ in emus]
    config_file = write_config(workdir / "pier-traced.yaml", entries)
    start_health(procs, redis_url, workdir, config_file)
    port = free_port()
    settings = RouterSettings(redis_url=redis_url, config_file=config_file, host="127.0.0.1", port=port)
    telemetry, exporter, reader = in_memory_telemetry(capture_content=capture_content, sampler=sampler, metrics=metrics)
    runner = make_runner(settings, settings.pier_config(), telemetry)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        for name, _, _ in emus:
            await wait_routable(url, [name], loaded=wait_loaded)
        exporter.clear()
        yield Traced(url, started, exporter, reader)
    finally:
        await runner.cleanup()
        telemetry.shutdown()
