"""The status page: `GET /` for a browser, and its three plain files under `/internal/ui/`.

`GET /` answers the page only when the request's `Accept` prefers HTML (a browser); every other client keeps
DMR's own answer ("Docker Model Runner is running"), which tools that probe DMR's root rely on. The page is
static: its script reads the `/internal/status*` JSON and `/internal/events` every few seconds and changes
nothing. The files ship in the package (pyproject's package-data), are read once at start, and are served with
an ETag and a Content-Security-Policy that allows only these files and same-origin requests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from services.router.conditional import CACHE_CONTROL, matches, tag_of
from services.router.errors import RouterError

Handler = Callable[[web.Request], Awaitable[web.Response]]

# The files, their content types; nothing else under /internal/ui/ exists.
ASSETS = {
    "index.html": "text/html",
    "pier.css": "text/css",
    "pier.js": "text/javascript",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
HTML_TYPES = ("text/html", "application/xhtml+xml")


class AssetNotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


def _accepted(accept: str) -> list[tuple[str, float]]:
    """`Accept` as (media range, q) pairs; a malformed q counts as 0 (not accepted)."""
    out: list[tuple[str, float]] = []
    for part in accept.split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        if not media:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(value)))
                except ValueError:
                    q = 0.0
        out.append((media.lower(), q))
    return out


def wants_html(accept: str | None) -> bool:
    """True when `Accept` names HTML itself (not only through `*/*`) and ranks it at least as high as plain text
    and JSON: browsers do; curl, SDKs and DMR clients (no Accept, `*/*`, `application/json`) do not."""
    if not accept:
        return False
    pairs = _accepted(accept)
    html = max((q for media, q in pairs if media in HTML_TYPES), default=0.0)
    if html <= 0:
        return False
    others = max((q for media, q in pairs if media in ("text/plain", "application/json")), default=0.0)
    return html >= others


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """The page's files from the installed package (wheel, image or source tree)."""
    folder = resources.files("services.router") / "static"
    out: dict[str, Asset] = {}
    for name, content_type in ASSETS.items():
        body = (folder / name).read_bytes()
        out[name] = Asset(body, content_type, tag_of(body, weak=False))
    return out


class StatusPage:
    """`GET /` (page or DMR's text) and `GET /internal/ui/{asset}`."""

    def __init__(self, plain_root: Handler) -> None:
        self._plain_root = plain_root  # DMR's answer at `/` (`StatusRoutes.root`)
        self._assets = load_assets()

    def _serve(self, request: web.Request, asset: Asset) -> web.Response:
        headers = {"ETag": asset.etag, "Cache-Control": CACHE_CONTROL, **SECURITY_HEADERS}
        if matches(request.headers.get("If-None-Match"), asset.etag):
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers)

    async def asset(self, request: web.Request) -> web.Response:
        found = self._assets.get(request.match_info["asset"])
        if found is None:
            raise AssetNotFound(f"no such file of the status page: {request.match_info['asset'][:100]!r}")
        return self._serve(request, found)

    async def root(self, request: web.Request) -> web.Response:
        """The page for a browser, DMR's text for everyone else; `Vary: Accept` either way (caches)."""
        if wants_html(request.headers.get("Accept")):
            response = self._serve(request, self._assets["index.html"])
        else:
            response = await self._plain_root(request)
        response.headers["Vary"] = "Accept"
        return response
