"""A local OTLP/HTTP receiver for the telemetry-on setting: accepts exports, keeps counts, discards the rest.

It answers what the OTLP/HTTP exporters expect (200 and an empty protobuf export response) so the
exporter under test does its full work; `GET /stats` shows how many exports and bytes arrived, which
proves telemetry really flowed during the run.

    python -m tests.benchmarks.otlp_sink --port 4318
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

COUNTS = web.AppKey("counts", dict[str, int])


async def export(request: web.Request) -> web.Response:
    body = await request.read()
    counts = request.app[COUNTS]
    signal = request.match_info["signal"]
    counts[f"{signal}_requests"] = counts.get(f"{signal}_requests", 0) + 1
    counts[f"{signal}_bytes"] = counts.get(f"{signal}_bytes", 0) + len(body)
    # An empty Export*ServiceResponse is zero bytes of protobuf: full success, nothing rejected.
    return web.Response(body=b"", content_type="application/x-protobuf")


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[COUNTS])


def build_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[COUNTS] = {}
    app.router.add_post("/v1/{signal:traces|metrics|logs}", export)
    app.router.add_get("/stats", stats)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    web.run_app(build_app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
