"""The services as processes (router, health, warm-up) export to a real OTLP/HTTP receiver (protobuf decoded),
linked across services, and flush on SIGTERM: the batch delay is set to a minute, so every span seen here left
at shutdown."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from observability.dashboards import TRACE_TABLES
from shared import keys, statestore
from shared.state import EventKind, WarmPhase
from shared.telemetry import setup
from tests.harness import Proc, ProcessFactory, free_port, http_ok, wait_for
from tests.router.support import (
    MODEL,
    chat,
    endpoint,
    get_json,
    health_env,
    start_emulator,
    start_router,
    wait_routable_sync,
    write_config,
)

CHAT = "/engines/v1/chat/completions"
INBOUND_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INBOUND_PARENT = "00f067aa0ba902b7"


def start_receiver(procs: ProcessFactory) -> Proc:
    port = free_port()
    return procs.python(
        "otlp-receiver",
        "tests.telemetry.otlp_receiver",
        "--port",
        str(port),
        port=port,
        ready=lambda p: http_ok(f"{p.url}/spans"),
    )


def check_traceql(spans: list[dict[str, Any]]) -> None:
    """The dashboard's TraceQL names attributes, kinds and values the router really exports."""
    router = [s for s in spans if s["service"] == "pier-router"]
    for _, traceql in TRACE_TABLES:
        for scope, name in re.findall(r"\b(span|resource)\.([A-Za-z0-9_.]+)", traceql):
            pool = [s["attributes"] if scope == "span" else s["resource"] for s in router]
            assert any(name in attributes for attributes in pool), f"{scope}.{name} of {traceql!r} is never exported"
        for kind in re.findall(r"kind=(\w+)", traceql):
            assert any(s["kind"] == kind.upper() for s in router), kind
        for name, pattern in re.findall(r'span\.([a-z_.]+)=~"([^"]+)"', traceql):
            assert any(re.fullmatch(pattern, str(s["attributes"].get(name, ""))) for s in router), pattern
        for name, value in re.findall(r'resource\.([a-z_.]+)="([^"]+)"', traceql):
            assert any(s["resource"].get(name) == value for s in router), value


