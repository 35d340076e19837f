"""A real Prometheus (Debian's `prometheus`) scrapes a router under load at `/internal/metrics`, and every PromQL
query of both dashboards goes through its HTTP API: each router query returns data; the health/warm-up ones
(which reach Prometheus only over OTLP) must at least parse. The committed dashboards match their generator."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from observability import dashboards
from tests.harness import Proc, ProcessFactory, free_port, http_ok, wait_for
from tests.router.support import (
    MODEL,
    chat,
    endpoint,
    get_json,
    start_emulator,
    start_health,
    start_router,
    wait_routable_sync,
    write_config,
)

CHAT = "/engines/v1/chat/completions"
EMBED = "/engines/v1/embeddings"
WINDOW = "1m"


def start_prometheus(procs: ProcessFactory, workdir: Path, target: str) -> Proc:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Debian's prometheus is not installed (.ci/run installs it: apt-get install prometheus)")
    config = workdir / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: pier-router\n"
        "    metrics_path: /internal/metrics\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    return procs.start(
        "prometheus",
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        port=port,
        ready=lambda p: http_ok(f"{p.url}/-/ready"),
        ready_timeout_s=30,
    )


def query(prometheus: Proc, expr: str) -> dict[str, Any]:
    concrete = expr.replace("$__rate_interval", WINDOW).replace("$model", ".*").replace("$endpoint", ".*")
    reply: dict[str, Any] = get_json(f"{prometheus.url}/api/v1/query?query={urllib.parse.quote(concrete)}")
    assert reply["status"] == "success", (concrete, reply)
    return reply["data"]  # type: ignore[no-any-return]


def test_committed_dashboards_are_generated() -> None:
    assert dashboards.LGTM_FILE.read_text() == dashboards.render(otlp=True)
    assert dashboards.PROMETHEUS_FILE.read_text() == dashboards.render(otlp=False)


async def test_prometheus_scrapes_the_router_and_every_dashboard_query_returns_data(
    procs: ProcessFactory, tmp_path: Path, redis_url: str
) -> None:
    e1 = start_emulator(procs, "e1")
    e2 = start_emulator(procs, "e2")
    config = write_config(tmp_path / "pier.yaml", [endpoint("e1", e1.url, 100), endpoint("e2", e2.url, 50)])
    start_health(procs, redis_url, tmp_path, config)
    router = start_router(procs, redis_url, config, OTEL_SDK_DISABLED="false", PIER_PROMETHEUS_METRICS="true")
    wait_routable_sync(router.url, ["e1", "e2"])
    prometheus = start_prometheus(procs, tmp_path, router.url.removeprefix("http://"))

    async with aiohttp.ClientSession(base_url=router.url) as http:

        async def load(rounds: int) -> None:
            for _ in range(rounds):
                async with http.post(CHAT, json=chat(MODEL, stream=True)) as resp:
                    await resp.read()
                async with http.post(CHAT, json=chat(MODEL)) as resp:
                    await resp.read()
                async with http.post(EMBED, json={"model": MODEL, "input": "hi"}) as resp:
                    await resp.read()

        await load(5)
        # Errors by type: e1 answers 500 three times.
        await e1.fault(mode="status", status=500, count=3, paths=[CHAT])
        for _ in range(3):
            async with http.post(CHAT, json=chat(MODEL)) as resp:
                assert resp.status == 500
        # A failover: e1 refuses; the request goes to e2.
        await e1.fault(mode="refuse")
        async with http.post(CHAT, json=chat(MODEL)) as resp:
            assert resp.headers["X-Pier-Endpoint"] == "e2"
        await e1.fault(mode="none")
        scrape = await (await http.get("/internal/metrics")).text()
        assert "gen_ai_client_operation_duration_seconds_bucket" in scrape
        # Keep load on while Prometheus takes a few scrapes (rate() needs two samples in its window).
        background = asyncio.create_task(load(1000))
        try:

            async def scraped_enough() -> bool:
                expr = "count_over_time(pier_router_failovers_total[1m])"
                data = await asyncio.to_thread(query, prometheus, expr)
                return bool(data["result"]) and float(data["result"][0]["value"][1]) >= 3

            await wait_for(scraped_enough, timeout_s=30, what="three scrapes after the failover")
            empty: list[str] = []
            for expr in dashboards.promql_queries(otlp=False):
                if not (await asyncio.to_thread(query, prometheus, expr))["result"]:
                    empty.append(expr)
            assert not empty, f"dashboard queries without data: {empty}"
            # The OTLP-only panels (health, warm-up) have no data in a scrape of the router, but must parse.
            for expr in set(dashboards.promql_queries(otlp=True)) - set(dashboards.promql_queries(otlp=False)):
                await asyncio.to_thread(query, prometheus, expr)
        finally:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
