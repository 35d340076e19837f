"""Every upstream connection asks the kernel to watch for a dead peer: keep-alive probes and TCP_USER_TIMEOUT.

A partitioned endpoint sends nothing at all (no FIN, no RST), and a stream may rightly be silent for a long
prefill, so read timeouts cannot tell the two apart; the peer's kernel not answering probes can. The effect
under a real partition is measured in the compose tier (tests/compose/test_partition.py); here, on a real
connection to a real server, the options the pool set are read back from the socket.
"""

from __future__ import annotations

import asyncio
import socket

from shared.h1client import (
    DEAD_PEER_IDLE_S,
    DEAD_PEER_INTERVAL_S,
    DEAD_PEER_PROBES,
    DEAD_PEER_TIMEOUT_MS,
    Origin,
    UpstreamPool,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_upstream_sockets_watch_for_a_dead_peer() -> None:
    served = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        await writer.drain()
        await reader.read()  # keep the connection until the client closes it
        writer.close()
        await writer.wait_closed()  # closed before the test's loop ends (else its __del__ warns)
        served.set()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(keepalive_s=60.0)
    try:
        response = await pool.request(
            Origin.parse(f"http://127.0.0.1:{port}"),
            "GET",
            "/",
            [],
            b"",
            connect_timeout_s=5,
            head_timeout_s=5,
            read_timeout_s=5,
        )
        assert await response.read(1024) == b"ok"
        response.release()
        (conn,) = pool._open
        sock = socket.socket(fileno=conn.fd)  # the same socket, read back through a second object
        try:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == DEAD_PEER_IDLE_S
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == DEAD_PEER_INTERVAL_S
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == DEAD_PEER_PROBES
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == DEAD_PEER_TIMEOUT_MS
        finally:
            sock.detach()  # the fd stays the pool's
    finally:
        await pool.close()
        await asyncio.wait_for(served.wait(), 10)
        server.close()
        await server.wait_closed()
