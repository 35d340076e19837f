"""The router's one error tree, and how each error becomes JSON in its API's shape (at one boundary).

Every answer the router gives on its own is a `RouterError`: status, OpenAI `type` and `code`, a message, and
optional headers (Retry-After). `error_response()` renders it as OpenAI's `{"error":{"message","type","code"}}`
or Anthropic's `{"type":"error","error":{"type","message"}}`. Upstream errors that are not JSON (DMR answers
text/plain) are rewritten into the same shapes with their message and status kept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from aiohttp import web

from shared import jsontext

log = logging.getLogger(__name__)

REQUEST_ID_KEY: web.RequestKey[str] = web.RequestKey("pier.request_id", str)


class Flavour(StrEnum):
    """Which API's error shape a route answers with."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"


ANTHROPIC_PREFIXES = ("/anthropic/", "/olla/anthropic/", "/v1/messages")


def flavour_of(path: str) -> Flavour:
    return Flavour.ANTHROPIC if path.startswith(ANTHROPIC_PREFIXES) else Flavour.OPENAI


class RouterError(Exception):
    """An answer the router gives itself instead of an endpoint's."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self, message: str, *, headers: Mapping[str, str] | None = None, status: int | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers: Mapping[str, str] = headers or {}
        self.extra = extra


class InvalidRequest(RouterError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class ModelRequired(InvalidRequest):
    code = "model_required"


class ModelNotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: str, available: Sequence[str]) -> None:
        shown = ", ".join(available[:50]) + (", ..." if len(available) > 50 else "")
        message = f"model {model!r} not found; available models: {shown or 'none'}"
        super().__init__(message, param="model", available_models=list(available))


class RouteNotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(RouterError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class ManagementNotProxied(MethodNotAllowed):
    code = "management_not_proxied"

    def __init__(self, what: str, command: str) -> None:
        super().__init__(
            f"Pier does not proxy model management ({what}); run `{command}` against each Docker Model Runner",
            command=command,
        )


class BodyTooLarge(RouterError):
    status = 413
    type = "invalid_request_error"
    code = "body_too_large"


class HeadersTooLarge(RouterError):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"


class Unavailable(RouterError):
    """503: nothing can serve the request now; `Retry-After` says when to try again."""

    status = 503
    type = "unavailable_error"
    code = "no_endpoint_available"

    def __init__(self, message: str, *, retry_after_s: int, **extra: Any) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)}, **extra)


class EngineUnavailable(Unavailable):
    code = "engine_unavailable"


class CapacityExceeded(Unavailable):
    code = "capacity_exceeded"


class CircuitOpen(Unavailable):
    code = "circuit_open"


class UpstreamUnreachable(RouterError):
    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"


class UpstreamTimeout(RouterError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class InternalError(RouterError):
    pass


_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    412: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "unavailable_error",
    504: "upstream_error",
}

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    """Anthropic's error `type` for an HTTP status (its documented names; unknown ones by class)."""
    return _ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(err: RouterError, flavour: Flavour) -> bytes:
    """The JSON body for one of the router's own errors."""
    if flavour is Flavour.ANTHROPIC:
        inner_a = {"type": anthropic_error_type(err.status), "message": err.message}
        payload: dict[str, Any] = {"type": "error", "error": inner_a}
    else:
        inner: dict[str, Any] = {"message": err.message, "type": err.type, "code": err.code, "param": None}
        inner.update(err.extra)
        payload = {"error": inner}
    return json.dumps(payload).encode()


def error_response(err: RouterError, flavour: Flavour, request_id: str | None = None) -> web.Response:
    response = web.Response(status=err.status, body=error_body(err, flavour), content_type="application/json")
    for name, value in err.headers.items():
        response.headers[name] = value
    if request_id:
        response.headers["X-Pier-Request-ID"] = request_id
    return response


def from_http_exception(exc: web.HTTPException, method: str, path: str) -> RouterError:
    """aiohttp's own answers (no route, wrong method, body too large) as router errors."""
    if exc.status == 404:
        return RouteNotFound(f"no route for {method} {path}")
    if exc.status == 405:
        allowed = sorted(getattr(exc, "allowed_methods", ()) or ())
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        headers = {"Allow": ", ".join(allowed)} if allowed else None
        return MethodNotAllowed(f"method {method} not allowed on {path}{hint}", headers=headers)
    if exc.status == 413:
        return BodyTooLarge("request body too large")
    return RouterError(exc.reason or "error", status=exc.status)


def is_json(content_type: str) -> bool:
    main = content_type.partition(";")[0].strip().lower()
    return main == "application/json" or main.endswith("+json")


def normalise_upstream_error(status: int, content_type: str, body: bytes, flavour: Flavour) -> bytes | None:
    """Rewrite an endpoint's non-JSON error (DMR's text/plain) into the route's JSON shape; None: keep it as is.

    The message is the endpoint's own text (trimmed, bounded), the status is unchanged by the caller.
    """
    if is_json(content_type):
        return None
    text = body.decode("utf-8", errors="replace").strip()
    if content_type.lower().startswith("text/html") or not text:
        text = f"upstream answered {status}" + (f": {text[:200]}" if text and "<" not in text else "")
    if len(text) > 4000:
        text = text[:4000] + "..."
    if flavour is Flavour.ANTHROPIC:
        payload: dict[str, Any] = {"type": "error", "error": {"type": anthropic_error_type(status), "message": text}}
    else:
        kind = _OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        payload = {"error": {"message": text, "type": kind, "code": status, "param": None}}
    return json.dumps(payload).encode()


def loading_message(body: bytes) -> bool:
    """True for llama.cpp's 503 `{"error":{"code":503,"message":"Loading model",...}}`."""
    try:
        data = jsontext.loads(body)
    except ValueError:  # JSONTooDeep included: an endpoint's nesting must not crash the retry decision
        return b"loading model" in body.lower()
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return isinstance(message, str) and "loading model" in message.lower()


def check_header_size(request: web.Request, max_header_bytes: int) -> None:
    """431 when the request's headers together exceed the limit (aiohttp bounds each line, not the total)."""
    size = 0
    for name, value in request.raw_headers:
        size += len(name) + len(value) + 4
    if size > max_header_bytes:
        raise HeadersTooLarge(f"request headers of {size} bytes are over the limit of {max_header_bytes}")


def answer_error(request: web.Request, exc: Exception) -> web.Response:
    """The error boundary's answer for `exc`: JSON in the route's API shape, never a traceback.

    Called from inside an `except` block; re-raises an unexpected error when a response is already under way
    (nothing can replace it: the connection is closed).
    """
    if isinstance(exc, RouterError):
        error = exc
    elif isinstance(exc, web.HTTPException):
        error = from_http_exception(exc, request.method, request.path)
    else:
        if request.writer.output_size > 0:
            raise exc
        log.error("unexpected error on %s %s", request.method, request.path, exc_info=exc)
        error = InternalError("internal error in the router (see its log)")
    return error_response(error, flavour_of(request.path), request.get(REQUEST_ID_KEY))
