"""Typed models of what lives in Redis: endpoint state, model inventory, warm state and events."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class EndpointStatus(StrEnum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    BUSY = "busy"
    OFFLINE = "offline"
    UNHEALTHY = "unhealthy"
    CONFIG_ERROR = "config_error"
    RATE_LIMITED = "rate_limited"

    @property
    def routable(self) -> bool:
        return self in (EndpointStatus.HEALTHY, EndpointStatus.BUSY)


class PulledModel(BaseModel):
    """A model present on the endpoint's disk (DMR `GET /models`)."""

    model_config = ConfigDict(frozen=True)
    name: str  # normalised first tag
    tags: tuple[str, ...] = ()
    id: str | None = None
    format: str | None = None
    size: str | None = None
    context_size: int | None = None
    # Optional details from the same listing (`created` and `config.*`); the router's model lists show them.
    created: int | None = None
    architecture: str | None = None
    parameters: str | None = None
    quantization: str | None = None


class LoadedModel(BaseModel):
    """A model in memory now (DMR `GET /engines/ps`)."""

    model_config = ConfigDict(frozen=True)
    name: str  # normalised
    backend: str | None = None
    mode: str | None = None
    loading: bool = False
    in_use: bool = False
    keep_alive: str | None = None
    last_used: str | None = None


class EndpointState(BaseModel):
    """What the health worker knows of one endpoint. Written whole on every probe; TTL shows a dead writer."""

    model_config = ConfigDict(frozen=True)
    name: str
    url: str
    type: str
    priority: int
    source: str = "static"  # static | docker | auto
    status: EndpointStatus = EndpointStatus.UNKNOWN
    latency_ms: float | None = None
    consecutive_failures: int = 0
    last_error: str | None = None
    last_success_at: float | None = None
    checked_at: float = Field(default_factory=time.time)
    next_check_at: float | None = None
    retry_after_until: float | None = None
    version: str | None = None
    # Normalised names the model route lists (pulled or loaded, depending on the DMR version).
    models: tuple[str, ...] = ()
    models_known: bool = False  # False until a model listing succeeded once
    pulled: tuple[PulledModel, ...] = ()
    pulled_known: bool = False  # the endpoint has an inventory route that answered
    loaded: tuple[LoadedModel, ...] = ()
    loaded_known: bool = False  # the endpoint has /engines/ps (old DMRs do not)
    engines: dict[str, str] = Field(default_factory=dict)
    ttl_s: float = 15.0
    writer: str = ""

    def all_models(self) -> frozenset[str]:
        """Every model this endpoint can serve: listed, pulled or loaded."""
        return frozenset(self.models) | {m.name for m in self.pulled} | {m.name for m in self.loaded}

    def loaded_names(self) -> frozenset[str]:
        return frozenset(m.name for m in self.loaded if not m.loading)

    def expired(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) > self.checked_at + self.ttl_s


class WarmPhase(StrEnum):
    COLD = "cold"  # wanted, not loaded (also: does not fit the runner limit, see `detail`)
    PULLING = "pulling"  # the warm-up worker is pulling it (`/models/create`)
    LOADING = "loading"  # a preload is in flight
    WARM = "warm"
    FAILED = "failed"  # the last pull or load failed: `last_error`, retried at `next_retry_at`


class WarmPolicy(StrEnum):
    PIN = "pin"  # never evicted: `_configure` with keep_alive -1, re-applied after a DMR restart
    KEEP = "keep"  # refreshed before DMR's keep_alive would evict it
    PRELOAD = "preload"  # loaded once when the endpoint becomes routable, then left to DMR


class WarmState(BaseModel):
    """What the warm-up worker knows of one (endpoint, model) it was asked to keep warm."""

    model_config = ConfigDict(frozen=True)
    endpoint: str
    model: str
    phase: WarmPhase
    policy: WarmPolicy = WarmPolicy.KEEP
    updated_at: float = Field(default_factory=time.time)
    last_error: str | None = None
    next_retry_at: float | None = None  # FAILED: when the next attempt is due (backoff)
    failures: int = 0  # consecutive failed attempts
    load_time_s: float | None = None  # the last measured load (cold to ready), seconds
    fits: bool = True  # False: the runner limit leaves no room for it (the list order decides)
    detail: str | None = None  # why it is in this phase, in words (e.g. "does not fit: runner limit 2")
    method: str | None = None  # how it was loaded: preload-only, configure, completion
    ttl_s: float = 60.0
    writer: str = ""


class EventKind(StrEnum):
    ENDPOINT_ADDED = "endpoint_added"
    ENDPOINT_REMOVED = "endpoint_removed"
    STATUS_CHANGED = "status_changed"
    MODELS_CHANGED = "models_changed"
    LOADED_CHANGED = "loaded_changed"
    VERSION_CHANGED = "version_changed"
    WARM_CHANGED = "warm_changed"
    ENDPOINT_DOWN = "endpoint_down"  # passive: a router saw a connection failure (also on SIGNALS)


class Event(BaseModel):
    """One change. Carries the new state whole, so a reader applies it without another Redis read."""

    model_config = ConfigDict(frozen=True)
    kind: EventKind
    endpoint: str
    at: float = Field(default_factory=time.time)
    state: EndpointState | None = None
    warm: WarmState | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
    traceparent: str | None = None
    writer: str = ""
