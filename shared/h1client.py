"""Pier's HTTP/1.1 client for endpoints (the router's requests, the health worker's probes): keep-alive
connections pooled per origin, one request at a time on each, the response relayed as the connection's reads
arrive, with bounded buffering (backpressure).

Timeouts are single timer handles on the loop, not `asyncio.timeout` scopes: connect (per new connection),
response head (per request), and read (between two reads of the body). Beneath them the kernel watches for a
dead peer (TCP keep-alive and TCP_USER_TIMEOUT): a partitioned endpoint sends no FIN and no RST, and a stream
or a long prefill may rightly be silent for minutes, so only the peer's kernel not answering tells them apart.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import select
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

from multidict import CIMultiDictProxy

from shared.h1 import BadResponse, Framing, Head, ResponseParser, request_head
from shared.turns import Turns

log = logging.getLogger(__name__)

# Body bytes buffered from one endpoint before the router stops reading its socket (the client is slower than
# the endpoint); reading resumes once the client has taken them.
HIGH_WATER_BYTES = 256 * 1024
_SPLIT_WRITE_BYTES = 64 * 1024  # bigger request bodies are written after the head, not copied onto it
# A peer whose kernel answers nothing for this long is gone (a partition, a host that lost power): keep-alive
# probes start after 2 s of silence, one a second, and the connection fails with ETIMEDOUT once 5 s pass with
# nothing acknowledged. A live endpoint's kernel answers probes even while the model thinks.
DEAD_PEER_IDLE_S = 2
DEAD_PEER_INTERVAL_S = 1
DEAD_PEER_PROBES = 3
DEAD_PEER_TIMEOUT_MS = 5000

__all__ = ["BadResponse", "Origin", "UpstreamDisconnected", "UpstreamPool", "UpstreamResponse", "origin_of"]


class UpstreamDisconnected(ConnectionError):
    """The endpoint closed the connection before any byte of its answer. `reused`: it was a pooled keep-alive
    connection, which the endpoint may have closed just as the request went out (one fresh try is safe)."""

    def __init__(self, message: str, *, reused: bool) -> None:
        super().__init__(message)
        self.reused = reused


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an endpoint's connections go, and how its request targets start."""

    scheme: str
    host: str
    port: int
    host_header: str
    base_path: str  # the endpoint URL's path without a trailing slash ("" mostly)

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        default = 443 if scheme == "https" else 80
        port = parts.port or default
        netloc = parts.netloc.rpartition("@")[2]  # credentials never go into Host
        return cls(scheme, parts.hostname, port, netloc, parts.path.rstrip("/"))

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


@functools.lru_cache(maxsize=4096)  # endpoints come and go (discovery): bounded
def origin_of(url: str) -> Origin:
    """`Origin.parse`, once per endpoint URL rather than once per request (ValueError for what is not http(s))."""
    return Origin.parse(url)


