"""The next state of an endpoint from its previous state and one probe result: a pure function."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from services.health.backoff import backoff_delay_s
from services.health.classify import Aux, is_failure
from services.health.probe import ProbeResult
from shared.config import Endpoint
from shared.state import EndpointState, EndpointStatus

T = TypeVar("T")

MIN_TTL_S = 5.0


@dataclass(frozen=True, slots=True)
class Decision:
    """The state to publish and how long to wait before probing again."""

    state: EndpointState
    next_delay_s: float


def state_ttl_s(endpoint: Endpoint, next_delay_s: float) -> float:
    """A few intervals, and always longer than the wait until the next write (so backoff never expires it)."""
    interval_s, timeout_s = endpoint.check_interval_s, endpoint.check_timeout_s
    return max(MIN_TTL_S, 3 * interval_s + timeout_s, next_delay_s + interval_s + timeout_s)


def initial_state(endpoint: Endpoint, *, writer: str) -> EndpointState:
    """The state before the first probe: status unknown, nothing known about models."""
    return EndpointState(
        name=endpoint.name,
        url=endpoint.url,
        type=endpoint.type,
        priority=endpoint.priority,
        source=endpoint.source,
        ttl_s=state_ttl_s(endpoint, endpoint.check_interval_s),
        writer=writer,
    )


def _merge(aux: Aux[T], previous: T, previous_known: bool, empty: T) -> tuple[T, bool]:
    if aux.kind == "ok" and aux.value is not None:
        return aux.value, True
    if aux.kind == "ok":
        return empty, True
    if aux.kind == "absent":
        return empty, False
    return previous, previous_known


def next_state(
    endpoint: Endpoint,
    previous: EndpointState | None,
    result: ProbeResult,
    *,
    now: float,
    writer: str,
    max_backoff_s: float,
) -> Decision:
    """Fold one probe into the endpoint's state; compute the wait before the next probe.

    Failures (offline, unhealthy) count up and stretch the wait; any answer that is not a failure resets
    the count. A 429 waits for Retry-After (at least one interval). Inventory a probe could not read
    this time keeps its last known value; a route the endpoint does not have is "not known" (empty).
    """
    prev = previous if previous is not None else initial_state(endpoint, writer=writer)
    status = result.status
    failures = prev.consecutive_failures + 1 if is_failure(status) else 0
    retry_after_until: float | None = None
    if status is EndpointStatus.RATE_LIMITED:
        wait_s = max(endpoint.check_interval_s, result.retry_after_s or 0.0)
        retry_after_until = now + wait_s
    else:
        wait_s = backoff_delay_s(endpoint.check_interval_s, failures, max_backoff_s=max_backoff_s)
    succeeded = status in (EndpointStatus.HEALTHY, EndpointStatus.BUSY)

    models, models_known = _merge(result.models, prev.models, prev.models_known, ())
    pulled, pulled_known = _merge(result.pulled, prev.pulled, prev.pulled_known, ())
    loaded, loaded_known = _merge(result.loaded, prev.loaded, prev.loaded_known, ())
    engines, _ = _merge(result.engines, prev.engines, bool(prev.engines), {})
    version, _ = _merge(result.version, prev.version, prev.version is not None, None)

    state = EndpointState(
        name=endpoint.name,
        url=endpoint.url,
        type=endpoint.type,
        priority=endpoint.priority,
        source=endpoint.source,
        status=status,
        latency_ms=result.latency_ms,
        consecutive_failures=failures,
        last_error=None if succeeded else result.error,
        last_success_at=now if succeeded else prev.last_success_at,
        checked_at=now,
        next_check_at=now + wait_s,
        retry_after_until=retry_after_until,
        version=version,
        models=models,
        models_known=models_known,
        pulled=pulled,
        pulled_known=pulled_known,
        loaded=loaded,
        loaded_known=loaded_known,
        engines=engines,
        ttl_s=state_ttl_s(endpoint, wait_s),
        writer=writer,
    )
    return Decision(state, wait_s)
