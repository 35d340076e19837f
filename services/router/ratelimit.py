"""Token buckets (global and per client) and per-client concurrency, in one router process.

`take()` is the whole bucket rule as a pure function of (bucket, clock, limit); `Limiter` only keeps the buckets
and the in-flight counts. A client is its key's name when it sent one, else its address (after trusted proxies):
no other client-sent text ever names a bucket. Limits are per router process: with `PIER_WORKERS=N` a client
can reach N times the rate (the docs say so).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

# Above this many client buckets, the ones that have refilled completely (idle clients) are dropped: memory
# stays bounded however many addresses appear, and a dropped bucket comes back full, as it was.
PRUNE_ABOVE = 10_000
KEY_PREFIX = "key:"  # clients named by their key's name; "ip:" for the rest


@dataclass(frozen=True, slots=True)
class Limit:
    """`rate_per_s` tokens a second, up to `burst` (at least 1) saved up."""

    rate_per_s: float
    burst: int

    @classmethod
    def of(cls, rate_per_s: float, burst: int) -> Limit | None:
        if rate_per_s <= 0:
            return None
        return cls(rate_per_s, burst if burst > 0 else max(1, math.ceil(rate_per_s)))


# Bucket and Taken are built on every limited request: plain slotted classes (a frozen dataclass costs a
# setattr call per field); nothing mutates them after construction.
@dataclass(slots=True)
class Bucket:
    tokens: float
    stamp: float  # clock reading at `tokens`


@dataclass(slots=True)
class Taken:
    """A bucket's answer: allowed or not, what is left, and when to come back."""

    allowed: bool
    bucket: Bucket
    limit: Limit
    retry_after_s: float  # 0 when allowed

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.bucket.tokens))

    @property
    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.limit.burst - self.bucket.tokens) / self.limit.rate_per_s)


def take(bucket: Bucket | None, now: float, limit: Limit) -> Taken:
    """Refill `bucket` to `now`, then take one token if there is one. A new client starts with a full bucket."""
    if bucket is None:
        tokens = float(limit.burst)
    else:
        tokens = min(float(limit.burst), bucket.tokens + max(0.0, now - bucket.stamp) * limit.rate_per_s)
    if tokens >= 1.0:
        return Taken(True, Bucket(tokens - 1.0, now), limit, 0.0)
    return Taken(False, Bucket(tokens, now), limit, (1.0 - tokens) / limit.rate_per_s)


class Limiter:
    """The buckets and in-flight counts of one process (one event loop: no locks)."""

    def __init__(self, global_limit: Limit | None, client_limit: Limit | None, max_concurrent: int) -> None:
        self.global_limit = global_limit
        self.client_limit = client_limit
        self.max_concurrent = max_concurrent
        self._global: Bucket | None = None
        self._clients: dict[str, Bucket] = {}
        self.inflight: Counter[str] = Counter()

    def admit(self, client: str, now: float, own: Limit | None = None) -> tuple[Taken | None, Taken | None]:
        """Charge one request to the client's bucket (its own limit, else the default) and the global one.

        Returns (client's answer, global answer); either is None when that limit is off. The global bucket is
        charged only when the client's allowed it: one client over its limit does not spend everyone's budget.
        """
        limit = own or self.client_limit
        mine: Taken | None = None
        if limit is not None:
            mine = take(self._clients.get(client), now, limit)
            self._clients[client] = mine.bucket
            if not mine.allowed:
                return mine, None
            if len(self._clients) > PRUNE_ABOVE:
                self._prune(now)
        shared: Taken | None = None
        if self.global_limit is not None:
            shared = take(self._global, now, self.global_limit)
            self._global = shared.bucket
            if not shared.allowed and mine is not None:
                self._clients[client] = Bucket(mine.bucket.tokens + 1.0, now)  # refused: the client keeps its token
        return mine, shared

    def _prune(self, now: float) -> None:
        limit = self.client_limit
        rate = limit.rate_per_s if limit is not None else 1.0
        burst = limit.burst if limit is not None else 1
        # Key buckets (few, each with its own limit) stay; address buckets are the ones that can be many.
        full = [
            name
            for name, b in self._clients.items()
            if not name.startswith(KEY_PREFIX) and b.tokens + (now - b.stamp) * rate >= burst
        ]
        for name in full:
            del self._clients[name]

    def enter(self, client: str, own_max: int = 0) -> bool:
        """Count one more request in flight for `client`; False (and not counted) when it is at its limit."""
        limit = own_max or self.max_concurrent
        if limit > 0 and self.inflight[client] >= limit:
            return False
        self.inflight[client] += 1
        return True

    def leave(self, client: str) -> None:
        left = self.inflight[client] - 1
        if left > 0:
            self.inflight[client] = left
        else:
            del self.inflight[client]

    @property
    def clients(self) -> int:
        return len(self._clients)