def one(spans: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [s for s in spans if all(s.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"expected one span with {match}, got {len(found)}: {[s['name'] for s in spans]}"
    return found[0]


async def test_router_and_health_export_linked_spans_and_flush_on_sigterm(
    procs: ProcessFactory, tmp_path: Path, redis_url: str, redis: Redis
) -> None:
    receiver = start_receiver(procs)
    otel = {
        "OTEL_SDK_DISABLED": "false",  # the test harness disables the SDK in every process by default
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "60000",  # nothing leaves before shutdown: the SIGTERM flush is what is tested
        "OTEL_METRIC_EXPORT_INTERVAL": "60000",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
    }
    e1 = start_emulator(procs, "e1")
    e2 = start_emulator(procs, "e2")
    entries = [endpoint("e1", e1.url, 100, check_interval="30s"), endpoint("e2", e2.url, 50, check_interval="30s")]
    config = write_config(tmp_path / "pier.yaml", entries)
    health = procs.python("health", "services.health", env={**health_env(redis_url, tmp_path, config), **otel})
    router = start_router(procs, redis_url, config, **otel)
    wait_routable_sync(router.url, ["e1", "e2"])

    await e1.fault(mode="refuse")
    inbound = f"00-{INBOUND_TRACE}-{INBOUND_PARENT}-01"
    async with (
        aiohttp.ClientSession() as http,
        http.post(router.url + CHAT, json=chat(MODEL), headers={"traceparent": inbound}) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["X-Pier-Endpoint"] == "e2"

    async def e1_down() -> bool:
        events = [e for _, e in await statestore.read_events(redis, "0-0")]
        return any(e.kind is EventKind.STATUS_CHANGED and e.endpoint == "e1" for e in events)

    # The router's report made the health worker probe e1 at once (its own timer is 30 s away).
    await wait_for(e1_down, timeout_s=15, what="the health worker to see e1 go down")
    assert get_json(f"{receiver.url}/spans") == []  # nothing exported yet: the batch delay is a minute

    assert router.stop() == 0
    assert health.stop() == 0
    spans: list[dict[str, Any]] = get_json(f"{receiver.url}/spans")

    server = one(spans, service="pier-router", kind="SERVER", name="POST /engines/v1/chat/completions")
    assert server["resource"]["deployment.environment"] == "test"
    assert server["trace_id"] == INBOUND_TRACE
    assert server["parent_span_id"] == INBOUND_PARENT
    assert server["attributes"]["http.response.status_code"] == 200
    attempts = sorted(
        (s for s in spans if s["kind"] == "CLIENT" and s["parent_span_id"] == server["span_id"]),
        key=lambda s: s["start_ns"],
    )
    assert [s["attributes"]["pier.endpoint"] for s in attempts] == ["e1", "e2"]
    assert all(s["name"] == f"chat {MODEL}" for s in attempts)
    assert attempts[0]["attributes"]["error.type"] == "upstream_unreachable"
    assert "error.type" not in attempts[1]["attributes"]
    assert attempts[1]["attributes"]["gen_ai.usage.output_tokens"] > 0

    # e2 got the CLIENT span's context.
    (record,) = [r for r in await e2.requests() if r["path"] == CHAT]
    sent = {k.lower(): v for k, v in record["headers"].items()}["traceparent"]
    assert sent.split("-")[1:3] == [INBOUND_TRACE, attempts[1]["span_id"]]

    # The health worker's probe that saw e1 go down links to the router request that reported it.
    probes = [
        s
        for s in spans
        if s["service"] == "pier-health"
        and s["name"] == "health probe"
        and s["attributes"]["pier.endpoint.name"] == "e1"
        and s["attributes"]["pier.endpoint.status"] != "healthy"
    ]
    assert len(probes) == 1
    assert probes[0]["links"] == [{"trace_id": INBOUND_TRACE, "span_id": server["span_id"]}]
    # Unchanged probes made no spans: e1 and e2 each once when added, e1 once when it went down.
    assert len([s for s in spans if s["service"] == "pier-health"]) == 3

    check_traceql(spans)

    metric_names = get_json(f"{receiver.url}/metrics")
    for name in (
        "http.server.request.duration",
        "gen_ai.client.operation.duration",
        "gen_ai.client.token.usage",
        "pier.router.failovers",
        "pier.endpoint.status",
    ):
        assert name in metric_names["pier-router"]
    assert "pier.health.probe.duration" in metric_names["pier-health"]


async def test_warmup_preload_exports_a_span_linked_to_the_probe_that_found_the_endpoint(
    procs: ProcessFactory, tmp_path: Path, redis_url: str, redis: Redis
) -> None:
    receiver = start_receiver(procs)
    otel = {
        "OTEL_SDK_DISABLED": "false",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "60000",  # everything leaves at the SIGTERM flush
        "OTEL_METRIC_EXPORT_INTERVAL": "60000",
    }
    emu = procs.emulator("--models", "ai/smollm2", "--load-time-ms", "200")
    config = write_config(tmp_path / "pier.yaml", [endpoint("e1", emu.url, 100, check_interval="30s")])
    warmup_env = {
        "PIER_REDIS_URL": redis_url,
        "PIER_CONFIG_FILE": str(config),
        "PIER_INSTANCE_ID": "warmup-test",
        "PIER_WARMUP_ID_FILE": str(tmp_path / "warmup.id"),
        "PIER_WARMUP_MODELS": "smollm2",
        **otel,
    }
    warmup = procs.python("warmup", "services.warmup", env=warmup_env)
    # Leading (and so following the event stream) before the health worker announces the endpoint.
    await wait_for(lambda: redis.get(keys.WARMUP_LEASE), timeout_s=20, what="the warm-up worker to lead")
    health = procs.python("health", "services.health", env={**health_env(redis_url, tmp_path, config), **otel})

    async def warm() -> bool:
        states = await statestore.read_warm_states(redis)
        return any(w.endpoint == "e1" and w.model == MODEL and w.phase is WarmPhase.WARM for w in states)

    await wait_for(warm, timeout_s=30, what="the warm-up worker to load the model")
    assert warmup.stop() == 0
    assert health.stop() == 0
    spans: list[dict[str, Any]] = get_json(f"{receiver.url}/spans")

    probe = one(spans, service="pier-health", name="health probe")
    preload = one(spans, service="pier-warmup", name="warmup preload")
    assert preload["attributes"]["gen_ai.request.model"] == MODEL
    assert preload["attributes"]["pier.endpoint"] == "e1"
    assert preload["attributes"]["pier.warmup.step"] == "load"
    assert "error.type" not in preload["attributes"]
    # The endpoint came back (here: appeared) -> the warm-up loaded the model: one story across two services.
    assert {"trace_id": probe["trace_id"], "span_id": probe["span_id"]} in preload["links"]
    assert "pier.warmup.load.duration" in get_json(f"{receiver.url}/metrics")["pier-warmup"]


async def test_router_metrics_leave_on_event_loop_ticks(procs: ProcessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The router's OTLP metric export is paced by its event loop (no ticker thread): metrics leave every
    `OTEL_METRIC_EXPORT_INTERVAL` while the process runs, not only at shutdown."""
    receiver = start_receiver(procs)
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "300")
    env = {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"{receiver.url}/v1/metrics"}
    telemetry = setup("pier-router", environ=env, install_global=False, loop_ticks=True)
    try:
        telemetry.fast_metrics("pier.router").counter("pier.test.ticks", "{tick}", "ticks").add(1, ())
        telemetry.start_metric_ticks()

        async def arrived() -> bool:
            async with aiohttp.ClientSession() as http, http.get(f"{receiver.url}/metrics") as resp:
                names = await resp.json()
            return "pier.test.ticks" in names.get("pier-router", [])

        await wait_for(arrived, timeout_s=15, what="the metrics to leave on a loop tick")
    finally:
        telemetry.shutdown(timeout_s=2.0)
