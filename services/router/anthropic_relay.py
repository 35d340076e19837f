"""The translated leg of an Anthropic request: what the exchanger needs to send it and to answer the client.

`Leg` says how one attempt at one endpoint goes (passthrough to the native route, translation through
`/v1/chat/completions`, or llama-server's `/tokenize` for count_tokens). The exchanger calls in at three
points: a 404 that means "no such route" (`route_missing` -> `RouteMissing`, the caller remembers it and tries
the next leg on the same endpoint), a success to translate (`relay_translated`), and an error to put in
Anthropic's shape (`anthropic_response.error_body`).

The stream is translated chunk by chunk as it arrives: each upstream read is translated and written at once;
when the endpoint is silent for `ping_s` (a slow first token, a long tool call), a `ping` event keeps the
client's and any intermediary's read timeouts from firing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from services.router.anthropic_request import Expect
from services.router.anthropic_response import (
    PING,
    BadUpstream,
    StreamTranslator,
    error_payload,
    event,
    message_events,
    to_message,
    tokens_to_count,
)
from services.router.circuit import Circuits
from services.router.headers import downstream_headers
from services.router.table import Target
from services.router.usage import ResponseWatch
from shared import jsontext
from shared.h1client import BadResponse, UpstreamResponse

log = logging.getLogger(__name__)

WHOLE_BODY_LIMIT = 64 * 1024 * 1024  # a non-streamed answer is read whole to translate it
MODE_HEADER = "X-Pier-Mode"
_MISSING_TEXTS = frozenset({"not found", "404 page not found", "file not found"})


class Mode(StrEnum):
    PASSTHROUGH = "passthrough"  # the endpoint's native Anthropic route
    TRANSLATION = "translation"  # /v1/chat/completions, translated both ways
    TOKENIZE = "tokenize"  # llama-server's /tokenize for count_tokens
    ESTIMATE = "estimate"  # no endpoint call: characters / 4


class RouteMissing(Exception):
    """The endpoint answered 404 on a route it was expected to have: remember it, take the next leg."""


@dataclass(frozen=True, slots=True)
class Leg:
    """One way to send an Anthropic request to one endpoint."""

    mode: Mode
    path: str
    body: bytes
    expect: Expect
    probe: bool = False  # a 404 meaning "no such route" raises RouteMissing

    @property
    def translates(self) -> bool:
        return self.mode is not Mode.PASSTHROUGH

    @property
    def whole_as_events(self) -> bool:
        """The client asked for a stream, the endpoint answered in one piece: send it as events all the same."""
        return self.expect.stream and self.mode is Mode.TRANSLATION

    def whole(self, body: bytes) -> bytes:
        """A whole (non-streamed) success answer, translated; `BadUpstream` when it cannot be."""
        try:
            data: Any = jsontext.loads(body)
        except ValueError as exc:
            raise BadUpstream(f"the answer is not JSON: {exc}") from None
        if self.mode is Mode.TOKENIZE:
            return json.dumps(tokens_to_count(data)).encode()
        message = to_message(data, self.expect)
        if self.whole_as_events:
            return message_events(message)
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def route_missing(leg: Leg, content_type: str, body: bytes) -> bool:
    """Does this 404 mean the route does not exist (rather than, say, an unknown model)?

    A Go mux (DMR, Ollama) answers `404 page not found` as text, llama-server `File Not Found` in JSON; a DMR
    that has the route answers an unknown model in Anthropic's JSON, which is the endpoint's answer to relay.
    """
    if not leg.probe:
        return False
    if leg.mode is Mode.TOKENIZE:
        return True  # the tokenizer request names no model: any 404 is the route
    text = body.decode("utf-8", errors="replace").strip()
    if "json" in content_type.lower():
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            text = str(jsontext.loads(text)["error"]["message"])
    return text.strip().lower() in _MISSING_TEXTS


def _headers(upstream: UpstreamResponse, pier: tuple[tuple[str, str], ...], content_type: str) -> Any:
    headers = downstream_headers(upstream.headers, pier=pier)
    for name in ("Content-Length", "Content-Type", "Content-Encoding", "ETag"):
        headers.popall(name, None)
    headers["Content-Type"] = content_type
    return headers


def _error(status: int, message: str, headers: Any) -> web.Response:
    body = json.dumps(error_payload(status, message)).encode()
    headers["Content-Type"] = "application/json"
    return web.Response(status=status, body=body, headers=headers)


async def relay_translated(
    request: web.Request,
    leg: Leg,
    target: Target,
    upstream: UpstreamResponse,
    pier: tuple[tuple[str, str], ...],
    circuits: Circuits,
    ping_s: float,
    watch: ResponseWatch | None = None,
) -> web.StreamResponse:
    """Answer the client from a successful upstream answer, translated (whole, or event by event).

    `watch` (telemetry) reads the endpoint's answer before translation: response id and model, finish reasons
    and token usage for the attempt's span and metrics. Nothing is stripped here (Pier asks no extra usage
    chunk for an Anthropic request)."""
    content_type = upstream.headers.get("Content-Type", "")
    streaming = content_type.startswith("text/event-stream")
    if not streaming:
        headers = _headers(upstream, pier, "text/event-stream" if leg.whole_as_events else "application/json")
        try:
            raw = await upstream.read(WHOLE_BODY_LIMIT)  # releases (or closes) the connection
            if watch is not None:
                watch.head(upstream.status, content_type, CIMultiDict())
                watch.feed(raw)
                watch.end()
            return web.Response(status=upstream.status, body=leg.whole(raw), headers=headers)
        except (BadResponse, OSError, BadUpstream) as exc:
            circuits.failure(target.name, "bad answer")
            return _error(502, f"endpoint {target.name} sent an answer Pier cannot translate: {exc}", headers)
    out = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    out.headers.update(_headers(upstream, pier, "text/event-stream; charset=utf-8"))
    out.headers["Cache-Control"] = "no-cache"
    if watch is not None:
        watch.head(upstream.status, content_type, CIMultiDict())
    return await _stream(request, leg, target, upstream, out, circuits, ping_s, watch)


class _Pinger:
    """Writes a `ping` event whenever the stream has been silent for `ping_s`: one sleeping task per stream
    (a task per upstream read would cost more than the translation itself). Writes share one lock."""

    def __init__(self, out: web.StreamResponse, ping_s: float) -> None:
        self._out = out
        self._ping_s = ping_s
        self._loop = asyncio.get_running_loop()
        self.lock = asyncio.Lock()
        self.last = self._loop.time()  # when the client was last sent something

    async def run(self) -> None:
        loop = self._loop
        with contextlib.suppress(ConnectionError):
            while True:
                wait_s = self.last + self._ping_s - loop.time()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                    continue
                async with self.lock:
                    await self._out.write(PING)
                self.last = loop.time()

    async def write(self, data: bytes) -> None:
        async with self.lock:
            await self._out.write(data)
        self.last = self._loop.time()


async def _stream(
    request: web.Request,
    leg: Leg,
    target: Target,
    upstream: UpstreamResponse,
    out: web.StreamResponse,
    circuits: Circuits,
    ping_s: float,
    watch: ResponseWatch | None,
) -> web.StreamResponse:
    translator = StreamTranslator(leg.expect)
    finished = False
    pinging: asyncio.Task[None] | None = None
    try:
        await out.prepare(request)
        pinger = _Pinger(out, ping_s)
        pinging = asyncio.create_task(pinger.run())
        while True:
            try:
                chunk = await upstream.readany()
            except (BadResponse, OSError) as exc:  # TimeoutError included: no byte for the read timeout
                pinging.cancel()
                if watch is not None:
                    watch.cut("stream_cut")
                await _cut(request, target, upstream, out, circuits, exc, translator)
                return out
            if not chunk:
                break
            if watch is not None:
                watch.feed(chunk)  # nothing to strip: what it returns is the chunk itself
            data = translator.feed(chunk)
            if data:
                await pinger.write(data)  # at once: nothing waits for later chunks
        pinging.cancel()
        finished = True
        upstream.release()
        async with pinger.lock:
            await out.write_eof(translator.close())
    except ConnectionError:
        pass  # the client went away: closing the upstream answer (below) stops the generation
    finally:
        if pinging is not None:
            pinging.cancel()
        if not finished:
            upstream.close()
    return out


async def _cut(
    request: web.Request,
    target: Target,
    upstream: UpstreamResponse,
    out: web.StreamResponse,
    circuits: Circuits,
    exc: BaseException,
    translator: StreamTranslator,
) -> None:
    """The endpoint broke off the stream: an Anthropic error event, then a closed connection (never a short answer
    that looks complete)."""
    upstream.close()
    circuits.failure(target.name, "stream cut")
    log.warning("endpoint %s cut a translated stream: %s", target.name, exc)
    translator.done = True
    with contextlib.suppress(ConnectionError):
        await out.write(event("error", error_payload(502, f"endpoint {target.name} cut the response: {exc!r}")))
    if request.transport is not None:
        request.transport.close()
