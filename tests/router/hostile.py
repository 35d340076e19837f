"""A hostile (or merely broken) endpoint, as a real process: `python -m tests.router.hostile --port N`.

It answers the health worker's probes like a DMR with one model, and every inference request by the attack its
`X-Attack` header names (the router forwards client headers). A request without one is an honest user's: it gets
a chat completion whose content is the request's `X-Nonce`, so a test can tell its own answer from anyone
else's. Raw bytes on a raw asyncio server: every misframing is exactly the one under test.
"""

from __future__ import annotations

import argparse
import asyncio
import json

MODEL = "ai/smollm2:latest"
EVIL = json.dumps(
    {"id": "chatcmpl-evil", "object": "chat.completion", "model": MODEL,
     "choices": [{"index": 0, "message": {"role": "assistant", "content": "SMUGGLED response meant for nobody"},
                  "finish_reason": "stop"}]}
).encode()  # fmt: skip
LATE_S = 0.005  # how long the attacker waits before its late bytes (2-20 ms reached other users in the report)


def answer(status: str, fields: list[str], body: bytes = b"") -> bytes:
    return f"HTTP/1.1 {status}\r\n".encode() + "".join(f"{f}\r\n" for f in fields).encode() + b"\r\n" + body


def honest(nonce: str) -> bytes:
    body = json.dumps(
        {"id": f"chatcmpl-{nonce}", "object": "chat.completion", "model": MODEL,
         "choices": [{"index": 0, "message": {"role": "assistant", "content": nonce}, "finish_reason": "stop"}]}
    ).encode()  # fmt: skip
    return answer("200 OK", ["Content-Type: application/json", f"Content-Length: {len(body)}"], body)


def listing(path: str) -> bytes:
    if path.endswith("/v1/models"):
        data: object = {
            "object": "list",
            "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "docker"}],
        }
    elif path in ("/engines/ps", "/models"):
        data = []
    elif path == "/engines/status":
        data = {"llama.cpp": "Running: llama.cpp hostile"}
    elif path == "/version":
        data = {"version": "v1.2.6"}
    else:
        return answer("404 Not Found", ["Content-Type: text/plain", "Content-Length: 9"], b"not found")
    body = json.dumps(data).encode()
    return answer("200 OK", ["Content-Type: application/json", f"Content-Length: {len(body)}"], body)


# Each attack: (what is written at once, what is written LATE_S later or None, close the connection after).
CL_EVIL = f"Content-Length: {len(EVIL)}"
ATTACKS: dict[str, tuple[bytes, bytes | None, bool]] = {
    "204-late-body": (answer("204 No Content", [CL_EVIL]), EVIL, False),
    "304-late-body": (answer("304 Not Modified", ["Transfer-Encoding: chunked"]), EVIL, False),
    "204-late-body-no-headers": (answer("204 No Content", []), EVIL, False),
    "100-with-body-headers": (answer("100 Continue", [CL_EVIL]) + honest("victim"), EVIL, False),
    "cl-and-chunked": (
        answer("200 OK", ["Content-Length: 5", "Transfer-Encoding: chunked"], b"0\r\n\r\n"),
        honest("smuggled"),
        False,
    ),
    "gzip-chunked": (
        answer(
            "200 OK",
            ["Content-Type: application/json", "Transfer-Encoding: gzip, chunked"],
            b"a\r\n\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\r\n0\r\n\r\n",
        ),
        None,
        False,
    ),
    "identity-with-length": (
        answer("200 OK", ["Transfer-Encoding: identity", "Content-Length: 500"], b"short"),
        None,
        True,
    ),
    "http10-identity-with-length": (
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 500\r\n\r\nshort",
        None,
        True,
    ),
    "http10-until-close": (b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + EVIL, None, True),
    "longer-than-length": (answer("200 OK", ["Content-Length: 2"], b"ok") + honest("smuggled"), None, False),
    "longer-than-length-late": (answer("200 OK", ["Content-Length: 2"], b"ok"), honest("smuggled"), False),
    "shorter-than-length": (answer("200 OK", ["Content-Length: 100"], b"partial"), None, True),
    "extensions-and-trailers": (
        answer("200 OK", ["Transfer-Encoding: chunked"], b"2;x=1\r\nok\r\n0\r\nT: 1\r\n\r\n"),
        None,
        False,
    ),
    "early-close": (b"", None, True),
}


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]] | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = raw.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    await reader.readexactly(int(headers.get("content-length", "0")))
    return method, path.split("?", 1)[0], headers


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while (request := await read_request(reader)) is not None:
            method, path, headers = request
            attack = headers.get("x-attack")
            if method == "GET":
                writer.write(listing(path))
            elif attack is None:
                writer.write(honest(headers.get("x-nonce", "no-nonce")))
            else:
                now, late, close = ATTACKS[attack]
                writer.write(now)
                if late is not None:
                    await asyncio.sleep(LATE_S)
                    writer.write(late)
                if close:
                    break
            await writer.drain()
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    print(f"hostile endpoint listening on http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
