"""Which headers cross the proxy, in each direction, and the `X-Pier-*` headers the router adds.

Request: hop-by-hop headers, the client's credentials (`Authorization`, `X-Api-Key`, `Cookie`,
`Proxy-Authorization`), its `Origin` (DMR answers 403 to a foreign Origin) and its forwarding claims
(`Forwarded`, `X-Forwarded-*`, `X-Real-IP`, `X-Original-URL`) stay behind; `Host` and
`Content-Length` are the upstream request's own; the endpoint's configured headers/auth are added. Response:
hop-by-hop headers and `Set-Cookie` stay behind.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping, Sequence

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)

# `Expect` is answered by the router itself (the body is read before forwarding); a compressed request body
# arrives decompressed (aiohttp), so its `Content-Encoding` no longer applies; `X-Request-ID` is replaced by
# the router's request id so the endpoint's logs correlate with X-Pier-Request-ID.
_REQUEST_DROP = HOP_BY_HOP | {
    "host",
    "content-length",
    "content-encoding",
    "authorization",
    "x-api-key",  # the Anthropic SDK's credential header: the client's key is never an endpoint's
    "cookie",
    "origin",
    "expect",
    "x-request-id",
    # What a client claims about the path it came by: an endpoint (or a proxy in front of one) must not route
    # or trust on it. Pier reads X-Forwarded-For itself, from trusted proxies only (services.router.access).
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-real-ip",
    "x-original-url",
    "x-rewrite-url",
}
_RESPONSE_DROP = HOP_BY_HOP | {"set-cookie"}

VIA = "1.1 pier"
REQUEST_ID = "X-Pier-Request-ID"
PIER_NAMES = (REQUEST_ID, "X-Pier-Endpoint", "X-Pier-Model", "X-Pier-Route", "X-Pier-Attempts")
_RESPONSE_DROP_FOR_PIER = _RESPONSE_DROP | {name.lower() for name in PIER_NAMES}

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=@-]{0,127}")


_PLAIN_CONNECTION = frozenset({"keep-alive", "close", "upgrade"})


def _connection_tokens(headers: Mapping[str, str]) -> frozenset[str]:
    """Header names listed in `Connection` (hop-by-hop by declaration); the common values name none."""
    value = headers.get("Connection")
    if not value or value.lower() in _PLAIN_CONNECTION:
        return frozenset()
    return frozenset(token.strip().lower() for token in value.split(",") if token.strip())


_REQUEST_DROP_NAMES = tuple(sorted(_REQUEST_DROP))


def upstream_headers(client: CIMultiDictProxy[str], request_id: str) -> CIMultiDict[str]:
    """The client's headers as they go to an endpoint (before the endpoint's own headers are added)."""
    out = client.copy()
    if "Connection" in out:
        for name in _connection_tokens(out):
            out.popall(name, None)
    for name in _REQUEST_DROP_NAMES:
        out.popall(name, None)
    out["X-Request-ID"] = request_id
    if "Accept-Encoding" not in out:
        # Otherwise the HTTP client would ask for gzip on the client's behalf, and relay bytes it cannot read.
        out["Accept-Encoding"] = "identity"
    return out


def with_endpoint_headers(base: CIMultiDict[str], extra: Mapping[str, str]) -> CIMultiDict[str]:
    """`base` plus an endpoint's configured headers and auth (they replace same-named client headers)."""
    if not extra:
        return base
    merged = base.copy()
    merged.update(extra)
    return merged


def downstream_headers(
    upstream: CIMultiDictProxy[str], out: CIMultiDict[str] | None = None, pier: Sequence[tuple[str, str]] = ()
) -> CIMultiDict[str]:
    """An endpoint's response headers as the client gets them, plus the router's `pier` headers (from
    `pier_headers`: they replace same-named ones); `Via` gains the router. Added to `out` (or a new one) in one
    call: one pass, no copies."""
    drop = _RESPONSE_DROP_FOR_PIER if pier else _RESPONSE_DROP
    if "Connection" in upstream:
        drop = drop | _connection_tokens(upstream)
    kept: list[tuple[str, str]] = []
    via: str | None = None
    for name, value in upstream.items():
        lower = name.lower()
        if lower in drop:
            continue
        if lower == "via":
            via = f"{via}, {value}" if via else value
        else:
            kept.append((name, value))
    kept.append(("Via", f"{via}, {VIA}" if via else VIA))
    kept.extend(pier)
    if out is None:
        out = CIMultiDict()
    out.extend(kept)
    return out


def pier_headers(request_id: str, endpoint: str, model: str, route: str, attempts: int) -> tuple[tuple[str, str], ...]:
    """The `X-Pier-*` headers of an answer relayed from an endpoint."""
    # Same names, same order as PIER_NAMES (a literal: this runs on every request).
    return (
        (REQUEST_ID, request_id),
        ("X-Pier-Endpoint", endpoint),
        ("X-Pier-Model", model),
        ("X-Pier-Route", route),
        ("X-Pier-Attempts", str(attempts)),
    )


class RequestIds:
    """Request ids: a sane inbound `X-Request-ID` is echoed; otherwise a per-process prefix and a counter."""

    def __init__(self, *, trust_inbound: bool) -> None:
        self._trust = trust_inbound
        self._prefix = os.urandom(4).hex() + "-"
        self._counter = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"

    def for_request(self, inbound: str | None) -> str:
        if inbound and self._trust and _SANE_REQUEST_ID.fullmatch(inbound):
            return inbound
        return self.new()
