"""Turning what a probe saw into a status: pure functions, table-tested without I/O."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from shared.h1 import BadResponse
from shared.h1client import UpstreamDisconnected
from shared.state import EndpointStatus

T = TypeVar("T")

# A route that answers one of these does not exist on this endpoint (an older DMR, another server kind).
ABSENT_ROUTE_STATUSES = frozenset({404, 405, 501})


def classify(http_status: int | None, *, body_ok: bool, latency_s: float, busy_threshold_s: float) -> EndpointStatus:
    """The status one health-route probe implies.

    `http_status` None means no answer (refused, reset, DNS failure, timeout): offline. 401/403 are a
    configuration problem (wrong credentials), not an outage; 429 is rate limiting; a 2xx whose body is
    not the route's shape is garbage (unhealthy); a good answer slower than the threshold is busy.
    """
    if http_status is None:
        return EndpointStatus.OFFLINE
    if http_status in (401, 403):
        return EndpointStatus.CONFIG_ERROR
    if http_status == 429:
        return EndpointStatus.RATE_LIMITED
    if not 200 <= http_status < 300 or not body_ok:
        return EndpointStatus.UNHEALTHY
    if latency_s > busy_threshold_s:
        return EndpointStatus.BUSY
    return EndpointStatus.HEALTHY


def is_failure(status: EndpointStatus) -> bool:
    """Statuses that count towards backoff. config_error and rate_limited have their own pacing."""
    return status in (EndpointStatus.OFFLINE, EndpointStatus.UNHEALTHY)


def describe_transport_error(exc: BaseException, timeout_s: float) -> str:
    """A short, stable text for `last_error` (no addresses or object reprs that change every probe)."""
    if isinstance(exc, TimeoutError):
        return f"timeout after {timeout_s:g}s"
    if isinstance(exc, socket.gaierror):
        return "DNS lookup failed"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, UpstreamDisconnected):
        return "server closed the connection"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, BadResponse):
        return f"bad response: {exc}"[:200]
    if isinstance(exc, OSError):
        return f"cannot connect: {exc.strerror or type(exc).__name__}"
    return f"{type(exc).__name__}: {exc}"[:200]


AuxKind = Literal["ok", "absent", "failed", "skipped"]


@dataclass(frozen=True, slots=True)
class Aux(Generic[T]):
    """The outcome of one inventory route: a value, the route's absence, or nothing learnt this time."""

    kind: AuxKind
    value: T | None = None
    error: str | None = None

    @staticmethod
    def skipped() -> Aux[T]:
        return Aux("skipped")


def aux_kind_for_status(http_status: int) -> AuxKind:
    """An inventory route's HTTP status: 2xx read it, 404/405/501 the route is absent, else try again later."""
    if 200 <= http_status < 300:
        return "ok"
    if http_status in ABSENT_ROUTE_STATUSES:
        return "absent"
    return "failed"
