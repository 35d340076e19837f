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
# A model name: at least one character that is not white space (the router strips it, and an empty name is a 400).
# White space as Python's str.strip() sees it: ECMA's `\s` plus the separators U+001C-U+001F and U+0085.
_MODEL = {
    "type": "string",
    "minLength": 1,
    "pattern": "[^\\s\\x1c-\\x1f\\x85]",
    "description": "a model name; `smollm2` means `ai/smollm2:latest`",
}
_INFERENCE_BODY = {
    "type": "object",
    "required": ["model"],
    "properties": {"model": _MODEL},
    "additionalProperties": True,
}
# What the router itself checks of an Anthropic Messages body (anthropic_check.py) in both modes; the endpoint
# checks the rest. A body this schema allows is never refused by Pier's own check.
_TEXT_BLOCK = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
}
_TEXT = {"oneOf": [{"type": "string"}, {"type": "array", "items": _TEXT_BLOCK}]}
_ANTHROPIC_PROPERTIES: dict[str, Any] = {
    "model": _MODEL,
    "messages": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["role", "content"],
            "properties": {"role": {"enum": ["user", "assistant"]}, "content": _TEXT},
        },
    },
    "system": _TEXT,
    "stop_sequences": {"type": "array", "items": {"type": "string"}},
    "temperature": {"type": "number"},
    "top_p": {"type": "number"},
    "top_k": {"type": "integer", "minimum": 0},
    "metadata": {"type": "object"},
    "tools": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name", "input_schema"],
            "properties": {"name": {"type": "string"}, "type": {"const": "custom"}, "input_schema": {"type": "object"}},
        },
    },
    "tool_choice": {
        "oneOf": [
            {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["auto", "any", "none"]}}},
            {
                "type": "object",
                "required": ["type", "name"],
                "properties": {"type": {"const": "tool"}, "name": {"type": "string"}},
            },
        ]
    },
}
_ANTHROPIC_MESSAGES = {
    "type": "object",
    "required": ["model", "max_tokens", "messages"],
    "properties": {
        **_ANTHROPIC_PROPERTIES,
        "max_tokens": {"type": "integer", "minimum": 1},
        "stream": {"type": "boolean"},
    },
    "additionalProperties": True,
}
_ANTHROPIC_COUNT_TOKENS = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": _ANTHROPIC_PROPERTIES,
    "additionalProperties": True,
}


def _error_ref(family: Family) -> dict[str, Any]:
    name = "AnthropicError" if family is Family.ANTHROPIC else "OpenAIError"
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def _body_schema(path: str, family: Family) -> str:
    if family is not Family.ANTHROPIC:
        return "InferenceBody"
    return "AnthropicCountTokens" if path.endswith("/count_tokens") else "AnthropicMessages"


def _operation(method: str, path: str, family: Family) -> dict[str, Any]:
    error = _error_ref(family)
    client_error = {"description": "the router's or the endpoint's error, in the route's API shape", **error}
    responses: dict[str, Any]
    if method != "GET" and not (method == "POST" and path.endswith(_INFERENCE_TAILS)):
        # Model management: always refused (405), or refused earlier by access control (401, 403, 429).
        responses = {
            "405": {"description": "model management is not proxied: run `docker model …`", **error},
            "4XX": client_error,
        }
    else:
        responses = {
            "200": {"description": "the endpoint's answer (JSON, or an SSE stream when the body asks for one)"},
            "4XX": client_error,
            "5XX": {"description": "no endpoint could answer (502, 503 with Retry-After, 504)", **error},
        }
    op: dict[str, Any] = {"tags": [family.value], "responses": responses}
    # `{name:.+}`: a path parameter is never empty (an empty one is another path).
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in _PARAM.findall(path)
    ]
    if params:
        op["parameters"] = params
    if method == "POST" and path.endswith(_INFERENCE_TAILS):
        ref = f"#/components/schemas/{_body_schema(path, family)}"
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"$ref": ref}}}}
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
                "AnthropicMessages": _ANTHROPIC_MESSAGES,
                "AnthropicCountTokens": _ANTHROPIC_COUNT_TOKENS,
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
