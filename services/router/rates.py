"""Live request rate, error rate and p95 latency per endpoint, for the status page, from the counters the router
already keeps (`RouterTelemetry`'s attempt counter and operation-duration histogram).

Nothing here runs per request: the instruments are cumulative, and this module reads them when someone asks
(`GET /internal/status/rates`), keeps a short history of those readings, and answers with the differences over
the last window. With telemetry off the router counts nothing per endpoint, and the answer says so.
Each router process counts its own requests (`PIER_WORKERS` > 1: the answer is the process that served it).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from services.router.telemetry import RouterTelemetry

WINDOW_S = 30.0  # rates over (about) the last half minute
MIN_SPACING_S = 1.0  # at most one kept reading per second, however many tabs poll
QUANTILE = 0.95
OFF_REASON = "live rates need the router's metrics: set PIER_PROMETHEUS_METRICS=true or an OTLP metrics endpoint"


@dataclass(slots=True)
class Tally:
    """One endpoint's cumulative counts at one reading."""

    attempts: float = 0.0
    errors: float = 0.0
    buckets: list[int] = field(default_factory=list)


Reading = tuple[float, dict[str, Tally]]


def read_counters(telemetry: RouterTelemetry) -> dict[str, Tally]:
    """The instruments' cumulative points, summed per endpoint (over models, operations and outcomes)."""
    out: dict[str, Tally] = {}
    for point in telemetry.attempts.metric(0, 0).data.data_points:
        endpoint = str(point.attributes.get("pier.endpoint", "")) if point.attributes else ""
        tally = out.setdefault(endpoint, Tally())
        value = float(point.value)  # type: ignore[union-attr]
        tally.attempts += value
        if point.attributes and "error.type" in point.attributes:
            tally.errors += value
    size = len(telemetry.op_duration.bounds) + 1
    for hpoint in telemetry.op_duration.metric(0, 0).data.data_points:
        endpoint = str(hpoint.attributes.get("pier.endpoint", "")) if hpoint.attributes else ""
        tally = out.setdefault(endpoint, Tally())
        if not tally.buckets:
            tally.buckets = [0] * size
        for i, n in enumerate(hpoint.bucket_counts):  # type: ignore[union-attr]
            tally.buckets[i] += n
    return out


def quantile(q: float, bounds: tuple[float, ...], counts: list[int]) -> float | None:
    """The q-quantile of an explicit-bucket histogram (bucket i: values <= bounds[i]; the last one: above all),
    interpolated linearly inside its bucket as Prometheus' histogram_quantile does; None when it is empty."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i >= len(bounds):
                return bounds[-1]  # above the highest bound: report the bound (a lower limit)
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * (rank - seen) / n
        seen += n
    return bounds[-1]


class LiveRates:
    """Differences between the current reading and the oldest one kept inside the window."""

    def __init__(
        self,
        telemetry: RouterTelemetry | None,
        *,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._telemetry = telemetry
        self._window_s = window_s
        self._clock = clock
        self._readings: deque[Reading] = deque()

    def describe(self) -> dict[str, Any]:
        telemetry = self._telemetry
        if telemetry is None:
            return {"enabled": False, "reason": OFF_REASON, "window_s": self._window_s, "endpoints": {}}
        now = self._clock()
        current = read_counters(telemetry)
        while len(self._readings) > 1 and now - self._readings[1][0] >= self._window_s:
            self._readings.popleft()  # keep one reading at (or just before) the window's start
        base = self._readings[0] if self._readings else None
        if not self._readings or now - self._readings[-1][0] >= MIN_SPACING_S:
            self._readings.append((now, current))
        bounds = telemetry.op_duration.bounds
        endpoints: dict[str, Any] = {}
        span_s = now - base[0] if base is not None else 0.0
        for name, tally in current.items():
            before = base[1].get(name, Tally()) if base is not None else None
            endpoints[name] = _rates(tally, before, span_s, bounds)
        return {"enabled": True, "window_s": round(span_s, 3), "endpoints": endpoints}

    async def route(self, request: web.Request) -> web.Response:
        """`GET /internal/status/rates`."""
        return web.json_response(self.describe(), headers={"Cache-Control": "no-store"})


def _rates(now: Tally, before: Tally | None, span_s: float, bounds: tuple[float, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"requests_total": int(now.attempts), "errors_total": int(now.errors)}
    if before is None or span_s <= 0:
        return {**out, "requests_per_s": None, "error_rate": None, "p95_ms": None}  # no baseline yet
    attempts = max(0.0, now.attempts - before.attempts)
    errors = max(0.0, now.errors - before.errors)
    counts = [n - (before.buckets[i] if i < len(before.buckets) else 0) for i, n in enumerate(now.buckets)]
    p95 = quantile(QUANTILE, bounds, counts) if now.buckets else None
    return {
        **out,
        "requests_per_s": round(attempts / span_s, 3),
        "error_rate": round(errors / attempts, 4) if attempts else None,
        "p95_ms": round(p95 * 1000, 1) if p95 is not None else None,
    }
