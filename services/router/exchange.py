"""One request to one endpoint: send it, retry a 503 "Loading model", relay the answer chunk by chunk.

Before any byte reached the client a failure raises `Failover` (the caller tries the next candidate); once
bytes were sent nothing is retried: a cut stream ends with an error event (SSE) and a closed connection, so
the client sees an error, never a silently short answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict

from services.router.anthropic_relay import MODE_HEADER, Leg, RouteMissing, relay_translated, route_missing
from services.router.anthropic_response import error_body as anthropic_error_body
from services.router.circuit import Circuits
from services.router.errors import (
    Flavour,
    RouterError,
    UpstreamTimeout,
    UpstreamUnreachable,
    loading_message,
    normalise_upstream_error,
)
from services.router.headers import downstream_headers, pier_headers
from services.router.settings import RouterSettings
from services.router.table import Target
from shared.h1 import Framing
from shared.h1client import BadResponse, Origin, UpstreamDisconnected, UpstreamPool, UpstreamResponse

if TYPE_CHECKING:
    from services.router.usage import ResponseWatch

log = logging.getLogger(__name__)

ERROR_BODY_LIMIT = 1024 * 1024  # error bodies read whole to normalise them; bigger ones are relayed as they are
_UNAVAILABLE = frozenset({502, 503, 504})
_NO_BODY_STATUSES = frozenset({204, 304})


class _Relay(web.StreamResponse):
    """A streamed response whose headers go out with the first body bytes: one write instead of two when the
    body is already here, and never later than the first write (an empty one flushes the headers alone)."""

    _send_headers_immediately = False  # aiohttp's switch (web.Response uses it the same way)


class Failover(Exception):
    """The endpoint failed before the client got a byte: the next candidate may take the request."""

    def __init__(self, error: RouterError, *, mark_down: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.mark_down = mark_down


@dataclass(slots=True)
class Call:
    """One client request on its way through the router (what every attempt shares)."""

    request: web.Request
    flavour: Flavour
    request_id: str
    started: float  # loop time
    route: str  # X-Pier-Route
    model: str  # `model` as the client sent it
    attempts: int = 0
    leg: Leg | None = None  # Anthropic routes: passthrough or translation (services.router.anthropic_bridge)
    watch: ResponseWatch | None = None  # telemetry on: reads the answer as it passes (services/router/telemetry.py)


class Exchanger:
    """Talks to endpoints through the process's one `UpstreamPool`."""

    def __init__(self, pool: UpstreamPool, settings: RouterSettings, circuits: Circuits) -> None:
        self._pool = pool
        self._settings = settings
        self._ping_s = settings.anthropic_ping_interval_s
        self._circuits = circuits
        self._loop = asyncio.get_running_loop()

    async def exchange(
        self,
        call: Call,
        target: Target,
        origin: Origin,
        path: str,
        headers: CIMultiDict[str],
        body: bytes,
        model: str,
        *,
        shield_load: bool,
    ) -> web.StreamResponse:
        """Send the request to `target` and answer the client; `Failover` when the endpoint failed first.

        `path` is the request target (path and query) under the endpoint's URL. `shield_load`: the model may be
        loading there, so a client leaving before the first byte must not close the upstream request (DMR aborts
        a load whose client went away).
        """
        loop = self._loop
        deadline = call.started + target.request_timeout_s
        backoff_s = self._settings.loading_retry_initial_s
        stale_retry = True
        method = call.request.method
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                late = UpstreamTimeout(f"request deadline passed before {target.name} answered")
                raise Failover(late, mark_down=False)
            call.attempts += 1
            # The send is inline (not a helper coroutine): one frame less on every resumption of the request.
            # Reads of the body are bounded one by one by the request timeout (as a socket read timeout).
            head_timeout_s = min(target.response_header_timeout_s, remaining)
            pending = self._pool.request(
                origin,
                method,
                path,
                headers.items(),
                body,
                connect_timeout_s=target.connect_timeout_s,
                head_timeout_s=None if shield_load else head_timeout_s,
                read_timeout_s=target.request_timeout_s,
                label=target.name,
            )
            try:
                if shield_load:
                    upstream = await _shielded(pending, head_timeout_s, remaining)
                else:
                    upstream = await pending
            except UpstreamDisconnected as exc:
                # Most often a pooled keep-alive connection the endpoint had just closed: one fresh try.
                if exc.reused and stale_retry:
                    stale_retry = False
                    continue
                raise self._transport_failover(target, exc, f"endpoint {target.name} closed the connection") from exc
            except TimeoutError as exc:
                err: RouterError = UpstreamTimeout(f"endpoint {target.name} did not answer in time ({_describe(exc)})")
                self._circuits.failure(target.name, "timeout")
                raise Failover(err, mark_down=True) from exc
            except OSError as exc:
                raise self._transport_failover(target, exc, f"cannot reach endpoint {target.name}") from exc
            except BadResponse as exc:  # the pool logged it with the endpoint's name
                self._circuits.failure(target.name, "bad response")
                err = UpstreamUnreachable(f"endpoint {target.name} sent a bad response: {_describe(exc)}")
                raise Failover(err, mark_down=False) from exc

            status = upstream.status
            if status < 400:
                self._circuits.success(target.name)
                if call.leg is not None and call.leg.translates:  # Anthropic translation: its own relay
                    pier = _pier_headers(call, target, model)
                    return await relay_translated(
                        call.request, call.leg, target, upstream, pier, self._circuits, self._ping_s, call.watch
                    )
                return await self._relay(call, target, upstream, model, b"")
            try:
                error_body, complete = await _read_bounded(upstream, ERROR_BODY_LIMIT)
            except (BadResponse, OSError) as exc:
                upstream.close()
                self._circuits.failure(target.name, "error body cut")
                err = UpstreamUnreachable(f"endpoint {target.name} cut its error response: {_describe(exc)}")
                raise Failover(err, mark_down=False) from exc
            leg = call.leg
            if (
                status == 404
                and leg is not None
                and route_missing(leg, upstream.headers.get("Content-Type", ""), error_body)
            ):
                upstream.release()
                raise RouteMissing(target.name)  # the caller remembers it and tries the next leg here
            if status == 503 and complete and loading_message(error_body):
                upstream.release()
                wait_s = min(backoff_s, self._settings.loading_retry_max_s)
                if loop.time() + wait_s < deadline:
                    await asyncio.sleep(wait_s)
                    backoff_s *= 2
                    continue
                # Out of time: the client gets the endpoint's 503 as it is.
            elif status in _UNAVAILABLE:
                self._circuits.failure(target.name, f"HTTP {status}")
            else:
                self._circuits.success(target.name)
            if not complete:
                return await self._relay(call, target, upstream, model, error_body)
            upstream.release()
            return self._error_response(call, target, upstream, error_body, model)

    def _transport_failover(self, target: Target, exc: BaseException, what: str) -> Failover:
        self._circuits.failure(target.name, type(exc).__name__)
        return Failover(UpstreamUnreachable(f"{what}: {_describe(exc)}"), mark_down=True)

    def _pier_headers(self, headers: CIMultiDict[str], call: Call, target: Target, model: str) -> None:
        for name, value in _pier_headers(call, target, model):
            headers[name] = value

    def _error_response(
        self, call: Call, target: Target, upstream: UpstreamResponse, body: bytes, model: str
    ) -> web.Response:
        headers = downstream_headers(upstream.headers)
        headers.popall("Content-Length", None)
        content_type = upstream.headers.get("Content-Type", "")
        if call.leg is not None and call.leg.translates:
            body = anthropic_error_body(upstream.status, body)
            headers["Content-Type"] = "application/json"
        elif "Content-Encoding" not in upstream.headers:
            rewritten = normalise_upstream_error(upstream.status, content_type, body, call.flavour)
            if rewritten is not None:
                body = rewritten
                headers["Content-Type"] = "application/json"
        self._pier_headers(headers, call, target, model)
        return web.Response(status=upstream.status, reason=upstream.reason, body=body, headers=headers)

    async def _relay(
        self, call: Call, target: Target, upstream: UpstreamResponse, model: str, prefix: bytes
    ) -> web.StreamResponse:
        """Stream the endpoint's answer to the client as it arrives (bounded memory, no coalescing)."""
        out = _Relay(status=upstream.status, reason=upstream.reason)
        headers = out.headers
        # Filled in place: passing `headers=` to the response would copy them once more.
        downstream_headers(upstream.headers, headers, _pier_headers(call, target, model))
        # The client is framed by what the router sends, never by a header it did not honour: the endpoint's
        # Content-Length stays only on a body delimited by it (then exactly that many bytes follow, or the
        # connection is cut). Transfer-Encoding is hop-by-hop (dropped above): aiohttp chunks what has no length.
        framed_by_length = upstream.framing is Framing.LENGTH
        if not framed_by_length and "Content-Length" in headers:
            headers.popall("Content-Length")
        broken: BaseException | None = None
        try:
            ready = upstream.read_nowait()
        except (BadResponse, OSError) as exc:
            ready, broken = b"", exc
        if prefix:
            ready = prefix + ready
        complete = broken is None and upstream.at_eof()
        watch = call.watch
        if watch is not None:  # telemetry: reads the answer; may strip the usage chunk Pier asked for
            watch.head(upstream.status, upstream.headers.get("Content-Type", ""), headers)
            ready = watch.feed(ready)
            if complete:
                ready += watch.end()
        unframed = not framed_by_length or "Content-Length" not in headers
        if complete and unframed and upstream.status not in _NO_BODY_STATUSES:
            out.content_length = len(ready)  # all of it is here: its own length rather than chunks
        finished = False
        try:
            await out.prepare(call.request)
            if broken is not None:
                await self._cut(call, target, upstream, out, broken)
                return out
            if complete:
                # The whole answer is here (the common non-streaming case): headers, body and end in one write.
                finished = True
                upstream.release()
                await out.write_eof(ready)
                return out
            # The headers leave now, with whatever body bytes are already here.
            await out.write(ready)
            while True:
                try:
                    chunk = await upstream.readany()
                except (BadResponse, OSError) as exc:
                    await self._cut(call, target, upstream, out, exc)
                    return out
                if not chunk:
                    break
                if watch is not None:
                    chunk = watch.feed(chunk)
                    if not chunk:
                        continue  # all of it held back or stripped (telemetry's usage chunk)
                await out.write(chunk)
            finished = True
            upstream.release()
            await out.write_eof(b"" if watch is None else watch.end())
        except ConnectionError:
            # The client went away: closing the upstream response (below) stops the generation at once.
            pass
        finally:
            if not finished:
                upstream.close()
        return out

    async def _cut(
        self,
        call: Call,
        target: Target,
        upstream: UpstreamResponse,
        out: web.StreamResponse,
        exc: BaseException,
    ) -> None:
        """The endpoint broke off an answer already under way: no retry; the client must see an error."""
        upstream.close()
        self._circuits.failure(target.name, "stream cut")
        if call.watch is not None:
            call.watch.cut("stream_cut")
        log.warning("endpoint %s cut a response already under way (%s): %s", target.name, call.request_id, exc)
        message = f"endpoint {target.name} cut the response: {_describe(exc)}"
        if upstream.headers.get("Content-Type", "").startswith("text/event-stream"):
            with contextlib.suppress(ConnectionError):
                await out.write(_sse_error(message, call.flavour))
        transport = call.request.transport
        if transport is not None:
            # No terminating chunk: the client sees a broken stream, not a complete short one.
            transport.close()


