"""Conversation affinity: the next turn of a conversation goes where its prompt cache is.

A pure function over the candidates `routing.select` chose, layered on the balancers: a request without a
session key is routed exactly as before, and affinity never beats health, the model filter or failover (it only
reorders the routable candidates of the top tier, and every other candidate stays behind them in order).

Stateless across router replicas: a key goes to the endpoint that ranks it highest by rendezvous
(highest-random-weight) hashing over the top tier's routable, warm-first candidates. Every replica computes the
same answer from the same table, with no Redis on the request path and no session store; when an endpoint
leaves, only the sessions it held move. Bounded loads (consistent hashing with bounded loads): an endpoint whose
in-flight count is at (1 + ε) x the pool's mean (counting this request) passes the key to its next choice, so
a hot key mix cannot pile onto one endpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.router import sessions
from services.router.table import Candidate
from shared import jsontext

if TYPE_CHECKING:  # the settings module imports `sessions`; these are types only
    from services.router.routing import Decision
    from services.router.runtime import Runtime
    from services.router.settings import RouterSettings


@dataclass(frozen=True, slots=True)
class Placement:
    candidates: tuple[Candidate, ...]  # the chosen one first, the others after it in their order
    mark: str  # "hit": the key's first choice; "moved": its first choice was cold, full or over the load bound


def score(key: str, endpoint: str) -> int:
    """The rendezvous weight of `endpoint` for `key` (the highest wins)."""
    return int.from_bytes(hashlib.blake2b(f"{key}\0{endpoint}".encode(), digest_size=8).digest(), "big")


def place(
    candidates: Sequence[Candidate],
    key: str,
    model: str,
    inflight: Mapping[str, int],
    *,
    load_factor: float,
) -> Placement | None:
    """The candidates with the key's endpoint first, or None when affinity has nothing to choose between."""
    if not candidates:
        return None
    first = candidates[0]
    if first.unknown or first.blocked or first.full:
        return None  # no known healthy choice to make: the fallbacks stay as routing ordered them
    top = first.target
    tier = [
        c
        for c in candidates
        if c.target.priority == top.priority
        and c.target.status is top.status
        and not (c.unknown or c.blocked or c.full)
    ]
    if len(tier) < 2:
        return None
    weights = {c.target.name: score(key, c.target.name) for c in tier}
    warm = [c for c in tier if model in c.target.loaded]
    pool = warm if warm else tier  # warm first: a cold endpoint would load the model before its first token
    ranked = sorted(pool, key=lambda c: weights[c.target.name], reverse=True)
    total = sum(inflight.get(c.target.name, 0) for c in pool)
    bound = math.ceil((1.0 + load_factor) * (total + 1) / len(pool))
    chosen = next((c for c in ranked if inflight.get(c.target.name, 0) < bound), ranked[0])
    preferred = max(tier, key=lambda c: weights[c.target.name])
    order = (chosen, *(c for c in candidates if c is not chosen))
    return Placement(order, "hit" if chosen is preferred else "moved")


class Affinity:
    """The request path's one call: a session key from the request, then `place`. (No state of its own: the
    in-flight counts are the runtime's.)"""

    def __init__(self, settings: RouterSettings, runtime: Runtime) -> None:
        self._sources = settings.affinity_sources
        self._needs_body = sessions.needs_body(self._sources)
        # Only when the header source comes first may a header spare the body's parse: otherwise a body source
        # configured before it must be read first (the configured order decides).
        self._header_first = bool(self._sources) and self._sources[0] is sessions.Source.HEADER
        self._load_factor = settings.affinity_load_factor
        self._runtime = runtime

    def place(
        self,
        headers: Mapping[str, str],
        body: bytes,
        data: Mapping[str, Any] | None,
        decision: Decision,
        anthropic: bool,
    ) -> Placement | None:
        model = decision.model or ""
        sources = self._sources
        raw = sessions.from_headers(sources, headers) if self._header_first else None
        if raw is not None:  # a session header ranked first: no need to parse the body
            key: str | None = sessions.digest(model, sessions.Source.HEADER, raw)
        else:
            if data is None and self._needs_body:
                # The model was read without parsing the body; the key needs it (a malformed body: no key, and
                # the endpoint answers it as it would have).
                with contextlib.suppress(ValueError, UnicodeDecodeError):
                    parsed = jsontext.loads(body)
                    data = parsed if isinstance(parsed, dict) else None
            key = sessions.session_key(sources, headers, data, model, anthropic=anthropic)
        if key is None:
            return None
        return place(decision.candidates, key, model, self._runtime.inflight, load_factor=self._load_factor)
