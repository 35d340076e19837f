"""The emulator's aiohttp application: the request log, faults, CORS and DMR's routes."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from tests.emulator import admin, anthropic, inference, management
from tests.emulator.config import EmulatorConfig
from tests.emulator.content import text_error
from tests.emulator.errors import DmrError, llama_loading
from tests.emulator.faults import ADMIN_PREFIX, Fault
from tests.emulator.keys import DROP_AFTER, EMULATOR, RECORD, SERVER_CLOSED
from tests.emulator.state import Emulator, RequestRecord

LOG_BODY_MAX_BYTES = 1024 * 1024
LOCAL_HOSTS = {"localhost", "127.0.0.1", "[::1]", "::1"}


def build_app(config: EmulatorConfig | None = None, *, emulator: Emulator | None = None) -> web.Application:
    """The main application. In-process use: `build_app(EmulatorConfig(...))` and serve it on a real port
    (the `refuse` fault needs `EmulatorServer`, which owns the listener)."""
    em = emulator or Emulator(config or EmulatorConfig())
    app = web.Application(middlewares=[_emulate], client_max_size=4 * inference.MAX_BODY_BYTES)
    app[EMULATOR] = em
    app.on_response_prepare.append(_on_prepare)
    admin.add_routes(app)
    _add_dmr_routes(app)
    return app


def _add_dmr_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", management.root)
    for prefix in ("/engines", "/engines/{engine}", ""):
        r.add_post(f"{prefix}/v1/chat/completions", inference.chat_or_completion)
        r.add_post(f"{prefix}/v1/completions", inference.chat_or_completion)
        r.add_post(f"{prefix}/v1/embeddings", inference.embeddings)
        r.add_post(f"{prefix}/v1/messages", anthropic.messages)
        r.add_post(f"{prefix}/v1/messages/count_tokens", anthropic.count_tokens)
        r.add_get(f"{prefix}/v1/models", management.openai_models)
        r.add_get(f"{prefix}/v1/models/{{name:.+}}", management.openai_models)
    r.add_post("/anthropic/v1/messages", anthropic.messages)
    r.add_post("/anthropic/v1/messages/count_tokens", anthropic.count_tokens)
    r.add_post("/tokenize", anthropic.tokenize)
    r.add_get("/models", management.management_models)
    r.add_post("/models/create", management.create_model)
    r.add_get("/models/{name:.+}", management.management_model)
    r.add_delete("/models/{name:.+}", management.delete_model)
    r.add_get("/engines/ps", management.ps)
    r.add_get("/engines/status", management.status)
    r.add_post("/engines/unload", management.unload)
    r.add_post("/engines/_configure", management.configure)
    r.add_post("/engines/{engine}/_configure", management.configure)
    r.add_get("/version", management.version)
    r.add_get("/metrics", management.metrics)


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-Emulator-Name"] = request.app[EMULATOR].config.name
    origin = request.headers.get("Origin")
    if origin is not None and response.status != 403:
        response.headers["Access-Control-Allow-Origin"] = origin


@web.middleware
async def _emulate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(ADMIN_PREFIX):
        return await handler(request)
    em = request.app[EMULATOR]
    record = em.record(await _record(request, em.counters["requests"] + 1))
    request[RECORD] = record
    try:
        response = await _serve(request, handler, em, record)
    except asyncio.CancelledError:
        # aiohttp cancels the handler when the client goes away (handler_cancellation=True).
        if not request.get(SERVER_CLOSED) and not record.disconnected:
            record.disconnected = True
            em.counters["disconnects"] += 1
        raise
    # An aborted connection answered nothing; a dropped one sent its headers.
    record.status = response.status if response.prepared or not request.get(SERVER_CLOSED) else None
    record.finished = not (record.disconnected or request.get(SERVER_CLOSED))
    return response


async def _serve(request: web.Request, handler: Handler, em: Emulator, record: RequestRecord) -> web.StreamResponse:
    if em.listener is not None and not em.listener.listening:
        # A keep-alive connection opened before `refuse`: DMR being down kills it too.
        record.fault = "refuse"
        return _abort(request)
    fault = em.fault.take(request.path)
    if fault is not None:
        record.fault = fault.mode
        em.counters["faults_applied"] += 1
        early = await _apply_fault(request, fault)
        if early is not None:
            return early
    denied = _cors_denied(request, em)
    if denied is not None:
        return denied
    try:
        response = await handler(request)
    except DmrError as exc:
        response = exc.response(request.path)
    except web.HTTPException as exc:
        if exc.status >= 400:
            response = text_error(exc.status, _go_text(exc.status))
        else:
            raise
    if isinstance(request.get(DROP_AFTER), int) and not response.prepared:
        return await _drop_after_headers(request, response)
    return response


async def _apply_fault(request: web.Request, fault: Fault) -> web.StreamResponse | None:
    mode = fault.mode
    if mode in ("reset", "refuse"):
        return _abort(request)
    if mode == "status":
        headers: dict[str, str] = {}
        if fault.status == 429:
            headers["Retry-After"] = str(fault.retry_after if fault.retry_after is not None else 1)
        if request.path.startswith("/anthropic/"):
            return DmrError(fault.status, fault.status_text()).response(request.path)
        return text_error(fault.status, fault.status_text(), headers)
    if mode == "loading":
        return llama_loading()
    if mode == "hang":
        await asyncio.Event().wait()  # until the client goes away and aiohttp cancels us
    if mode == "slow_first_byte":
        await asyncio.sleep(fault.delay_ms / 1000.0)
    if mode == "drop":
        request[DROP_AFTER] = fault.drop_after
    if mode == "garbage":
        return _raw(request, GARBAGE)
    if mode == "trickle":
        return await _trickle(request, fault.delay_ms or 1000.0)
    return None


# What a confused peer might send on an HTTP port: no status line, binary noise, no framing.
GARBAGE = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03SSH-2.0-garbage\r\n\x00\xff\xfe{not http at all\r\n\r\n"


def _raw(request: web.Request, data: bytes) -> web.StreamResponse:
    """Write bytes straight to the connection, bypassing HTTP framing, then close it."""
    request[SERVER_CLOSED] = True
    if request.transport is not None:
        request.transport.write(data)
        request.transport.close()
    return web.Response(status=500)


async def _trickle(request: web.Request, delay_ms: float) -> web.StreamResponse:
    """A whole, valid answer written one byte at a time: the status line alone takes a quarter of a minute."""
    body = json.dumps({"error": {"message": "trickled", "type": "server_error"}}).encode()
    head = f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    request[SERVER_CLOSED] = True
    transport = request.transport
    for byte in head.encode() + body:
        if transport is None or transport.is_closing():
            break  # the client gave up on us
        transport.write(bytes([byte]))
        await asyncio.sleep(delay_ms / 1000.0)
    if transport is not None:
        transport.close()
    return web.Response(status=500)


def _abort(request: web.Request) -> web.StreamResponse:
    request[SERVER_CLOSED] = True
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=500)


async def _drop_after_headers(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """The `drop` fault on a plain response: send the headers (promising the full body), then close."""
    body = response.body if isinstance(response, web.Response) and isinstance(response.body, bytes) else b""
    stream = web.StreamResponse(status=response.status, headers=response.headers)
    stream.content_length = max(len(body), 1)
    await stream.prepare(request)
    request[SERVER_CLOSED] = True
    if request.transport is not None:
        request.transport.close()
    return stream


def _go_text(status: int) -> str:
    return {404: "not found", 405: "method not allowed"}.get(status, "error")


def _origin_allowed(origin: str, em: Emulator) -> bool:
    allowed = em.config.allowed_origins
    if "*" in allowed or origin in allowed:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and (parts.hostname or "") in LOCAL_HOSTS


def _cors_denied(request: web.Request, em: Emulator) -> web.StreamResponse | None:
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    if not _origin_allowed(origin, em):
        return text_error(403, "Origin not allowed")
    if request.method == "OPTIONS":
        resp = web.Response(status=204)
        resp.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
        resp.headers["Access-Control-Allow-Headers"] = request.headers.get("Access-Control-Request-Headers", "*")
        return resp
    return None


async def _record(request: web.Request, seq: int) -> RequestRecord:
    body: Any = None
    if request.can_read_body:
        raw = await request.read()
        if len(raw) > LOG_BODY_MAX_BYTES:
            body = f"<{len(raw)} bytes>"
        elif raw:
            text = raw.decode("utf-8", errors="replace")
            try:
                body = json.loads(text)
            except (ValueError, RecursionError):  # the log keeps a too-deep body as text
                body = text
    return RequestRecord(
        id=seq,
        method=request.method,
        path=request.path,
        query=dict(request.query),
        headers=dict(request.headers),
        body=body,
        at=time.time(),
    )
