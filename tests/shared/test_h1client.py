"""The router's upstream pool against real servers on loopback.

Each endpoint here is a real TCP server (`asyncio.start_server`) whose connection handler the test scripts: it
reads the request bytes the pool really sent and answers raw response bytes, so every framing, cut and close
is exactly the one under test. The last test runs the pool against the DMR emulator, a real aiohttp server.
Sequencing is by asyncio.Event or by waiting on an observable condition with a deadline (`wait_for`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shared.h1client import (
    HIGH_WATER_BYTES,
    BadResponse,
    Origin,
    UpstreamDisconnected,
    UpstreamPool,
    UpstreamResponse,
)
from tests.harness import ProcessFactory, free_port, wait_for

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
DEADLINE_S = 20.0  # for conditions that hold within milliseconds on an idle machine

# -- a scripted endpoint


@dataclass
class Received:
    """One request as the endpoint read it off the wire."""

    raw_head: bytes
    line: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def method(self) -> str:
        return self.line.split(" ", 1)[0]

    @property
    def target(self) -> str:
        return self.line.split(" ")[1]


@dataclass(eq=False)
class Peer:
    """One connection the endpoint accepted (the server's side of it)."""

    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    requests: list[Received] = field(default_factory=list)
    eof: asyncio.Event = field(default_factory=asyncio.Event)  # the server read the client's end of the connection

    async def read_request(self) -> Received | None:
        """The next request, or None when the client closed the connection (sets `eof`)."""
        try:
            raw = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise AssertionError(f"the client closed inside a request head: {exc.partial!r}") from None
            self.eof.set()
            return None
        except ConnectionResetError:
            self.eof.set()
            return None
        lines = raw[:-4].decode("utf-8", "surrogateescape").split("\r\n")
        headers = [(name, value) for name, _, value in (line.partition(": ") for line in lines[1:])]
        lengths = [value for name, value in headers if name.lower() == "content-length"]
        # A request without Content-Length has no body (RFC 9112 6.3): the client sends none on a bodiless GET.
        assert len(lengths) <= 1, f"more than one Content-Length: {headers}"
        body = await self.reader.readexactly(int(lengths[0])) if lengths else b""
        received = Received(raw, lines[0], headers, body)
        self.requests.append(received)
        return received

    async def wait_eof(self) -> bytes:
        """Read until the client closes its end; return whatever it sent before (normally nothing)."""
        extra = bytearray()
        with contextlib.suppress(ConnectionResetError):
            while chunk := await self.reader.read(65536):
                extra += chunk
        self.eof.set()
        return bytes(extra)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def close(self) -> None:
        """A clean close (FIN)."""
        self.writer.close()

    def reset(self) -> None:
        """An abortive close (RST): SO_LINGER 0, then close."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Script = Callable[[Peer], Awaitable[None]]


class Endpoint:
    """A real TCP server on 127.0.0.1:port that runs `script` for every connection it accepts."""

    def __init__(self, script: Script) -> None:
        self._script = script
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.peers: list[Peer] = []
        self.errors: list[BaseException] = []
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def origin(self, path: str = "") -> Origin:
        return Origin.parse(f"http://127.0.0.1:{self.port}{path}")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(len(self.peers), reader, writer)
        self.peers.append(peer)
        try:
            await self._script(peer)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the test's teardown reports it: a script that broke proves nothing
            self.errors.append(exc)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for peer in self.peers:
            peer.writer.close()
            with contextlib.suppress(OSError):
                await peer.writer.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()


Serve = Callable[[Script], Awaitable[Endpoint]]
Pools = Callable[..., UpstreamPool]


@contextlib.asynccontextmanager
async def endpoints() -> AsyncIterator[Serve]:
    """Start scripted endpoints; close them all at the end, and fail if a script broke."""
    started: list[Endpoint] = []

    async def start(script: Script) -> Endpoint:
        endpoint = Endpoint(script)
        await endpoint.start()
        started.append(endpoint)
        return endpoint

    try:
        yield start
    finally:
        for endpoint in started:
            await endpoint.close()
    errors = [exc for endpoint in started for exc in endpoint.errors]
    assert not errors, f"endpoint scripts failed: {errors!r}"


@contextlib.asynccontextmanager
async def pool_factory() -> AsyncIterator[Pools]:
    """Make pools (in the running loop); close them all at the end."""
    made: list[UpstreamPool] = []

    def make(*, keepalive_s: float = 60.0, limit: int = 0) -> UpstreamPool:
        pool = UpstreamPool(keepalive_s=keepalive_s, limit=limit)
        made.append(pool)
        return pool

    try:
        yield make
    finally:
        for pool in made:
            await pool.close()


async def send(
    pool: UpstreamPool,
    origin: Origin,
    target: str = "/",
    *,
    method: str = "GET",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    head_timeout_s: float | None = 60.0,
    read_timeout_s: float | None = 60.0,
) -> UpstreamResponse:
    return await pool.request(
        origin,
        method,
        target,
        headers,
        body,
        connect_timeout_s=30.0,
        head_timeout_s=head_timeout_s,
        read_timeout_s=read_timeout_s,
    )


async def read_all(response: UpstreamResponse) -> bytes:
    body = bytearray()
    while chunk := await response.readany():
        body += chunk
    return bytes(body)


async def read_into(response: UpstreamResponse, got: bytearray) -> None:
    """Read the body into `got` until its end (returns) or the error that breaks it off (raises)."""
    while chunk := await response.readany():
        got += chunk


async def answer_every_request(peer: Peer) -> None:
    while await peer.read_request() is not None:
        peer.send(OK)


async def eventually(check: Callable[[], object], what: str) -> None:
    await wait_for(check, timeout_s=DEADLINE_S, what=what)


# -- Origin


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:12434", ("http", "127.0.0.1", 12434, "127.0.0.1:12434", "")),
        ("http://127.0.0.1:12434/", ("http", "127.0.0.1", 12434, "127.0.0.1:12434", "")),
        (
            "http://host.docker.internal/engines/",
            ("http", "host.docker.internal", 80, "host.docker.internal", "/engines"),
        ),
        ("HTTPS://Model-Runner", ("https", "model-runner", 443, "Model-Runner", "")),
        ("http://user:secret@10.0.0.2:8080/a/b", ("http", "10.0.0.2", 8080, "10.0.0.2:8080", "/a/b")),
        ("http://[::1]:12434/x", ("http", "::1", 12434, "[::1]:12434", "/x")),
    ],
)
def test_origin_parse(url: str, expected: tuple[str, str, int, str, str]) -> None:
    origin = Origin.parse(url)
    assert (origin.scheme, origin.host, origin.port, origin.host_header, origin.base_path) == expected
    assert "secret" not in origin.host_header


@pytest.mark.parametrize("url", ["ftp://h/", "h:12434", "/just/a/path", "http:///nohost", "unix:///var/run/x.sock"])
def test_origin_parse_refuses_what_is_not_http(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        Origin.parse(url)


# -- keep-alive and reuse


async def test_keep_alive_reuses_one_connection_for_sequential_requests(serve: Serve, pools: Pools) -> None:
    endpoint = await serve(answer_every_request)
    pool = pools()
    for i in range(3):
        response = await send(pool, endpoint.origin(), f"/r{i}")
        assert (response.status, response.reason) == (200, "OK")
        assert response.headers["Content-Length"] == "2"
        assert await read_all(response) == b"ok"
        assert response.at_eof()
        response.release()
        assert pool.idle_connections == 1
        assert pool.open_connections == 1
    assert len(endpoint.peers) == 1, "each request opened its own connection"
    assert [r.line for r in endpoint.peers[0].requests] == [f"GET /r{i} HTTP/1.1" for i in range(3)]


async def test_connection_close_answer_is_not_pooled_and_the_next_request_opens_a_new_connection(
    serve: Serve, pools: Pools
) -> None:
    async def script(peer: Peer) -> None:
        if await peer.read_request() is not None:
            peer.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
            await peer.wait_eof()  # the client must close it: the server does not

    endpoint = await serve(script)
    pool = pools()
    first = await send(pool, endpoint.origin())
    assert await read_all(first) == b"ok"
    first.release()
    assert pool.idle_connections == 0
    await eventually(endpoint.peers[0].eof.is_set, "the client to close the `Connection: close` connection")
    second = await send(pool, endpoint.origin())
    assert await read_all(second) == b"ok"
    second.release()
    assert len(endpoint.peers) == 2
    assert [len(peer.requests) for peer in endpoint.peers] == [1, 1]


async def test_pooled_connection_the_endpoint_closed_while_idle_is_replaced_by_a_fresh_one(
    serve: Serve, pools: Pools
) -> None:
    """The close is seen before the next request: it must just work (a fresh connection, no error)."""

    async def script(peer: Peer) -> None:
        if peer.index == 0:
            if await peer.read_request() is not None:
                peer.send(OK)
                peer.close()  # keep-alive promised, then closed while idle (an endpoint's idle timeout)
            return
        await answer_every_request(peer)

    endpoint = await serve(script)
    pool = pools()
    first = await send(pool, endpoint.origin())
    assert await read_all(first) == b"ok"
    first.release()
    await eventually(lambda: pool.open_connections == 0, "the pool to drop the connection the endpoint closed")
    assert pool.idle_connections == 0
    second = await send(pool, endpoint.origin())
    assert await read_all(second) == b"ok"
    second.release()
    assert len(endpoint.peers) == 2


async def test_reused_connection_closed_instead_of_answering_is_upstream_disconnected_reused(
    serve: Serve, pools: Pools
) -> None:
    """The race the Exchanger retries: a pooled connection the endpoint closes just as the request goes out. The
    endpoint reads the second request and closes (FIN) without a byte of answer: UpstreamDisconnected(reused=True),
    the one error the lead's Exchanger retries once on a fresh connection."""

    async def script(peer: Peer) -> None:
        if peer.index == 0:
            if await peer.read_request() is not None:
                peer.send(OK)
            if await peer.read_request() is not None:
                peer.close()
            return
        await answer_every_request(peer)

    endpoint = await serve(script)
    pool = pools()
    first = await send(pool, endpoint.origin())
    assert await read_all(first) == b"ok"
    first.release()
    assert pool.idle_connections == 1
    with pytest.raises(UpstreamDisconnected) as caught:
        await send(pool, endpoint.origin())
    assert caught.value.reused is True
    retry = await send(pool, endpoint.origin())  # what the Exchanger does next: it must work
    assert await read_all(retry) == b"ok"
    retry.release()
    assert len(endpoint.peers) == 2


async def test_fresh_connection_closed_before_any_answer_is_upstream_disconnected_not_reused(
    serve: Serve, pools: Pools
) -> None:
    async def script(peer: Peer) -> None:
        if await peer.read_request() is not None:
            peer.close()  # a clean close (FIN) with no answer: a crashed or restarting endpoint

    endpoint = await serve(script)
    pool = pools()
    with pytest.raises(UpstreamDisconnected) as caught:
        await send(pool, endpoint.origin())
    assert caught.value.reused is False
    await eventually(lambda: pool.open_connections == 0, "the pool to forget the closed connection")


async def test_fresh_connection_reset_before_any_answer_is_upstream_disconnected_not_reused(
    serve: Serve, pools: Pools
) -> None:
    async def script(peer: Peer) -> None:
        if await peer.read_request() is not None:
            peer.reset()  # an abortive close (RST)

    endpoint = await serve(script)
    pool = pools()
    with pytest.raises(UpstreamDisconnected) as caught:
        await send(pool, endpoint.origin())
    assert caught.value.reused is False
    await eventually(lambda: pool.open_connections == 0, "the pool to forget the reset connection")


async def test_connect_refused_is_an_os_error_and_frees_the_slot(serve: Serve, pools: Pools) -> None:
    endpoint = await serve(answer_every_request)
    pool = pools(limit=1)
    origin = Origin.parse(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(ConnectionRefusedError):
        await send(pool, origin)
    assert pool.open_connections == 0
    response = await asyncio.wait_for(send(pool, endpoint.origin()), DEADLINE_S)  # the one slot is free again
    assert await read_all(response) == b"ok"
    response.release()


def full_accept_queue_drops_syns() -> bool:
    setting = Path("/proc/sys/net/ipv4/tcp_abort_on_overflow")
    return setting.exists() and setting.read_text().strip() == "0"


async def test_connect_timeout_raises_timeout_and_frees_the_slot(serve: Serve, pools: Pools) -> None:
    if not full_accept_queue_drops_syns():
        pytest.skip("needs Linux dropping SYNs to a full accept queue (tcp_abort_on_overflow=0) to make a connect hang")
    endpoint = await serve(answer_every_request)
    # A listener that never accepts, its accept queue full: Linux drops further SYNs, so a connect hangs.
    listener = socket.socket()
    fillers = [socket.socket() for _ in range(3)]
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        for filler in fillers:
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(listener.getsockname())
        pool = pools(limit=1)
        origin = Origin.parse(f"http://127.0.0.1:{listener.getsockname()[1]}")
        with pytest.raises(TimeoutError):
            await pool.request(
                origin, "GET", "/", (), b"", connect_timeout_s=0.3, head_timeout_s=None, read_timeout_s=None
            )
        assert pool.open_connections == 0
        response = await asyncio.wait_for(send(pool, endpoint.origin()), DEADLINE_S)  # the one slot is free again
        assert await read_all(response) == b"ok"
        response.release()
    finally:
        for sock in (*fillers, listener):
            sock.close()


async def test_bad_response_raises_and_closes_the_connection(serve: Serve, pools: Pools) -> None:
    async def script(peer: Peer) -> None:
        if await peer.read_request() is not None:
            peer.send(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
            await peer.wait_eof()

    endpoint = await serve(script)
    pool = pools()
    with pytest.raises(BadResponse):
        await send(pool, endpoint.origin())
    await eventually(endpoint.peers[0].eof.is_set, "the endpoint to see the connection closed")
    await eventually(lambda: pool.open_connections == 0, "the pool to forget the connection")


async def test_interim_response_is_skipped(serve: Serve, pools: Pools) -> None:
    async def script(peer: Peer) -> None:
        while await peer.read_request() is not None:
            peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            peer.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK)

    endpoint = await serve(script)
    pool = pools()
    for _ in range(2):
        response = await send(pool, endpoint.origin(), method="POST", body=b"{}")
        assert response.status == 200
        assert "Link" not in response.headers
        assert await read_all(response) == b"ok"
        response.release()
    assert len(endpoint.peers) == 1


async def test_head_request_response_has_no_body_and_the_connection_is_not_reused(serve: Serve, pools: Pools) -> None:
    async def script(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            if request.method == "HEAD":
                peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")  # the length of the GET's body
            else:
                peer.send(OK)

    endpoint = await serve(script)
    pool = pools()
    head = await send(pool, endpoint.origin(), method="HEAD")
    assert head.status == 200
    assert head.headers["Content-Length"] == "1000"
    assert await head.readany() == b""
    assert head.at_eof()
    head.release()
    # Not provably clean (an endpoint that wrote the body anyway would answer the next request with it).
    assert pool.idle_connections == 0
    get = await send(pool, endpoint.origin())
    assert await read_all(get) == b"ok"
    get.release()
    assert len(endpoint.peers) == 2
    assert [r.method for p in endpoint.peers for r in p.requests] == ["HEAD", "GET"]
    assert not pool.anomalies  # a HEAD answer's length is normal: nothing to warn about


async def test_stray_bytes_after_the_response_close_the_connection(serve: Serve, pools: Pools) -> None:
    async def script(peer: Peer) -> None:
        if peer.index == 0:
            if await peer.read_request() is not None:
                peer.send(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")  # an answer nobody asked for
                await peer.wait_eof()
            return
        await answer_every_request(peer)

    endpoint = await serve(script)
    pool = pools()
    first = await send(pool, endpoint.origin())
    assert await read_all(first) == b"ok"
    first.release()
    assert pool.idle_connections == 0
    await eventually(endpoint.peers[0].eof.is_set, "the client to close the connection with stray bytes")
    second = await send(pool, endpoint.origin())
    assert await read_all(second) == b"ok"
    second.release()
    assert len(endpoint.peers) == 2


async def test_bytes_on_an_idle_connection_close_it(serve: Serve, pools: Pools) -> None:
    released = asyncio.Event()

    async def script(peer: Peer) -> None:
        if peer.index == 0:
            if await peer.read_request() is not None:
                peer.send(OK)
                await released.wait()
                peer.send(b"HTTP/1.1 200 OK\r\n")  # unsolicited, while the connection is idle in the pool
                await peer.wait_eof()
            return
        await answer_every_request(peer)

    endpoint = await serve(script)
    pool = pools()
    first = await send(pool, endpoint.origin())
    assert await read_all(first) == b"ok"
    first.release()
    assert pool.idle_connections == 1
    released.set()
    await eventually(endpoint.peers[0].eof.is_set, "the pool to close the idle connection that got bytes")
    await eventually(lambda: pool.idle_connections == 0 and pool.open_connections == 0, "the pool to drop it")
    second = await send(pool, endpoint.origin())
    assert await read_all(second) == b"ok"
    second.release()
    assert len(endpoint.peers) == 2


# -- timeouts and cancellation


async def test_head_timeout_raises_and_the_endpoint_sees_the_connection_closed(serve: Serve, pools: Pools) -> None:
    async def script(peer: Peer) -> None:
        if await peer.read_request() is not None:
            assert await peer.wait_eof() == b""  # never answers

    endpoint = await serve(script)
    pool = pools()
    with pytest.raises(TimeoutError):
        await send(pool, endpoint.origin(), head_timeout_s=0.3)
    await eventually(endpoint.peers[0].eof.is_set, "the endpoint to see the timed-out connection closed")
    await eventually(lambda: pool.open_connections == 0, "the pool to forget the timed-out connection")
    assert pool.idle_connections == 0


async def test_read_timeout_between_body_reads(serve: Serve, pools: Pools) -> None:
    async def script(peer: Peer) -> None:
        if await peer.read_request() is not None:
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")  # half, then silence
            await peer.wait_eof()

    endpoint = await serve(script)
    pool = pools()
    response = await send(pool, endpoint.origin(), read_timeout_s=0.3)
    assert await response.readany() == b"hello"
    with pytest.raises(TimeoutError):
        await response.readany()
    assert not response.at_eof()
    response.close()
    await eventually(endpoint.peers[0].eof.is_set, "the endpoint to see the connection closed")


async def test_cancelling_a_request_waiting_for_its_head_closes_the_connection_and_the_pool_stays_usable(
    serve: Serve, pools: Pools
) -> None:
    got_request = asyncio.Event()

    async def script(peer: Peer) -> None:
        if peer.index == 0:
            if await peer.read_request() is not None:
                got_request.set()
                await peer.wait_eof()
            return
        await answer_every_request(peer)

    endpoint = await serve(script)
    pool = pools(limit=1)  # a slot leaked by the cancelled request would block the next one
    task = asyncio.create_task(send(pool, endpoint.origin()))
    await asyncio.wait_for(got_request.wait(), DEADLINE_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(endpoint.peers[0].eof.is_set, "the endpoint to see the cancelled request's connection closed")
    await eventually(lambda: pool.open_connections == 0, "the pool to forget the cancelled connection")
    after = await send(pool, endpoint.origin())
    assert await read_all(after) == b"ok"
    after.release()
    assert len(endpoint.peers) == 2


# -- bodies cut off


async def test_content_length_body_cut_midway_raises_connection_reset(serve: Serve, pools: Pools) -> None:
    async def script(peer: Peer) -> None:
        if await peer.read_request() is not None:
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"0123456789")
            peer.close()

    endpoint = await serve(script)
    pool = pools()
    response = await send(pool, endpoint.origin())
    got = bytearray()
    with pytest.raises(ConnectionResetError):
        await read_into(response, got)  # returns only on a silent short body, which pytest.raises then reports
    assert bytes(got) == b"0123456789"
    assert not response.at_eof()


async def test_chunked_body_cut_midway_raises_connection_reset(serve: Serve, pools: Pools) -> None:
    async def script(peer: Peer) -> None:
        if await peer.read_request() is not None:
            peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n10\r\nonly-half")
            peer.close()

    endpoint = await serve(script)
    pool = pools()
    response = await send(pool, endpoint.origin())
    got = bytearray()
    with pytest.raises(ConnectionResetError):
        await read_into(response, got)
    assert bytes(got) == b"helloonly-half"


async def test_body_reset_midway_raises_connection_reset(serve: Serve, pools: Pools) -> None:
    sent = asyncio.Event()
    read = asyncio.Event()

    async def script(peer: Peer) -> None:
        if await peer.read_request() is not None:
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"0123456789")
            sent.set()
            await read.wait()
            peer.reset()

    endpoint = await serve(script)
    pool = pools()
    response = await send(pool, endpoint.origin())
    await sent.wait()
    assert await response.readany() == b"0123456789"
    read.set()
    with pytest.raises(ConnectionResetError):
        await response.readany()
    assert endpoint.peers


# -- streaming and backpressure


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


@pytest.mark.parametrize("framing", ["chunked", "close"])
async def test_each_streamed_write_arrives_as_its_own_read(framing: str, serve: Serve, pools: Pools) -> None:
    events = [f"data: {json.dumps({'n': n, 'text': 'x' * n})}\n\n".encode() for n in range(6)] + [b"data: [DONE]\n\n"]
    asked = asyncio.Event()

    async def next_ask() -> None:
        await asked.wait()
        asked.clear()

    async def script(peer: Peer) -> None:
        if await peer.read_request() is None:
            return
        te = b"Transfer-Encoding: chunked\r\n" if framing == "chunked" else b""
        peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + te + b"\r\n")
        for event in events:
            await next_ask()  # the next event exists only once the client asked for it
            peer.send(chunk(event) if framing == "chunked" else event)
        await next_ask()
        if framing == "chunked":
            peer.send(b"0\r\n\r\n")
            await answer_every_request(peer)
        else:
            peer.close()

    endpoint = await serve(script)
    pool = pools()
    response = await send(pool, endpoint.origin(), method="POST", body=b'{"stream":true}')
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.read_nowait() == b""
    for event in events:
        asked.set()
        assert await response.readany() == event
    asked.set()
    assert await response.readany() == b""
    assert response.at_eof()
    response.release()
    assert pool.idle_connections == (1 if framing == "chunked" else 0)


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
async def test_slow_reader_bounds_what_the_client_buffers(framing: str, serve: Serve, pools: Pools) -> None:
    total = 32 * 1024 * 1024
    data = os.urandom(total)
    write_bytes = 256 * 1024
    framing_field = {"length": f"Content-Length: {total}\r\n", "chunked": "Transfer-Encoding: chunked\r\n", "close": ""}

    async def script(peer: Peer) -> None:
        if await peer.read_request() is None:
            return
        peer.send(f"HTTP/1.1 200 OK\r\n{framing_field[framing]}\r\n".encode())
        for offset in range(0, total, write_bytes):
            piece = data[offset : offset + write_bytes]
            peer.send(chunk(piece) if framing == "chunked" else piece)
            await peer.writer.drain()  # the endpoint waits when the router stops reading
        if framing == "close":
            peer.close()
            return
        if framing == "chunked":
            peer.send(b"0\r\n\r\n")
        await answer_every_request(peer)

    endpoint = await serve(script)
    pool = pools()
    response = await send(pool, endpoint.origin())
    digest = hashlib.sha256()
    sizes: list[int] = []
    while piece := await response.readany():
        sizes.append(len(piece))
        digest.update(piece)
        # Pacing, not sequencing: the reader lags so the endpoint gets ahead of it. No assertion depends on how
        # long the pause is; a reader that never lagged would fail the `> HIGH_WATER_BYTES` check below instead
        # of passing a bound it never approached.
        await asyncio.sleep(0.005)
    assert sum(sizes) == total
    assert digest.digest() == hashlib.sha256(data).digest(), "the body arrived altered"
    assert max(sizes) <= 2 * HIGH_WATER_BYTES, f"one read returned {max(sizes)} bytes: the client kept reading"
    assert max(sizes) > HIGH_WATER_BYTES, f"reads never exceeded {max(sizes)} bytes: the reader never lagged"
    assert response.at_eof()
    response.release()
    assert pool.idle_connections == (0 if framing == "close" else 1)


# -- the pool's limit, expiry and close


async def round_trip(endpoint: Endpoint) -> None:
    """One whole request through a pool of its own: many loop turns, every task runnable meanwhile ran."""
    pool = UpstreamPool(keepalive_s=60.0)
    try:
        response = await send(pool, endpoint.origin(), "/probe")
        assert await read_all(response) == b"ok"
        response.release()
    finally:
        await pool.close()


async def test_limit_makes_a_second_request_wait_for_the_first_connection_then_reuse_it(
    serve: Serve, pools: Pools
) -> None:
    endpoint = await serve(answer_every_request)
    pool = pools(limit=1)
    first = await send(pool, endpoint.origin(), "/first")
    second = asyncio.create_task(send(pool, endpoint.origin(), "/second"))
    await round_trip(endpoint)  # had the limit let `second` connect, it would have by now
    assert not second.done()
    assert pool.open_connections == 1
    assert len(endpoint.peers) == 2  # the pool's one connection and the probe's
    assert await read_all(first) == b"ok"
    first.release()
    answer = await asyncio.wait_for(second, DEADLINE_S)
    assert await read_all(answer) == b"ok"
    answer.release()
    assert len(endpoint.peers) == 2
    assert [r.line for r in endpoint.peers[0].requests] == ["GET /first HTTP/1.1", "GET /second HTTP/1.1"]
    assert (pool.open_connections, pool.idle_connections) == (1, 1)


async def test_limit_closes_an_idle_connection_of_another_origin_to_make_room(serve: Serve, pools: Pools) -> None:
    one = await serve(answer_every_request)
    two = await serve(answer_every_request)
    pool = pools(limit=1)
    first = await send(pool, one.origin())
    assert await read_all(first) == b"ok"
    first.release()
    assert pool.idle_connections == 1
    other = await send(pool, two.origin())
    assert await read_all(other) == b"ok"
    other.release()
    await eventually(one.peers[0].eof.is_set, "the idle connection to the first origin to be closed")
    await eventually(lambda: pool.open_connections == 1, "one open connection")


async def test_idle_connection_expires_after_keepalive(serve: Serve, pools: Pools) -> None:
    endpoint = await serve(answer_every_request)
    pool = pools(keepalive_s=0.2)
    response = await send(pool, endpoint.origin())
    assert await read_all(response) == b"ok"
    response.release()
    assert pool.idle_connections == 1
    await eventually(endpoint.peers[0].eof.is_set, "the endpoint to see the expired idle connection closed")
    await eventually(lambda: pool.open_connections == 0, "the pool to count no open connection")
    assert pool.idle_connections == 0
    again = await send(pool, endpoint.origin())
    assert await read_all(again) == b"ok"
    again.release()
    assert len(endpoint.peers) == 2


async def test_pool_close_closes_idle_and_busy_connections_and_refuses_new_requests(serve: Serve, pools: Pools) -> None:
    async def script(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            if request.target == "/slow":
                peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
                await peer.wait_eof()
                return
            peer.send(OK)

    endpoint = await serve(script)
    pool = pools()
    busy = await send(pool, endpoint.origin(), "/slow")
    idle = await send(pool, endpoint.origin(), "/fast")  # the first connection is busy: a second one
    assert await read_all(idle) == b"ok"
    idle.release()
    assert (pool.open_connections, pool.idle_connections) == (2, 1)
    await pool.close()
    await eventually(lambda: all(peer.eof.is_set() for peer in endpoint.peers), "both connections to be closed")
    assert len(endpoint.peers) == 2
    assert await busy.readany() == b"hello"  # what had arrived is still there...
    with pytest.raises(ConnectionResetError):
        await busy.readany()  # ...then the cut, not a silent short body
    assert (pool.open_connections, pool.idle_connections) == (0, 0)
    with pytest.raises(ConnectionError):
        await send(pool, endpoint.origin())


async def test_limit_waiter_cancelled_once_woken_passes_the_wake_up_on(serve: Serve, pools: Pools) -> None:
    endpoint = await serve(answer_every_request)
    pool = pools(limit=1)
    first = await send(pool, endpoint.origin(), "/first")
    second = asyncio.create_task(send(pool, endpoint.origin(), "/second"))
    third = asyncio.create_task(send(pool, endpoint.origin(), "/third"))
    await round_trip(endpoint)  # both are queued for the one connection by now
    assert not second.done()
    assert not third.done()
    assert await read_all(first) == b"ok"
    first.release()  # wakes `second`...
    second.cancel()  # ...which is cancelled before it runs: its turn must go to `third`, not be lost
    with pytest.raises(asyncio.CancelledError):
        await second
    answer = await asyncio.wait_for(third, DEADLINE_S)
    assert await read_all(answer) == b"ok"
    answer.release()
    assert [r.target for r in endpoint.peers[0].requests] == ["/first", "/third"]


async def test_limit_waiter_gets_a_new_connection_when_the_busy_one_breaks(serve: Serve, pools: Pools) -> None:
    async def script(peer: Peer) -> None:
        if peer.index == 0:
            if await peer.read_request() is not None:
                peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
                await peer.wait_eof()
            return
        await answer_every_request(peer)

    endpoint = await serve(script)
    pool = pools(limit=1)
    broken = await send(pool, endpoint.origin(), "/first")
    waiting = asyncio.create_task(send(pool, endpoint.origin(), "/second"))
    await round_trip(endpoint)
    assert not waiting.done()
    endpoint.peers[0].reset()  # the busy connection breaks mid-body
    assert await broken.readany() == b"hello"
    with pytest.raises(ConnectionResetError):
        await broken.readany()
    broken.close()
    answer = await asyncio.wait_for(waiting, DEADLINE_S)
    assert await read_all(answer) == b"ok"
    answer.release()
    assert [r.target for r in endpoint.peers[-1].requests] == ["/second"]


async def test_pool_close_fails_a_request_waiting_for_a_connection(serve: Serve, pools: Pools) -> None:
    endpoint = await serve(answer_every_request)
    pool = pools(limit=1)
    busy = await send(pool, endpoint.origin())
    waiting = asyncio.create_task(send(pool, endpoint.origin()))
    await round_trip(endpoint)
    assert not waiting.done()
    await pool.close()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(waiting, DEADLINE_S)
    busy.close()


async def test_release_of_a_partly_read_body_closes_the_connection(serve: Serve, pools: Pools) -> None:
    async def script(peer: Peer) -> None:
        if await peer.read_request() is not None:
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
            await peer.wait_eof()

    endpoint = await serve(script)
    pool = pools()
    response = await send(pool, endpoint.origin())
    assert await response.readany() == b"hello"
    response.release()
    assert pool.idle_connections == 0
    await eventually(endpoint.peers[0].eof.is_set, "the endpoint to see the connection closed")
    await eventually(lambda: pool.open_connections == 0, "the pool to forget it")


async def test_release_of_an_arrived_but_unread_body_closes_the_connection(serve: Serve, pools: Pools) -> None:
    async def script(peer: Peer) -> None:
        while await peer.read_request() is not None:
            peer.send(OK)

    endpoint = await serve(script)
    pool = pools()
    response = await send(pool, endpoint.origin())
    response.release()  # "ok" is buffered but nobody read it
    assert pool.idle_connections == 0
    await eventually(endpoint.peers[0].eof.is_set, "the endpoint to see the connection closed")


# -- the request on the wire


async def test_request_bytes_as_the_endpoint_receives_them(serve: Serve, pools: Pools) -> None:
    endpoint = await serve(answer_every_request)
    pool = pools()
    origin = endpoint.origin("/base/")
    big = os.urandom(200 * 1024)  # > 64 KiB: written after the head, not joined to it
    small = b'{"model":"ai/smollm2"}'
    headers = [("Content-Type", "application/json"), ("X-Request-Id", "r-1"), ("X-Name", "caf\u00e9")]
    for body in (big, small, b""):
        response = await send(pool, origin, "/v1/chat/completions?x=1&y=%20", method="POST", headers=headers, body=body)
        assert await read_all(response) == b"ok"
        response.release()
    assert len(endpoint.peers) == 1
    host = f"127.0.0.1:{endpoint.port}"
    for received, body in zip(endpoint.peers[0].requests, (big, small, b""), strict=True):
        assert received.raw_head == (
            b"POST /base/v1/chat/completions?x=1&y=%20 HTTP/1.1\r\n"
            + f"Host: {host}\r\n".encode()
            + b"Content-Type: application/json\r\nX-Request-Id: r-1\r\n"
            + "X-Name: caf\u00e9\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        assert received.body == body


async def test_request_with_a_line_break_in_a_header_is_refused_before_connecting(serve: Serve, pools: Pools) -> None:
    endpoint = await serve(answer_every_request)
    pool = pools()
    with pytest.raises(ValueError, match="line break"):
        await send(pool, endpoint.origin(), headers=[("X-A", "1\r\nX-Injected: 1")])
    assert pool.open_connections == 0
    assert endpoint.peers == []


# -- against the DMR emulator


async def test_against_the_emulator_lists_and_streams_on_one_kept_alive_connection(
    procs: ProcessFactory, pools: Pools
) -> None:
    emulator = procs.emulator("--load-time-ms", "0", "--chunks", "3")
    origin = Origin.parse(emulator.url)
    pool = pools()
    listing = await send(pool, origin, "/engines/v1/models")
    assert listing.status == 200
    models = json.loads(await read_all(listing))
    assert [m["id"] for m in models["data"]] == ["ai/smollm2:latest"]
    listing.release()
    request = {"model": "ai/smollm2", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    stream = await send(
        pool,
        origin,
        "/engines/v1/chat/completions",
        method="POST",
        headers=[("Content-Type", "application/json")],
        body=json.dumps(request).encode(),
    )
    assert stream.status == 200
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    events = [line[len(b"data: ") :] for line in (await read_all(stream)).split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    assert len(events) >= 4
    stream.release()
    missing = await send(pool, origin, "/engines/v1/models/ai/not-there")
    assert missing.status == 404
    assert b"not found" in await read_all(missing)  # DMR's plain-text 404
    missing.release()
    assert (pool.open_connections, pool.idle_connections) == (1, 1)


# -- the same scenarios on uvloop, the loop the router runs on (`install_uvloop`): its transports are not
# asyncio's (read sizes, EOF and pause handling differ), so each pool scenario above runs on it too.

Scenario = Callable[[Serve, Pools], Awaitable[None]]


def _framed(framing: str) -> Scenario:
    async def each_streamed_write_arrives_as_its_own_read(serve: Serve, pools: Pools) -> None:
        await test_each_streamed_write_arrives_as_its_own_read(framing, serve, pools)

    return each_streamed_write_arrives_as_its_own_read


def _slow_reader(framing: str) -> Scenario:
    async def slow_reader_bounds_what_the_client_buffers(serve: Serve, pools: Pools) -> None:
        await test_slow_reader_bounds_what_the_client_buffers(framing, serve, pools)

    return slow_reader_bounds_what_the_client_buffers


def _case(scenario: Scenario, suffix: str = "") -> Any:
    return pytest.param(scenario, id=scenario.__name__.removeprefix("test_") + suffix)


UVLOOP_SCENARIOS = [
    _case(test_keep_alive_reuses_one_connection_for_sequential_requests),
    _case(test_connection_close_answer_is_not_pooled_and_the_next_request_opens_a_new_connection),
    _case(test_pooled_connection_the_endpoint_closed_while_idle_is_replaced_by_a_fresh_one),
    _case(test_reused_connection_closed_instead_of_answering_is_upstream_disconnected_reused),
    _case(test_fresh_connection_closed_before_any_answer_is_upstream_disconnected_not_reused),
    _case(test_fresh_connection_reset_before_any_answer_is_upstream_disconnected_not_reused),
    _case(test_connect_refused_is_an_os_error_and_frees_the_slot),
    _case(test_connect_timeout_raises_timeout_and_frees_the_slot),
    _case(test_bad_response_raises_and_closes_the_connection),
    _case(test_interim_response_is_skipped),
    _case(test_head_request_response_has_no_body_and_the_connection_is_not_reused),
    _case(test_stray_bytes_after_the_response_close_the_connection),
    _case(test_bytes_on_an_idle_connection_close_it),
    _case(test_head_timeout_raises_and_the_endpoint_sees_the_connection_closed),
    _case(test_read_timeout_between_body_reads),
    _case(test_cancelling_a_request_waiting_for_its_head_closes_the_connection_and_the_pool_stays_usable),
    _case(test_content_length_body_cut_midway_raises_connection_reset),
    _case(test_chunked_body_cut_midway_raises_connection_reset),
    _case(test_body_reset_midway_raises_connection_reset),
    _case(test_limit_makes_a_second_request_wait_for_the_first_connection_then_reuse_it),
    _case(test_limit_closes_an_idle_connection_of_another_origin_to_make_room),
    _case(test_idle_connection_expires_after_keepalive),
    _case(test_pool_close_closes_idle_and_busy_connections_and_refuses_new_requests),
    _case(test_limit_waiter_cancelled_once_woken_passes_the_wake_up_on),
    _case(test_limit_waiter_gets_a_new_connection_when_the_busy_one_breaks),
    _case(test_pool_close_fails_a_request_waiting_for_a_connection),
    _case(test_release_of_a_partly_read_body_closes_the_connection),
    _case(test_release_of_an_arrived_but_unread_body_closes_the_connection),
    _case(test_request_bytes_as_the_endpoint_receives_them),
    _case(test_request_with_a_line_break_in_a_header_is_refused_before_connecting),
    *(_case(_framed(framing), f"[{framing}]") for framing in ("chunked", "close")),
    *(_case(_slow_reader(framing), f"[{framing}]") for framing in ("length", "chunked", "close")),
]


@pytest.mark.parametrize("scenario", UVLOOP_SCENARIOS)
def test_on_uvloop(scenario: Scenario) -> None:
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed: the router would run on asyncio's loop")

    async def main() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        async with endpoints() as serve, pool_factory() as pools:
            await scenario(serve, pools)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
