"""A purpose-built DMR-shaped upstream whose SSE events are produced over time.

nginx serves fixed bodies fast but cannot space events out, so the streaming figures (time to first byte,
one read per event) need an upstream that writes each event on its own, `--interval-ms` apart. It is a raw
asyncio server (no framework) so its own cost stays far below any proxy's. It also answers the routes the
health worker probes, listing the `--model` names, so Pier sees it as a healthy DMR endpoint.

`--total-bytes N` turns streaming into bulk mode: events of `--event-bytes` written back to back, unpaced,
until N bytes were sent (the 1 GiB memory test).

    python -m tests.benchmarks.paced_upstream --port 8081 --events 20 --interval-ms 20 --model bench-sse
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from shared.names import normalise_model

CHAT_JSON = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the benchmark upstream."},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":7,"total_tokens":16}}'
)
MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class StreamShape:
    events: int  # data events including the final `data: [DONE]`
    interval_s: float
    event_bytes: int  # padding target for each chunk event (0: natural size)
    total_bytes: int  # > 0: bulk mode


def chunk_event(index: int, *, finish: bool = False, pad_to: int = 0) -> bytes:
    """One OpenAI `chat.completion.chunk` SSE event (padded with content when `pad_to` asks for it)."""
    finish_reason = '"stop"' if finish else "null"
    head = (
        '{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench",'
        f'"choices":[{{"index":0,"delta":{{"content":"tok{index} '
    )
    tail = f'"}},"finish_reason":{finish_reason}}}]}}'
    pad = max(0, pad_to - len(head) - len(tail) - 8)
    return f"data: {head}{'x' * pad}{tail}\n\n".encode()


def sse_body(events: int) -> bytes:
    """The whole stream at once (what nginx serves as its fixed SSE body)."""
    return b"".join(_event(i, events, 0) for i in range(events))


def _event(index: int, events: int, pad_to: int) -> bytes:
    if index == events - 1:
        return b"data: [DONE]\n\n"
    return chunk_event(index, finish=index == events - 2, pad_to=pad_to)


def listings(models: list[str]) -> dict[str, bytes]:
    """The DMR probe routes (GET), answering as a current DMR with every model pulled and loaded."""
    names = [normalise_model(m) for m in models]
    return {
        "/": b"Docker Model Runner is running",
        "/engines/v1/models": json.dumps(
            {
                "object": "list",
                "data": [{"id": n, "object": "model", "created": 0, "owned_by": "docker"} for n in names],
            }
        ).encode(),
        "/v1/models": json.dumps(
            {
                "object": "list",
                "data": [{"id": n, "object": "model", "created": 0, "owned_by": "docker"} for n in names],
            }
        ).encode(),
        "/models": json.dumps(
            [
                {"id": f"sha256:{i:064x}", "tags": [n], "created": 0, "config": {"format": "gguf", "size": "1 MiB"}}
                for i, n in enumerate(names)
            ]
        ).encode(),
        "/engines/ps": json.dumps(
            [{"backend_name": "llama.cpp", "model_name": n, "mode": "completion", "keep_alive": "-1"} for n in names]
        ).encode(),
        "/engines/status": b'{"llama.cpp":"Running: llama.cpp bench"}',
        "/version": b'{"version":"v1.2.6"}',
    }


class Upstream:
    """Serves HTTP/1.1 keep-alive connections; one coroutine per connection."""

    def __init__(self, shape: StreamShape, models: list[str]) -> None:
        self.shape = shape
        self.routes = listings(models)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEADER_BYTES:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, path, _version = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await _read_body(reader, headers)
        keep_alive = headers.get("connection", "").lower() != "close"
        path = path.split("?", 1)[0]
        if method == "GET":
            payload = self.routes.get(path)
            if payload is None:
                await _respond(writer, 404, b'{"error":"not found"}', keep_alive)
            else:
                kind = b"text/plain" if path == "/" else b"application/json"
                await _respond(writer, 200, payload, keep_alive, content_type=kind)
            return keep_alive
        if method != "POST":
            await _respond(writer, 405, b'{"error":"method not allowed"}', keep_alive)
            return keep_alive
        if _wants_stream(body):
            await self._stream(writer, keep_alive)
        else:
            await _respond(writer, 200, CHAT_JSON, keep_alive)
        return keep_alive

    async def _stream(self, writer: asyncio.StreamWriter, keep_alive: bool) -> None:
        connection = b"keep-alive" if keep_alive else b"close"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: " + connection + b"\r\n\r\n"
        )
        shape = self.shape
        if shape.total_bytes > 0:
            event = chunk_event(0, pad_to=shape.event_bytes)
            frame = b"%x\r\n%s\r\n" % (len(event), event)
            sent = 0
            while sent < shape.total_bytes:
                writer.write(frame)
                sent += len(event)
                await writer.drain()
            done = b"data: [DONE]\n\n"
            writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
            await writer.drain()
            return
        for index in range(shape.events):
            if index:
                await asyncio.sleep(shape.interval_s)
            event = _event(index, shape.events, shape.event_bytes)
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def _wants_stream(body: bytes) -> bool:
    if b'"stream"' not in body:
        return False
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("stream") is True


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers are sent by the clients used here
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = int(headers.get("content-length", "0") or 0)
    return await reader.readexactly(length) if length else b""


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    payload: bytes,
    keep_alive: bool,
    *,
    content_type: bytes = b"application/json",
) -> None:
    reason = {200: b"OK", 404: b"Not Found", 405: b"Method Not Allowed"}[status]
    connection = b"keep-alive" if keep_alive else b"close"
    writer.write(
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n%s"
        % (status, reason, content_type, len(payload), connection, payload)
    )
    await writer.drain()


async def serve(port: int, shape: StreamShape, models: list[str]) -> None:
    upstream = Upstream(shape, models)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", port, backlog=4096, limit=MAX_HEADER_BYTES)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--events", type=int, default=20, help="SSE events per stream, [DONE] included")
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--event-bytes", type=int, default=0, help="pad each chunk event to about this size")
    parser.add_argument("--total-bytes", type=int, default=0, help="bulk mode: stream this many bytes unpaced")
    parser.add_argument("--model", action="append", default=[], help="model name to list (repeatable)")
    args = parser.parse_args(argv)
    if args.events < 2:
        parser.error("--events must be at least 2 (one chunk and [DONE])")
    shape = StreamShape(args.events, args.interval_ms / 1000, args.event_bytes, args.total_bytes)
    run_fast(serve(args.port, shape, args.model or ["bench-sse"]))


def run_fast(main_coro: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when installed (as the proxies under test do); Ctrl-C exits quietly."""
    try:
        import uvloop
    except ImportError:
        runner: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(main_coro)
    except KeyboardInterrupt:
        os._exit(0)


if __name__ == "__main__":
    main()