def _pier_headers(call: Call, target: Target, model: str) -> tuple[tuple[str, str], ...]:
    headers = pier_headers(call.request_id, target.name, model, call.route, call.attempts)
    return headers if call.leg is None else (*headers, (MODE_HEADER, call.leg.mode.value))


async def _shielded(pending: Awaitable[UpstreamResponse], timeout_s: float, remaining_s: float) -> UpstreamResponse:
    """Wait for response headers in a task the client's departure does not cancel.

    When the client leaves, keep waiting for the first byte (bounded by the request's deadline) so the
    endpoint finishes loading the model, then close the upstream request.
    """
    task: asyncio.Future[UpstreamResponse] = asyncio.ensure_future(pending)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + remaining_s
    try:
        done, _ = await asyncio.wait((task,), timeout=timeout_s)
    except asyncio.CancelledError:
        await _finish_load(task, deadline - loop.time())
        raise
    if not done:
        task.cancel()
        raise TimeoutError(f"no response headers within {timeout_s:g}s")
    return task.result()


async def _finish_load(task: asyncio.Future[UpstreamResponse], remaining_s: float) -> None:
    try:
        if not task.done() and remaining_s > 0:
            await asyncio.wait((task,), timeout=remaining_s)
    finally:
        if not task.done():
            task.cancel()
        elif not task.cancelled() and task.exception() is None:
            task.result().close()


async def _read_bounded(upstream: UpstreamResponse, limit: int) -> tuple[bytes, bool]:
    """Read the body up to `limit` bytes: (bytes, complete)."""
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await upstream.readany()
        if not chunk:
            return b"".join(parts), True
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts), False


def _sse_error(message: str, flavour: Flavour) -> bytes:
    if flavour is Flavour.ANTHROPIC:
        payload = {"type": "error", "error": {"type": "api_error", "message": message}}
        return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"
    error = {"error": {"message": message, "type": "upstream_error", "code": "stream_cut", "param": None}}
    return b"data: " + json.dumps(error).encode() + b"\n\n"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
