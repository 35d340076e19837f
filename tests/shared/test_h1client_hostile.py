"""A hostile (or merely broken) endpoint against the pool: a misframed answer never reaches another request.

The endpoint is a raw asyncio server scripted per connection (the scripted endpoints of test_h1client). Every
scenario sends a victim request that gets a misframed answer, then follow-up requests on the same pool, as other
users' requests would be: each follow-up must get exactly its own answer (it carries a nonce the endpoint
echoes), never a byte of the victim's. Each also runs on uvloop, the router's loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from shared.h1client import BadResponse, UpstreamPool
from tests.shared.test_h1client import (
    Peer,
    Pools,
    Serve,
    endpoints,
    eventually,
    pool_factory,
    read_all,
    send,
)

EVIL = b'{"id":"chatcmpl-evil","choices":[{"message":{"content":"SMUGGLED response meant for nobody"}}]}'


def own_answer(nonce: str) -> bytes:
    body = f'{{"nonce":"{nonce}"}}'.encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def nonce_of(peer_request_target: str) -> str:
    return peer_request_target.rsplit("/", 1)[-1]


async def follow_ups(pool: UpstreamPool, origin: Any, count: int, *, concurrent: bool) -> None:
    """`count` requests from 'other users': each must read exactly its own answer."""

    async def one(i: int) -> None:
        nonce = f"user-{i}"
        response = await send(pool, origin, f"/v1/echo/{nonce}")
        body = await read_all(response)
        response.release()
        assert body == f'{{"nonce":"{nonce}"}}'.encode(), f"follow-up {i} read a foreign answer: {body!r}"

    if concurrent:
        await asyncio.gather(*(one(i) for i in range(count)))
    else:
        for i in range(count):
            await one(i)


Victim = Callable[[Peer, bytes], Awaitable[None]]  # answers the victim request on `peer`


def script_with(victim: Victim) -> Callable[[Peer], Awaitable[None]]:
    async def script(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            if request.target.startswith("/v1/echo/"):
                peer.send(own_answer(nonce_of(request.target)))
            else:
                await victim(peer, request.body)

    return script


async def late_bytes(peer: Peer, head: bytes, late: bytes, delay_s: float = 0.002) -> None:
    peer.send(head)
    await asyncio.sleep(delay_s)  # the endpoint's own pacing (the attack), not the test's sequencing
    peer.send(late)


def evil_head(status_line: bytes, *fields: bytes) -> bytes:
    return status_line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


CL_EVIL = b"Content-Length: %d" % len(EVIL)


async def victim_204_late_body(peer: Peer, _: bytes) -> None:
    await late_bytes(peer, evil_head(b"HTTP/1.1 204 No Content", CL_EVIL), EVIL)


async def victim_304_late_body(peer: Peer, _: bytes) -> None:
    await late_bytes(peer, evil_head(b"HTTP/1.1 304 Not Modified", b"Transfer-Encoding: chunked"), EVIL)


async def victim_204_late_body_no_headers(peer: Peer, _: bytes) -> None:
    await late_bytes(peer, evil_head(b"HTTP/1.1 204 No Content"), EVIL)


async def victim_interim_with_body_headers(peer: Peer, _: bytes) -> None:
    await late_bytes(peer, evil_head(b"HTTP/1.1 100 Continue", CL_EVIL) + own_answer("victim"), EVIL)


async def victim_cl_and_te(peer: Peer, _: bytes) -> None:
    peer.send(evil_head(b"HTTP/1.1 200 OK", b"Content-Length: 5", b"Transfer-Encoding: chunked") + b"0\r\n\r\n")
    await asyncio.sleep(0.002)
    peer.send(own_answer("smuggled"))  # a second answer hidden behind the conflicting framing


async def victim_longer_than_length(peer: Peer, _: bytes) -> None:
    peer.send(evil_head(b"HTTP/1.1 200 OK", b"Content-Length: 2") + b"ok" + own_answer("smuggled"))


async def victim_longer_than_length_late(peer: Peer, _: bytes) -> None:
    await late_bytes(peer, evil_head(b"HTTP/1.1 200 OK", b"Content-Length: 2") + b"ok", own_answer("smuggled"))


async def victim_chunk_extensions_and_trailers(peer: Peer, _: bytes) -> None:
    peer.send(evil_head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked") + b"2;ext=1\r\nok\r\n0\r\nX-T: 1\r\n\r\n")


async def victim_http10_close_framed(peer: Peer, _: bytes) -> None:
    peer.send(evil_head(b"HTTP/1.0 200 OK") + b"read until close")
    peer.close()


# (victim, what the victim's request sees: bytes of its body, or an exception type)
CASES: dict[str, tuple[Victim, bytes | type[BaseException]]] = {
    "204-late-body": (victim_204_late_body, b""),
    "304-te-late-body": (victim_304_late_body, b""),
    "204-late-body-no-headers": (victim_204_late_body_no_headers, b""),
    "100-with-body-headers": (victim_interim_with_body_headers, b'{"nonce":"victim"}'),
    "content-length-and-chunked": (victim_cl_and_te, b""),
    "longer-than-content-length": (victim_longer_than_length, b"ok"),
    "longer-than-content-length-late": (victim_longer_than_length_late, b"ok"),
    "chunk-extensions-and-trailers": (victim_chunk_extensions_and_trailers, b"ok"),
    "http10-read-until-close": (victim_http10_close_framed, b"read until close"),
}


async def run_case(serve: Serve, pools: Pools, name: str, *, concurrent: bool) -> None:
    victim, expected = CASES[name]
    endpoint = await serve(script_with(victim))
    pool = pools()
    origin = endpoint.origin()
    response = await send(pool, origin, "/v1/chat/completions", method="POST", body=b"{}")
    body = await read_all(response)
    response.release()
    assert body == expected
    if name == "longer-than-content-length-late":
        # The stray answer arrives while the connection idles in the pool: it must be dropped, not served.
        await eventually(lambda: pool.anomalies, "the idle connection's stray bytes to be noticed")
    await follow_ups(pool, origin, 6, concurrent=concurrent)
    if name == "longer-than-content-length-late":
        # The stray bytes' connection never served a follow-up: the first follow-up opened a new one.
        assert len(endpoint.peers[0].requests) == 1


@pytest.mark.parametrize("concurrent", [False, True], ids=["sequential", "concurrent"])
@pytest.mark.parametrize("name", list(CASES))
async def test_no_follow_up_sees_a_foreign_byte(serve: Serve, pools: Pools, name: str, concurrent: bool) -> None:
    await run_case(serve, pools, name, concurrent=concurrent)


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"identity", b"deflate"])
async def test_an_undecodable_transfer_coding_is_a_bad_response_and_logged(
    serve: Serve, pools: Pools, coding: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def victim(peer: Peer, _: bytes) -> None:
        peer.send(evil_head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: " + coding, b"Content-Length: 5") + b"\x1f\x8b")

    endpoint = await serve(script_with(victim))
    pool = pools()
    with caplog.at_level(logging.WARNING, logger="shared.h1client"), pytest.raises(BadResponse, match="unsupported"):
        await pool.request(
            endpoint.origin(), "POST", "/v1/chat/completions", (), b"{}",
            connect_timeout_s=5, head_timeout_s=5, read_timeout_s=5, label="gpu-7",
        )  # fmt: skip
    assert any("endpoint gpu-7: unsupported Transfer-Encoding" in r.getMessage() for r in caplog.records)
    await follow_ups(pool, endpoint.origin(), 3, concurrent=False)


async def test_bytes_waiting_in_an_idle_socket_are_caught_at_checkout(
    serve: Serve, pools: Pools, caplog: pytest.LogCaptureFixture
) -> None:
    """The loop has not read them yet (no await between their arrival and the next request): the socket is asked."""
    endpoint = await serve(script_with(victim_chunk_extensions_and_trailers))
    pool = pools()
    origin = endpoint.origin()
    first = await pool.request(
        origin, "POST", "/v1/chat/completions", (), b"{}",
        connect_timeout_s=5, head_timeout_s=5, read_timeout_s=5, label="gpu-7",
    )  # fmt: skip
    assert await read_all(first) == b"ok"
    first.release()
    assert pool.idle_connections == 1
    # The endpoint's late write lands in the client's socket buffer at once (loopback); with no await after it,
    # the pool's protocol has not seen it when the next request checks the connection out.
    endpoint.peers[0].send(own_answer("smuggled"))
    with caplog.at_level(logging.WARNING, logger="shared.h1client"):
        response = await pool.request(
            origin, "GET", "/v1/echo/user-0", (), b"",
            connect_timeout_s=5, head_timeout_s=5, read_timeout_s=5, label="gpu-7",
        )  # fmt: skip
    assert await read_all(response) == b'{"nonce":"user-0"}'
    response.release()
    assert len(endpoint.peers) == 2  # the idle connection was discarded at checkout
    assert pool.anomalies["unsolicited bytes on an idle connection"] == 1
    assert any("endpoint gpu-7: unsolicited bytes on an idle connection" in r.getMessage() for r in caplog.records)


async def test_an_endpoint_that_closes_early_fails_only_its_own_request(serve: Serve, pools: Pools) -> None:
    async def victim(peer: Peer, _: bytes) -> None:
        peer.send(evil_head(b"HTTP/1.1 200 OK", b"Content-Length: 100") + b"partial")
        peer.close()

    endpoint = await serve(script_with(victim))
    pool = pools()
    response = await send(pool, endpoint.origin(), "/v1/chat/completions", method="POST", body=b"{}")
    with pytest.raises(ConnectionResetError):
        await read_all(response)
    response.close()
    await follow_ups(pool, endpoint.origin(), 4, concurrent=True)


@pytest.mark.parametrize("name", list(CASES))
def test_on_uvloop(name: str) -> None:
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed: the router would run on asyncio's loop")

    async def main() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        async with endpoints() as serve, pool_factory() as pools:
            await run_case(serve, pools, name, concurrent=True)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
