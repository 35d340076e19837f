"""Every Redis key and stream name Pier uses, under one prefix. Nothing else in the code spells a key.

docs/state.md is the table of these: type, writer, readers, TTL.
"""

from __future__ import annotations

PREFIX = "pier:"

# Sorted set: endpoint name -> unix time of its last state write. Readers MGET the state keys it names;
# a name whose state key has expired is an endpoint whose writer died (shown as "unknown").
ENDPOINT_INDEX = f"{PREFIX}endpoints"

# Stream of `shared.state.Event` (field `event` holds the JSON, `kind` the kind, `traceparent` the trace).
EVENTS = f"{PREFIX}events"

# Stream of passive signals from routers to the health worker (e.g. "connection refused on endpoint X").
SIGNALS = f"{PREFIX}signals"

# String: the instance id of the health worker that holds the probing lease (PX-expiring).
HEALTH_LEASE = f"{PREFIX}lease:health"

# String: the instance id of the warm-up worker that holds the preloading lease (PX-expiring).
WARMUP_LEASE = f"{PREFIX}lease:warmup"

# Sorted set: "endpoint\x1fmodel" -> unix time of its last warm-state write.
WARM_INDEX = f"{PREFIX}warm"

# Hash {tokens, stamp}: the global rate-limit bucket shared by router replicas (PIER_RATE_LIMIT_SHARED).
RATE_GLOBAL = f"{PREFIX}ratelimit:global"

EVENTS_MAXLEN = 10_000
SIGNALS_MAXLEN = 1_000


def endpoint_state(name: str) -> str:
    """String (JSON `EndpointState`), TTL a few check intervals: refreshed on every probe."""
    return f"{PREFIX}endpoint:{name}"


def heartbeat(service: str, instance_id: str) -> str:
    """String (unix time), short TTL: a service instance is alive while this exists."""
    return f"{PREFIX}heartbeat:{service}:{instance_id}"


def heartbeat_pattern(service: str) -> str:
    return f"{PREFIX}heartbeat:{service}:*"


def warm_state(endpoint: str, model: str) -> str:
    """String (JSON `WarmState`), TTL a few warm-up intervals."""
    return f"{PREFIX}warm:{endpoint}:{model}"


def warm_member(endpoint: str, model: str) -> str:
    return f"{endpoint}\x1f{model}"


def rate_bucket(digest: str) -> str:
    """Hash {tokens, stamp}, PEXPIRE'd once full again: one client's shared rate-limit bucket. `digest` is a hash
    of the client's identity (services.router.sharedlimit.bucket_id): nothing a client sends is in a key."""
    return f"{PREFIX}ratelimit:client:{digest}"
