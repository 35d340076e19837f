"""One probe of one endpoint: the health route, then (when it answered) the inventory routes, concurrently.

The health route decides the status (`classify`); the inventory routes only add what they know. A route an
older DMR lacks (404) is "absent", which is not a failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from services.health.backoff import parse_retry_after_s
from services.health.classify import Aux, aux_kind_for_status, classify, describe_transport_error
from services.health.fetch import FETCH_ERRORS, Answer, Fetcher
from shared import jsontext
from shared.config import Endpoint
from shared.inventory import (
    InventoryError,
    parse_engines,
    parse_loaded,
    parse_model_list,
    parse_pulled,
    parse_version,
)
from shared.jsontext import JSONTooDeep
from shared.state import EndpointState, EndpointStatus, LoadedModel, PulledModel

T = TypeVar("T")

_ERROR_BODY_CHARS = 160
# What changes often is read on every probe: the model listing (the health route on DMR) and what is loaded
# (/engines/ps). The rest changes rarely: the pulled inventory (/models) changes with the listing on a current
# DMR; /engines/status and /version only when DMR is upgraded or reconfigured, i.e. restarted, which the probes
# see as an outage. Those are read on the first success, after an outage, when the listing changed, and every
# FULL_READ_INTERVAL_S. In steady state a probe is then two requests instead of five.
FULL_READ_INTERVAL_S = 30.0


@dataclass(frozen=True, slots=True)
class Plan:
    """Which of the rarely-changing routes a probe reads."""

    full: bool = True  # /models, /engines/status and /version
    known_models: tuple[str, ...] | None = None  # the listing last seen: a different one triggers /models


def plan_for(previous: EndpointState | None, last_full_read_at: float | None, now: float) -> Plan:
    """Read everything on the first success, after an outage and every `FULL_READ_INTERVAL_S`."""
    if previous is None or last_full_read_at is None or not previous.status.routable:
        return Plan(full=True)
    if now - last_full_read_at >= FULL_READ_INTERVAL_S:
        return Plan(full=True)
    return Plan(full=False, known_models=previous.models if previous.models_known else None)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one probe learnt. Inventory fields are `Aux`: ok / absent / failed / skipped."""

    status: EndpointStatus
    latency_ms: float | None
    error: str | None = None
    retry_after_s: float | None = None
    models: Aux[tuple[str, ...]] = field(default_factory=Aux.skipped)
    pulled: Aux[tuple[PulledModel, ...]] = field(default_factory=Aux.skipped)
    loaded: Aux[tuple[LoadedModel, ...]] = field(default_factory=Aux.skipped)
    engines: Aux[dict[str, str]] = field(default_factory=Aux.skipped)
    version: Aux[str | None] = field(default_factory=Aux.skipped)


def _error_text(answer: Answer) -> str:
    snippet = " ".join(answer.body[:_ERROR_BODY_CHARS].decode("utf-8", "replace").split())
    return f"HTTP {answer.status}" + (f": {snippet}" if snippet else "")


