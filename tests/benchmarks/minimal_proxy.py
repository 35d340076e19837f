"""The Python floor: the smallest reasonable aiohttp reverse proxy, for Pier to be measured against.

One shared ClientSession with keep-alive, uvloop, no routing, no logging. A body with a Content-Length that is
not an event stream is answered in one `web.Response(body=await upstream.read())`; SSE and bodies of unknown
length are relayed with `iter_any()` as they arrive. `--stream-all` streams every answer (prepare, `iter_any`,
`write_eof`): the old floor, kept as the `minimal-streaming` row. Pier does more work per request than this;
the targets ask it to cost no more.

    python -m tests.benchmarks.minimal_proxy --port 8080 --upstream http://127.0.0.1:8081 [--stream-all]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding"}
    | {"upgrade", "host", "content-length"}
)
UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", ClientSession)
STREAM_ALL = web.AppKey("stream_all", bool)


async def relay(request: web.Request) -> web.StreamResponse:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    body = await request.read()
    url = request.app[UPSTREAM] + request.path_qs
    async with request.app[SESSION].request(request.method, url, headers=headers, data=body) as upstream:
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        sse = upstream.headers.get("Content-Type", "").startswith("text/event-stream")
        if upstream.content_length is not None and not sse and not request.app[STREAM_ALL]:
            return web.Response(status=upstream.status, headers=out_headers, body=await upstream.read())
        reply = web.StreamResponse(status=upstream.status, headers=out_headers)
        if upstream.content_length is not None:
            reply.content_length = upstream.content_length
        await reply.prepare(request)
        async for chunk in upstream.content.iter_any():
            await reply.write(chunk)
        await reply.write_eof()
        return reply


async def session_context(app: web.Application) -> AsyncIterator[None]:
    connector = TCPConnector(limit=0, keepalive_timeout=60)
    timeout = ClientTimeout(total=None, connect=5, sock_read=300)
    async with ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        app[SESSION] = session
        yield


def build_app(upstream: str, *, stream_all: bool = False) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app[STREAM_ALL] = stream_all
    app.cleanup_ctx.append(session_context)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8081")
    parser.add_argument("--stream-all", action="store_true", help="stream every answer (the old floor)")
    args = parser.parse_args(argv)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    web.run_app(
        build_app(args.upstream, stream_all=args.stream_all),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