class _Connection(asyncio.Protocol):
    """One connection to an endpoint; carries one request/response at a time."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, str, int]) -> None:
        self._pool = pool
        self.key = key
        self.label = f"{key[1]}:{key[2]}"  # the endpoint's name once a request names it, for the log
        self.transport: asyncio.Transport | None = None
        self.fd = -1
        self.closed = False
        self.idle_since = 0.0
        self.used = 0  # requests sent on it
        self._parser: ResponseParser | None = None
        self._head_waiter: asyncio.Future[Head] | None = None
        self._body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._body_waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._paused = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1
        if sock is not None:
            watch_for_dead_peer(sock)
        self._pool._made(self)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or parser.complete:
            # Bytes nobody asked for (idle, or after a complete answer): a late body that must never become the
            # next request's answer. The connection can no longer be trusted.
            where = "while idle" if parser is None else "after the response"
            self._pool.anomaly(self, f"unsolicited bytes {where} ({len(data)} bytes)")
            self._close_now()
            return
        try:
            body = parser.feed(data)
        except BadResponse as exc:
            self._fail(exc)
            self._close_now()
            return
        waiter = self._head_waiter
        if waiter is not None and parser.head is not None:
            self._head_waiter = None
            if not waiter.done():
                waiter.set_result(parser.head)
        if body:
            self._body.append(body)
            self._buffered += len(body)
            if self._buffered > HIGH_WATER_BYTES and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
        if body or parser.complete:
            self._wake()

    def eof_received(self) -> bool:
        parser = self._parser
        if parser is not None and parser.head is not None and parser.head.framing is Framing.CLOSE:
            parser.feed_eof()  # the end of a body framed by the connection's end
            self._wake()
        # Any other end of the connection is a cut: `connection_lost` tells which kind.
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        parser = self._parser
        if parser is not None and not parser.complete:
            if parser.head is None and not self._body:
                self._fail(UpstreamDisconnected("the endpoint closed the connection", reused=self.used > 1))
            else:
                self._fail(ConnectionResetError("the endpoint closed the connection before the end of the response"))
        self._wake()
        self._pool._lost(self)

    def pause_writing(self) -> None:
        pass  # request bodies are already in memory; the transport buffers them

    def resume_writing(self) -> None:
        pass

    # -- used by the pool and the response

    def send(self, head: bytes, body: bytes, *, no_body: bool) -> asyncio.Future[Head]:
        transport = self.transport
        assert transport is not None
        self.used += 1
        self._parser = ResponseParser(no_body=no_body)
        self._error = None
        waiter: asyncio.Future[Head] = self._pool.loop.create_future()
        self._head_waiter = waiter
        if len(body) > _SPLIT_WRITE_BYTES:
            transport.write(head)
            transport.write(body)
        else:
            transport.write(head + body)
        return waiter

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        waiter = self._head_waiter
        if waiter is not None:
            self._head_waiter = None
            if not waiter.done():
                waiter.set_exception(exc)

    def _wake(self) -> None:
        waiter = self._body_waiter
        if waiter is not None:
            self._body_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _close_now(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def quiet(self) -> bool:
        """Nothing has arrived on this idle connection: no byte and no EOF waiting in the socket (urllib3's
        `is_connection_dropped`). The loop may not have read them yet, so the socket itself is asked."""
        if self.fd < 0:
            return False  # cannot tell: not provably clean
        poller = select.poll()
        poller.register(self.fd, select.POLLIN | select.POLLPRI)
        if not poller.poll(0):
            return True
        if self.key[0] == "http" and _peek(self.fd):  # bytes (not just the endpoint's EOF): worth a warning
            self._pool.anomaly(self, "unsolicited bytes on an idle connection")
        return False

    def take(self) -> bytes:
        """Every body byte buffered now (b"" when none)."""
        body = self._body
        if not body:
            return b""
        data = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        if self._paused and not self.closed and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    @property
    def body_done(self) -> bool:
        parser = self._parser
        return parser is not None and parser.complete and not self._body

    @property
    def reusable(self) -> bool:
        parser = self._parser
        return not self.closed and parser is not None and parser.reusable and not self._body

    def anomaly(self) -> str | None:
        parser = self._parser
        return parser.anomaly if parser is not None else None

    async def wait_body(self, timeout_s: float | None) -> None:
        """Until body bytes arrive, the body ends, or the connection fails (TimeoutError after `timeout_s`)."""
        if self._error is not None:
            raise self._error
        loop = self._pool.loop
        waiter: asyncio.Future[None] = loop.create_future()
        self._body_waiter = waiter
        timer = loop.call_later(timeout_s, _expire, waiter, "no bytes from the endpoint") if timeout_s else None
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self._body_waiter = None
        error = self.error()  # set while this waited (the connection broke)
        if error is not None and not self._body:
            raise error

    def error(self) -> BaseException | None:
        return self._error


def watch_for_dead_peer(sock: Any) -> None:
    """Let the kernel notice a peer that vanished without closing (Linux options; elsewhere, what exists)."""
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), DEAD_PEER_IDLE_S),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), DEAD_PEER_INTERVAL_S),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), DEAD_PEER_PROBES),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), DEAD_PEER_TIMEOUT_MS),
    ]
    for level, option, value in options:
        if option is None:
            continue
        try:
            sock.setsockopt(level, option, value)
        except OSError:  # a Unix socket (no TCP options), or a platform without one of them
            return


def _closing(conn: _Connection) -> bool:
    return conn.transport is None or conn.transport.is_closing()


def _peek(fd: int) -> bool:
    """True when the socket holds bytes (False at EOF or on error), without taking them off it."""
    sock = socket.socket(fileno=fd)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:
        return False
    finally:
        sock.detach()  # the fd stays the transport's


def _expire(waiter: asyncio.Future[Any], what: str) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(what))


class UpstreamResponse:
    """An endpoint's answer: status and headers now, the body as it arrives. `release()` or `close()` it."""

    __slots__ = ("_conn", "_done", "_read_timeout_s", "framing", "headers", "reason", "status")

    def __init__(self, conn: _Connection, head: Head, read_timeout_s: float | None) -> None:
        self._conn = conn
        self._read_timeout_s = read_timeout_s
        self._done = False
        self.status = head.status
        self.reason = head.reason
        self.headers: CIMultiDictProxy[str] = head.headers
        # How the body is delimited. Only a LENGTH body is relayed with the endpoint's own Content-Length: the
        # client is always framed by what the router sends, never by a header it did not honour.
        self.framing = head.framing

    def read_nowait(self) -> bytes:
        """The body bytes already here (maybe b""); raises if the endpoint broke the response."""
        data = self._conn.take()
        if not data:
            error = self._conn.error()
            if error is not None:
                raise error
        return data

    def at_eof(self) -> bool:
        """The whole body arrived and was read."""
        return self._conn.body_done

    async def readany(self) -> bytes:
        """The next body bytes as they arrive (b"" at the end). Raises TimeoutError when the endpoint sends
        nothing for the read timeout, and OSError/BadResponse when it breaks the response off."""
        conn = self._conn
        while True:
            data = conn.take()
            if data:
                return data
            if conn.body_done:
                return b""
            await conn.wait_body(self._read_timeout_s)

    async def read(self, limit_bytes: int) -> bytes:
        """The whole body, then the connection goes back to the pool; BadResponse when it is over `limit_bytes`."""
        parts: list[bytes] = []
        size = 0
        try:
            while chunk := await self.readany():
                size += len(chunk)
                if size > limit_bytes:
                    raise BadResponse(f"response body over {limit_bytes} bytes")
                parts.append(chunk)
        except BaseException:
            self.close()
            raise
        self.release()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """Done with it: the connection goes back to the pool if it can carry another request, else closes."""
        if self._done:
            return
        self._done = True
        conn = self._conn
        if conn.reusable:
            conn._pool._put_back(conn)
        else:
            anomaly = conn.anomaly()
            if anomaly is not None:
                conn._pool.anomaly(conn, anomaly)
            conn._close_now()  # closed is the default: only a provably clean connection is kept

    def close(self) -> None:
        """Stop now: the connection closes (an endpoint that is still generating sees the client leave)."""
        if not self._done:
            self._done = True
            self._conn._close_now()