def _parse_json(body: bytes) -> object:
    try:
        return jsontext.loads(body) if body.strip() else None
    except JSONTooDeep as exc:
        raise InventoryError("JSON nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InventoryError("not JSON") from exc


class Prober:
    """Probes endpoints through the worker's one `Fetcher`. Holds no per-endpoint state."""

    def __init__(self, fetcher: Fetcher, *, busy_threshold_s: float) -> None:
        self._fetcher = fetcher
        self._busy_threshold_s = busy_threshold_s

    async def _get(self, endpoint: Endpoint, path: str) -> Answer:
        return await self._fetcher.get(
            endpoint.url, path, endpoint.headers, endpoint.check_timeout_s, label=endpoint.name
        )

    async def probe(self, endpoint: Endpoint, plan: Plan | None = None) -> ProbeResult:
        """Probe once. Never raises for anything the endpoint does (only cancellation propagates).

        `plan` says which rarely-changing routes to read (default: all); those skipped are "skipped" in the
        result, and the tracker keeps their last known values.
        """
        started = time.monotonic()
        try:
            answer = await self._get(endpoint, endpoint.health_check_path)
        except FETCH_ERRORS as exc:
            return ProbeResult(EndpointStatus.OFFLINE, None, describe_transport_error(exc, endpoint.check_timeout_s))
        latency_s = time.monotonic() - started
        latency_ms = round(latency_s * 1000, 3)

        lists_models = endpoint.health_check_path == endpoint.model_path
        models: Aux[tuple[str, ...]] = Aux.skipped()
        body_ok = True
        error: str | None = None
        if 200 <= answer.status < 300 and lists_models:
            try:
                models = Aux("ok", parse_model_list(_parse_json(answer.body)))
            except InventoryError as exc:
                body_ok, error = False, f"garbage from {endpoint.health_check_path}: {exc}"
        status = classify(answer.status, body_ok=body_ok, latency_s=latency_s, busy_threshold_s=self._busy_threshold_s)
        if status is EndpointStatus.RATE_LIMITED:
            retry_after_s = parse_retry_after_s(answer.retry_after, time.time())
            return ProbeResult(status, latency_ms, _error_text(answer), retry_after_s)
        if status not in (EndpointStatus.HEALTHY, EndpointStatus.BUSY):
            return ProbeResult(status, latency_ms, error or _error_text(answer))
        return await self._with_inventory(endpoint, status, latency_ms, models, lists_models, plan or Plan())

    async def _with_inventory(
        self,
        endpoint: Endpoint,
        status: EndpointStatus,
        latency_ms: float,
        models: Aux[tuple[str, ...]],
        lists_models: bool,
        plan: Plan,
    ) -> ProbeResult:
        profile = endpoint.profile
        listing_changed = not lists_models or plan.known_models is None or models.value != plan.known_models
        reads: dict[str, Awaitable[Aux[Any]]] = {}
        for key, path, parse, wanted in (
            ("pulled", profile.inventory_path, parse_pulled, plan.full or listing_changed),
            ("loaded", profile.loaded_path, parse_loaded, True),
            ("engines", profile.engines_path, parse_engines, plan.full),
            ("version", profile.version_path, parse_version, plan.full),
            ("models", None if lists_models else endpoint.model_path, parse_model_list, not lists_models),
        ):
            if wanted and path is not None:
                reads[key] = self._aux(endpoint, path, parse)
        # Only the reads that happen run (concurrently when several); a route the profile lacks is "absent",
        # one not due this time "skipped". The usual case is one read (/engines/ps): no task for it.
        if len(reads) == 1:
            ((key, read),) = reads.items()
            done = {key: await read}
        else:
            done = dict(zip(reads, await asyncio.gather(*reads.values()), strict=True))
        absent: Aux[Any] = Aux("absent")

        def outcome(key: str, path: str | None) -> Aux[Any]:
            return done.get(key) or (absent if path is None else Aux.skipped())

        return ProbeResult(
            status,
            latency_ms,
            models=models if lists_models else outcome("models", endpoint.model_path),
            pulled=outcome("pulled", profile.inventory_path),
            loaded=outcome("loaded", profile.loaded_path),
            engines=outcome("engines", profile.engines_path),
            version=outcome("version", profile.version_path),
        )

    async def _aux(self, endpoint: Endpoint, path: str, parse: Callable[[object], T]) -> Aux[T]:
        try:
            answer = await self._get(endpoint, path)
        except FETCH_ERRORS as exc:
            return Aux("failed", error=f"{path}: {describe_transport_error(exc, endpoint.check_timeout_s)}")
        kind = aux_kind_for_status(answer.status)
        if kind != "ok":
            return Aux(kind, error=f"{path}: {_error_text(answer)}")
        try:
            return Aux("ok", parse(_parse_json(answer.body)))
        except InventoryError as exc:
            return Aux("failed", error=f"{path}: garbage: {exc}")
