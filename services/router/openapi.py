"""`GET /openapi.json`: an OpenAPI 3.1 description of the routes this router serves, built from its own route
table (so it cannot drift from what is served), for users' tools and for fuzzers (Schemathesis).

Bodies are described as far as Pier itself reads them: an inference body is a JSON object with a string `model`
(the rest is the endpoint's to validate); errors are the route's API shape.
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from typing import Any

from aiohttp import web

from services.router.access import Family, family_of

_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")
# Paths whose last part names an inference operation (POST, forwarded to an endpoint).
_INFERENCE_TAILS = ("/chat/completions", "/completions", "/embeddings", "/responses", "/messages", "/count_tokens")

_OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": ["string", "integer", "null"]},
                "param": {"type": ["string", "null"]},
            },
        }
    },
}
_ANTHROPIC_ERROR = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
_INFERENCE_BODY = {
    "type": "object",
    "required": ["model"],
    "properties": {"model": {"type": "string", "description": "a model name; `smollm2` means `ai/smollm2:latest`"}},
    "additionalProperties": True,
}


def _error_ref(family: Family) -> dict[str, Any]:
    name = "AnthropicError" if family is Family.ANTHROPIC else "OpenAIError"
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def _operation(method: str, path: str, family: Family) -> dict[str, Any]:
    error = _error_ref(family)
    responses: dict[str, Any] = {
        "200": {"description": "the endpoint's answer (JSON, or an SSE stream when the body asks for one)"},
        "4XX": {"description": "the router's or the endpoint's error, in the route's API shape", **error},
        "5XX": {"description": "no endpoint could answer (502, 503 with Retry-After, 504)", **error},
    }
    op: dict[str, Any] = {"tags": [family.value], "responses": responses}
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in _PARAM.findall(path)
    ]
    if params:
        op["parameters"] = params
    if method == "POST" and path.endswith(_INFERENCE_TAILS):
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferenceBody"}}},
        }
    elif method != "GET":
        responses["405"] = {"description": "model management is not proxied: run `docker model …`", **error}
    return op


def describe(router: web.UrlDispatcher, version: str) -> dict[str, Any]:
    """The OpenAPI document for every route in `router` but the catch-all."""
    paths: dict[str, dict[str, Any]] = {}
    for resource in router.resources():
        canonical = resource.canonical
        if canonical.startswith("/{tail"):  # the catch-all
            continue
        path = _PARAM.sub(r"{\1}", canonical)
        family = family_of(canonical)
        for route in resource:
            method = route.method.upper()
            if method in ("HEAD", "*"):
                continue
            paths.setdefault(path, {})[method.lower()] = _operation(method, canonical, family)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Pier router",
            "version": version,
            "description": "One Docker Model Runner for many: OpenAI-, DMR-, Anthropic- and Olla-shaped routes.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {
                "OpenAIError": _OPENAI_ERROR,
                "AnthropicError": _ANTHROPIC_ERROR,
                "InferenceBody": _INFERENCE_BODY,
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "when PIER_ACCESS_CONTROL is on"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        "security": [{}, {"bearer": []}, {"apiKey": []}],
    }


class OpenApiRoute:
    """The handler; the document is built on first use (after every route is added) and kept."""

    def __init__(self, router: web.UrlDispatcher) -> None:
        self._router = router
        self._body: bytes | None = None

    async def handle(self, request: web.Request) -> web.Response:
        if self._body is None:
            self._body = json.dumps(describe(self._router, _version())).encode()
        return web.Response(body=self._body, content_type="application/json")


def _version() -> str:
    try:
        return metadata.version("pier")
    except metadata.PackageNotFoundError:
        return "dev"
