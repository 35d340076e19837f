"""Conditional GETs for the status JSON: an `ETag` on every answer, `304 Not Modified` when `If-None-Match`
names it, so a status page polling every few seconds costs a hash and a few bytes while nothing changes.

Some answers carry values that change on every read without the state changing (an age, an uptime); their
tag is computed without them and marked weak (`W/`): the representation is equivalent, not byte-identical.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp import web

CACHE_CONTROL = "no-cache"  # a cache may keep it, but must revalidate (with the ETag) before every use


def tag_of(basis: bytes, *, weak: bool) -> str:
    digest = hashlib.blake2b(basis, digest_size=12).hexdigest()
    return f'W/"{digest}"' if weak else f'"{digest}"'


def matches(if_none_match: str | None, tag: str) -> bool:
    """RFC 9110's weak comparison of `If-None-Match` against `tag` (`*` matches any current representation)."""
    if not if_none_match:
        return False
    wanted = tag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


def answer(request: web.Request, data: Any, *, stable: Any = None) -> web.Response:
    """`data` as JSON with an ETag, or 304 when the client has it already.

    `stable`: `data` without its per-read values (ages, uptimes); when given, the tag is weak and taken from it.
    """
    body = json.dumps(data).encode()
    tag = tag_of(body if stable is None else json.dumps(stable).encode(), weak=stable is not None)
    headers = {"ETag": tag, "Cache-Control": CACHE_CONTROL}
    if matches(request.headers.get("If-None-Match"), tag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type="application/json", headers=headers)
