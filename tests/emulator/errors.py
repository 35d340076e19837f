"""DMR's error answers: text/plain from DMR itself, JSON from llama.cpp, Anthropic's shape on `/anthropic/`."""

from __future__ import annotations

import json

from aiohttp import web

from tests.emulator.content import text_error

ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class DmrError(Exception):
    """Raised by handlers; the middleware turns it into the route's error shape."""

    def __init__(
        self, status: int, message: str, *, headers: dict[str, str] | None = None, anthropic: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.anthropic_message = anthropic or message

    def response(self, path: str) -> web.Response:
        if path.startswith("/anthropic/"):
            return anthropic_error(self.status, self.anthropic_message)
        return text_error(self.status, self.message, self.headers)


def anthropic_error(status: int, message: str) -> web.Response:
    kind = ANTHROPIC_TYPES.get(status, "api_error")
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.Response(status=status, text=json.dumps(body, separators=(",", ":")), content_type="application/json")


class StillLoading(DmrError):
    """Old DMR passed llama.cpp's 503 through while the model loaded."""

    def __init__(self) -> None:
        super().__init__(503, "Loading model")

    def response(self, path: str) -> web.Response:
        return llama_loading()


def llama_loading() -> web.Response:
    """llama.cpp's answer while its model is still loading (old DMR passed it through)."""
    body = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
    return web.Response(status=503, text=json.dumps(body, separators=(",", ":")), content_type="application/json")


def model_not_found(name: str) -> DmrError:
    return DmrError(404, "error while getting model: model not found", anthropic=f"Model not found: {name}")
