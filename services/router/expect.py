"""The `Expect` header: `100-continue` is answered as aiohttp does; any other expectation gets a 417 in the
route's API shape (aiohttp's own answer is text/plain, sent before any handler or middleware could see it)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.web_urldispatcher import _default_expect_handler

from services.router.errors import RouterError, error_response, flavour_of


class ExpectationFailed(RouterError):
    status = 417
    type = "invalid_request_error"
    code = "expectation_failed"


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """aiohttp's `expect_handler` for every route: None lets the request go on."""
    if request.headers.get("Expect", "").strip().lower() == "100-continue":
        await _default_expect_handler(request)
        return None
    if request.version < (1, 1):
        return None  # HTTP/1.0 has no expectations: the header is ignored, as aiohttp does
    response = error_response(ExpectationFailed("only `Expect: 100-continue` is supported"), flavour_of(request.path))
    response.force_close()  # the client may be holding back a body it meant to send: do not read it as a request
    return response