class UpstreamPool:
    """Keep-alive connections to every endpoint of one router process. Create and use it inside one loop."""

    def __init__(self, *, keepalive_s: float, limit: int = 0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self._keepalive_s = keepalive_s
        self._limit = limit  # open connections in all (0: no limit)
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._connecting = 0
        self._turns = Turns()  # requests waiting for a connection under the limit
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        # Misframed answers and unsolicited bytes, by kind (the connections concerned were closed, not reused).
        self.anomalies: collections.Counter[str] = collections.Counter()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        return sum(len(conns) for conns in self._idle.values())

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        connect_timeout_s: float,
        head_timeout_s: float | None,
        read_timeout_s: float | None,
        label: str = "",
    ) -> UpstreamResponse:
        """Send one request and wait for the response head.

        `target` is the path and query (the origin's base path is put in front); `label` names the endpoint in
        warnings. Raises TimeoutError (connect or head), OSError (cannot connect; `UpstreamDisconnected` when
        closed before answering), BadResponse.
        """
        head = request_head(method, origin.base_path + target, origin.host_header, headers, len(body))
        conn = await self._acquire(origin, connect_timeout_s)
        if label:
            conn.label = label
        waiter = conn.send(head, body, no_body=method == "HEAD")
        timer = self.loop.call_later(head_timeout_s, _expire, waiter, "no response head") if head_timeout_s else None
        try:
            response_head = await waiter
        except BadResponse as exc:
            self.anomaly(conn, str(exc))
            conn._close_now()
            raise
        except BaseException:
            conn._close_now()  # an unanswered request leaves the connection in an unknown state
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return UpstreamResponse(conn, response_head, read_timeout_s)

    async def close(self) -> None:
        """Close every connection (idle or busy) and refuse new requests."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
        for conn in list(self._open):
            conn._close_now()
        self._idle.clear()
        self._turns.fail_all(ConnectionError("the connection pool is closed"))
        # Let the transports deliver connection_lost before the loop goes away.
        await asyncio.sleep(0)

    async def _acquire(self, origin: Origin, connect_timeout_s: float) -> _Connection:
        if self._closed:
            raise ConnectionError("the connection pool is closed")
        conn = self._take_idle(origin.key)
        if conn is not None:
            return conn
        while self._limit and len(self._open) + self._connecting >= self._limit:
            if not self._close_one_idle():
                await self._turns.wait()
                conn = self._take_idle(origin.key)  # a connection released while this waited
                if conn is not None:
                    return conn
        return await self._connect(origin, connect_timeout_s)

    def _take_idle(self, key: tuple[str, str, int]) -> _Connection | None:
        """A pooled connection to `key` that is still usable, closing the stale ones on the way."""
        idle = self._idle.get(key)
        if not idle:
            return None
        stale_before = self.loop.time() - self._keepalive_s
        while idle:
            conn = idle.pop()  # the most recently used: least likely to have been closed by the endpoint
            if not conn.closed and conn.idle_since > stale_before and not _closing(conn) and conn.quiet():
                return conn
            conn._close_now()
        return None

    def anomaly(self, conn: _Connection, what: str) -> None:
        """An endpoint misframed an answer or sent bytes unasked: counted, and logged with the endpoint's name."""
        self.anomalies[what.partition(" (")[0]] += 1  # the kind, without its figures
        log.warning("endpoint %s: %s; its connection is closed, not reused", conn.label, what)

    async def _connect(self, origin: Origin, connect_timeout_s: float) -> _Connection:
        context: ssl.SSLContext | None = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        self._connecting += 1
        try:
            async with asyncio.timeout(connect_timeout_s):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self, origin.key),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
        finally:
            self._connecting -= 1
        if self._closed:
            conn._close_now()
            raise ConnectionError("the connection pool is closed")
        if conn.closed:  # the endpoint hung up between accepting and our first write
            raise UpstreamDisconnected("the endpoint closed the connection as it opened", reused=False)
        return conn

    def _put_back(self, conn: _Connection) -> None:
        if self._closed or conn.closed:
            conn._close_now()
            return
        conn._parser = None
        conn.idle_since = self.loop.time()
        self._idle.setdefault(conn.key, []).append(conn)
        if self._sweep is None:
            self._sweep = self.loop.call_later(self._keepalive_s, self._sweep_idle)
        self._turns.wake_one()

    def _made(self, conn: _Connection) -> None:
        self._open.add(conn)

    def _lost(self, conn: _Connection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
        self._turns.wake_one()

    def _close_one_idle(self) -> bool:
        oldest: _Connection | None = None
        for conns in self._idle.values():
            if conns and (oldest is None or conns[0].idle_since < oldest.idle_since):
                oldest = conns[0]
        if oldest is None:
            return False
        self._idle[oldest.key].remove(oldest)
        oldest._close_now()
        self._open.discard(oldest)  # its slot is free now, even before connection_lost arrives
        return True

    def _sweep_idle(self) -> None:
        """Close connections idle for longer than the keep-alive time, so no socket lingers for nothing."""
        self._sweep = None
        stale_before = self.loop.time() - self._keepalive_s
        remaining = False
        for key, conns in list(self._idle.items()):
            keep = [conn for conn in conns if conn.idle_since > stale_before and not conn.closed]
            for conn in conns:
                if conn not in keep:
                    conn._close_now()
            if keep:
                self._idle[key] = keep
                remaining = True
            else:
                del self._idle[key]
        if remaining and not self._closed:
            self._sweep = self.loop.call_later(self._keepalive_s / 2, self._sweep_idle)
