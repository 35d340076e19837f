"""The status page at `/` (issue 15): its routes over HTTP, then the page itself in a real browser (Debian's
chromium through Playwright) against real processes: redis-server, DMR emulators, the health worker, the router.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict
from pydantic import ValidationError
from redis.asyncio import Redis

from services.router.conditional import matches
from services.router.page import wants_html
from services.router.rates import quantile
from services.router.settings import RouterSettings
from shared import statestore
from shared.state import EndpointState, EndpointStatus, LoadedModel, WarmPhase, WarmState
from tests.harness import ROOT, ProcessFactory, RedisServer, wait_for
from tests.router.browser import LAUNCH_ARGS, chromium_path
from tests.router.support import EmuSpec, Stack, build_stack, chat, start_router, write_config

EVIL = "<img src=x onerror=alert(1)>"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
PAGE_ENV = {
    "PIER_PROMETHEUS_METRICS": "true",  # the router's own counters, which the page's live rates read
    "OTEL_SDK_DISABLED": "false",
    "PIER_GRAFANA_URL": "http://grafana.test:3000/d/pier",
}
SCREENSHOT = ROOT / "docs" / "status-page.png"
FLEET_ENDPOINTS = 200
FLEET_MODELS = 1000
FLEET_BUDGET_S = 5.0  # from navigation to 200 endpoint rows and 1,000 model rows on screen
RENDER_BUDGET_MS = 1000.0  # the longest the page's render may hold the main thread at that size


# --- pure parts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (BROWSER_ACCEPT, True),
        ("text/html", True),
        (None, False),
        ("", False),
        ("*/*", False),
        ("application/json", False),
        ("text/plain", False),
        ("text/html;q=0.5, text/plain", False),
        ("text/html;q=0", False),
        ("text/html;q=abc", False),
        ("text/*", False),
    ],
)
def test_only_a_request_that_prefers_html_gets_the_page(accept: str | None, html: bool) -> None:
    assert wants_html(accept) is html


def test_if_none_match_uses_weak_comparison() -> None:
    assert matches('"abc"', '"abc"')
    assert matches('W/"abc"', '"abc"')
    assert matches('"x", W/"abc"', 'W/"abc"')
    assert matches("*", '"abc"')
    assert not matches('"abd"', '"abc"')
    assert not matches(None, '"abc"')


def test_p95_interpolates_inside_its_bucket() -> None:
    bounds = (0.1, 0.2, 0.4)
    assert quantile(0.95, bounds, [0, 0, 0, 0]) is None
    assert quantile(0.95, bounds, [100, 0, 0, 0]) == pytest.approx(0.095)
    assert quantile(0.95, bounds, [50, 50, 0, 0]) == pytest.approx(0.19)
    assert quantile(0.95, bounds, [0, 0, 0, 10]) == 0.4  # above the last bound: the bound, a lower limit


@pytest.mark.parametrize("url", ["javascript:alert(1)", "grafana:3000", "http://", "http://a b"])
def test_grafana_url_must_be_http(url: str) -> None:
    with pytest.raises(ValidationError, match="grafana_url"):
        RouterSettings(grafana_url=url)
    assert RouterSettings(grafana_url=" https://grafana.example/d/x ").grafana_url == "https://grafana.example/d/x"


def test_the_wheel_ships_every_asset() -> None:
    """pyproject's package-data names the page's files (the wheel and the image serve them from the package)."""
    import fnmatch
    import tomllib

    from services.router.page import ASSETS

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"
    ]["services.router"]
    for name in ASSETS:
        assert any(fnmatch.fnmatch(f"static/{name}", pattern) for pattern in patterns), name


# --- one stack for the routes and the read-only browser checks ---------------------------------------------


@pytest.fixture(scope="module")
def stack(module_procs: ProcessFactory, module_dir: Path, module_redis: RedisServer) -> Stack:
    specs = [EmuSpec("alpha"), EmuSpec("beta", priority=90, args=("--models", f"ai/smollm2,{EVIL}"))]
    return build_stack(module_procs, module_dir, module_redis.url, specs, router_extra=PAGE_ENV)


async def get(url: str, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


async def test_root_answers_dmr_text_unless_a_browser_asks(stack: Stack) -> None:
    for headers in ({}, {"Accept": "*/*"}, {"Accept": "application/json"}):
        status, got, body = await get(f"{stack.url}/", **headers)
        assert (status, body) == (200, b"Docker Model Runner is running"), headers
        assert got["Content-Type"].startswith("text/plain")
    status, got, body = await get(f"{stack.url}/", Accept=BROWSER_ACCEPT)
    assert status == 200
    assert got["Content-Type"].startswith("text/html")
    assert b"<title>Pier status</title>" in body
    assert got["Vary"] == "Accept"
    assert "script-src 'self'" in got["Content-Security-Policy"]


async def test_assets_are_served_from_the_package_and_nothing_else(stack: Stack) -> None:
    for name, kind in (("pier.js", "text/javascript"), ("pier.css", "text/css"), ("index.html", "text/html")):
        status, got, body = await get(f"{stack.url}/internal/ui/{name}")
        assert status == 200
        assert got["Content-Type"].startswith(kind)
        assert body
        again, _, rest = await get(f"{stack.url}/internal/ui/{name}", **{"If-None-Match": got["ETag"]})
        assert (again, rest) == (304, b"")
    status, got, body = await get(f"{stack.url}/internal/ui/..%2Fsettings.py")
    assert status == 404
    assert got["Content-Type"].startswith("application/json")
    assert b'"code": "not_found"' in body


@pytest.mark.parametrize("path", ["/internal/status", "/internal/status/endpoints", "/internal/status/models"])
async def test_status_json_answers_conditional_requests(stack: Stack, path: str) -> None:
    status, got, body = await get(f"{stack.url}{path}")
    assert status == 200
    assert body
    assert got["ETag"]

    async def unchanged() -> bool:
        # A resync may land between the two reads (a new table); the next pair then matches.
        first, headers, _ = await get(f"{stack.url}{path}")
        again, _, rest = await get(f"{stack.url}{path}", **{"If-None-Match": headers["ETag"]})
        return first == 200 and again == 304 and rest == b""

    await wait_for(unchanged, timeout_s=15, what=f"a 304 from {path}")
    stale, _, body = await get(f"{stack.url}{path}", **{"If-None-Match": '"not-the-tag"'})
    assert stale == 200
    assert body


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def test_events_route_validates_and_pages(stack: Stack) -> None:
    status, _, body = await get(f"{stack.url}/internal/events")
    assert status == 200
    data = json.loads(body)
    added = {e["endpoint"] for e in data["events"] if e["kind"] == "endpoint_added"}
    assert {"alpha", "beta"} <= added
    assert all("state" not in e for e in data["events"])  # summaries, not whole states
    status, _, body = await get(f"{stack.url}/internal/events?since={data['last_id']}")
    after = json.loads(body)
    assert status == 200
    # Only what came after that id (usually nothing; the health worker may have written since).
    assert all(_id(e["id"]) > _id(data["last_id"]) for e in after["events"]), after
    assert _id(after["last_id"]) >= _id(data["last_id"])
    status, _, body = await get(f"{stack.url}/internal/events?since=0&limit=1")
    one = json.loads(body)
    assert status == 200
    assert len(one["events"]) == 1
    assert one["more"] is True
    for query in ("since=yesterday", "since=1-2-3", "since=99999999999999999999", "limit=0", "limit=201", "limit=x"):
        status, got, body = await get(f"{stack.url}/internal/events?{query}")
        assert status == 400, query
        assert got["Content-Type"].startswith("application/json"), query
        assert json.loads(body)["error"]["code"] == "invalid_request", query


async def test_rates_come_from_the_routers_counters(stack: Stack) -> None:
    status, _, body = await get(f"{stack.url}/internal/status/rates")
    before = json.loads(body)
    assert status == 200
    assert before["enabled"] is True
    totals = sum(e["requests_total"] for e in before["endpoints"].values())
    async with aiohttp.ClientSession() as http:
        for _ in range(5):
            async with http.post(f"{stack.url}/v1/chat/completions", json=chat()) as resp:
                assert resp.status == 200

    async def measured() -> dict[str, Any] | None:
        _, _, raw = await get(f"{stack.url}/internal/status/rates")
        now = json.loads(raw)
        return now if now["window_s"] > 0 else None

    after = await wait_for(measured, timeout_s=10, what="a rates window")
    assert sum(e["requests_total"] for e in after["endpoints"].values()) == totals + 5
    served = [e for e in after["endpoints"].values() if e["requests_per_s"]]
    assert served, after
    assert all(e["error_rate"] == 0 and e["p95_ms"] is not None and e["p95_ms"] > 0 for e in served)


async def test_without_redis_or_metrics_the_page_routes_say_why(
    procs: ProcessFactory, tmp_path: Path, own_redis: RedisServer
) -> None:
    router = start_router(procs, own_redis.url, write_config(tmp_path / "none.yaml", []))
    status, _, body = await get(f"{router.url}/internal/status/rates")
    rates = json.loads(body)
    assert status == 200
    assert rates["enabled"] is False
    assert "PIER_PROMETHEUS_METRICS" in rates["reason"]
    own_redis.stop()
    status, got, body = await get(f"{router.url}/internal/events")
    assert status == 503
    assert got["Content-Type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "events_unavailable"
    status, _, _ = await get(f"{router.url}/", Accept=BROWSER_ACCEPT)
    assert status == 200  # the page itself needs nothing but the router


# --- the page in a browser -----------------------------------------------------------------------------------


@asynccontextmanager
async def browser_page(
    url: str, *, width: int = 1280, height: int = 900
) -> AsyncIterator[tuple[Any, list[str], float]]:
    """A page of headless chromium on `url`; yields it, the console errors / page errors / dialogs seen, and
    the moment (time.monotonic) navigation started."""
    path = chromium_path()
    from playwright.async_api import async_playwright

    problems: list[str] = []
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=path, headless=True, args=LAUNCH_ARGS)
        try:
            page = await browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

            async def on_dialog(dialog: Any) -> None:
                problems.append(f"dialog: {dialog.message}")
                await dialog.dismiss()

            page.on("dialog", on_dialog)
            started = time.monotonic()
            await page.goto(url)
            yield page, problems, started
        finally:
            await browser.close()


ROW_STATUS = "(name) => document.querySelector(`#endpoints tr[data-name='${name}']`)?.dataset.status"


async def test_page_shows_endpoints_and_models_and_names_stay_text(stack: Stack) -> None:
    async with browser_page(f"{stack.url}/") as (page, problems, _):
        await page.wait_for_function("() => document.body.dataset.ready === 'true'", timeout=10_000)
        async with aiohttp.ClientSession() as http:
            for _ in range(6):  # traffic after the page's first reading of the counters: its live rates
                async with http.post(f"{stack.url}/v1/chat/completions", json=chat()) as resp:
                    assert resp.status == 200
        for name in ("alpha", "beta"):
            await page.wait_for_function(f"n => ({ROW_STATUS})(n) === 'healthy'", arg=name, timeout=10_000)
        rows = await page.eval_on_selector_all("#models tbody tr", "rows => rows.map(r => r.children[0].textContent)")
        assert "ai/smollm2:latest" in rows
        evil = [r for r in rows if EVIL.lower() in r]
        assert evil, rows  # the hostile name is shown, as text
        # ... and never became markup: no <img> anywhere, no alert.
        assert await page.locator("img").count() == 0
        where = await page.eval_on_selector(
            "#models tr[data-model='ai/smollm2:latest']", "r => Array.from(r.children).map(c => c.textContent)"
        )
        assert "alpha" in " ".join(where)
        assert "beta" in " ".join(where)
        link = page.locator("#grafana")
        assert await link.is_visible()
        assert await link.get_attribute("href") == PAGE_ENV["PIER_GRAFANA_URL"]
        # Live rates, from the router's counters (two polls make a window).
        await page.wait_for_function(
            "() => Array.from(document.querySelectorAll('#endpoints tbody tr td:nth-child(9)'))"
            ".some(td => parseFloat(td.textContent) > 0)",
            timeout=15_000,
        )
        assert problems == []
        shot = await page.screenshot(full_page=True)
        if os.environ.get("PIER_UPDATE_SCREENSHOT") == "1":
            SCREENSHOT.write_bytes(shot)
        # A phone: nothing overflows the page sideways (the tables scroll inside their box).
        await page.set_viewport_size({"width": 390, "height": 844})
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        if os.environ.get("PIER_UPDATE_SCREENSHOT") == "1":
            (ROOT / "docs" / "status-page-phone.png").write_bytes(await page.screenshot(full_page=True))
        assert problems == []


async def test_a_killed_endpoint_turns_offline_without_a_reload(
    procs: ProcessFactory, tmp_path: Path, own_redis: RedisServer
) -> None:
    interval_s = 5.0  # the page polls every 2 s: detection (<= 5 s) + a poll fits in two intervals with room
    entry = {"check_interval": f"{interval_s:g}s"}
    specs = [EmuSpec("alpha", entry=entry), EmuSpec("beta", entry=entry)]
    stack = build_stack(procs, tmp_path, own_redis.url, specs, router_extra=PAGE_ENV)
    async with browser_page(f"{stack.url}/") as (page, problems, _):
        for name in ("alpha", "beta"):
            await page.wait_for_function(f"n => ({ROW_STATUS})(n) === 'healthy'", arg=name, timeout=10_000)
        await page.evaluate("window.pierMarker = 'same page'")
        stack.emu("beta").proc.kill()
        killed = time.monotonic()
        await page.wait_for_function(f"n => ({ROW_STATUS})(n) === 'offline'", arg="beta", timeout=2 * interval_s * 1000)
        took = time.monotonic() - killed
        assert took <= 2 * interval_s, took
        assert await page.evaluate("window.pierMarker") == "same page"  # no reload happened
        assert await page.evaluate(f"({ROW_STATUS})('alpha')") == "healthy"
        changes = await page.locator("#events li").all_text_contents()
        assert any("status changed" in c and "beta" in c and "offline" in c for c in changes), changes
        assert problems == []


# --- 200 endpoints, 1,000 models -------------------------------------------------------------------------------


def _fleet_state(i: int) -> EndpointState:
    models = tuple(f"ai/model-{(i * 5 + k) % FLEET_MODELS:04d}:latest" for k in range(50))
    return EndpointState(
        name=f"dmr-{i:03d}",
        url=f"http://10.0.{i // 250}.{i % 250}:12434",
        type="docker-model-runner",
        priority=100 - i % 3,
        source="docker",
        status=EndpointStatus.OFFLINE if i % 17 == 0 else EndpointStatus.HEALTHY,
        last_error="connection refused" if i % 17 == 0 else None,
        latency_ms=3.0 + i % 40,
        models=models,
        models_known=True,
        loaded=(LoadedModel(name=models[0]), LoadedModel(name=models[1], loading=True)),
        loaded_known=True,
        version="v1.2.6",
        checked_at=time.time(),
        ttl_s=600.0,
    )


@pytest.fixture
def fleet(procs: ProcessFactory, tmp_path: Path, own_redis: RedisServer) -> str:
    async def seed() -> None:
        redis: Redis = statestore.connect(own_redis.url)
        try:
            for i in range(FLEET_ENDPOINTS):
                await statestore.write_endpoint_state(redis, _fleet_state(i))
            for i in range(0, FLEET_ENDPOINTS, 4):
                warm = WarmState(endpoint=f"dmr-{i:03d}", model=_fleet_state(i).models[0], phase=WarmPhase.WARM)
                await statestore.write_warm_state(redis, warm)
        finally:
            await redis.aclose()

    asyncio.run(seed())
    config = write_config(tmp_path / "fleet.yaml", [])
    router = start_router(procs, own_redis.url, config, **PAGE_ENV)
    return router.url


async def test_200_endpoints_and_1000_models_render_within_budget(fleet: str) -> None:
    async def seen() -> bool:
        _, _, body = await get(f"{fleet}/internal/status")
        return b'"total": 200' in body

    await wait_for(seen, timeout_s=15, what="the router to see 200 endpoints")
    async with browser_page(f"{fleet}/") as (page, problems, started):
        await page.wait_for_function(
            "() => document.querySelectorAll('#endpoints tbody tr').length === 200"
            " && document.querySelectorAll('#models tbody tr').length === 1000",
            timeout=FLEET_BUDGET_S * 1000,
        )
        took = time.monotonic() - started
        render_ms = float(await page.evaluate("document.body.dataset.renderMs"))
        assert took <= FLEET_BUDGET_S, took
        assert render_ms <= RENDER_BUDGET_MS, render_ms
        # The next refreshes reuse the rows (keyed updates), and stay cheap.
        await page.evaluate("window.pierFirstRow = document.querySelector('#endpoints tbody tr')")
        before = await page.evaluate("document.getElementById('updated').textContent")
        await page.wait_for_function(
            "b => document.getElementById('updated').textContent !== b", arg=before, timeout=10_000
        )
        assert await page.evaluate("document.querySelector('#endpoints tbody tr') === window.pierFirstRow")
        again_ms = float(await page.evaluate("document.body.dataset.renderMs"))
        assert again_ms <= RENDER_BUDGET_MS, again_ms
        offline = await page.locator("#endpoints tr[data-status='offline']").count()
        assert offline == len([i for i in range(FLEET_ENDPOINTS) if i % 17 == 0])
        assert problems == []
    print(
        f"\nstatus page: {FLEET_ENDPOINTS} endpoints + {FLEET_MODELS} models on screen in {took:.2f}s, "
        f"first render {render_ms:.0f} ms, refresh render {again_ms:.0f} ms"
    )


def test_screenshot_in_docs_is_committed() -> None:
    assert SCREENSHOT.exists()
    assert SCREENSHOT.stat().st_size > 10_000
    assert "docs/status-page.png" in (ROOT / "README.md").read_text(encoding="utf-8")
