"""One run with hostile clients, a client API key, an ACL user's Redis password and an endpoint bearer token, with
telemetry exported. Then: every Redis key (and channel) matches the fixed names of `shared.keys` (nothing a
client sent is in a key), and no secret (raw or base64) is in any log line, exported span or metric, status
route, error body, or Redis value."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis as sync_redis

from shared import keys
from tests.harness import ProcessFactory, free_port, http_ok, wait_for
from tests.redissec.rawotlp import RawOtlp
from tests.redissec.servers import PASSWORD, PIER_ACL, PIER_PASSWORD, PIER_USER, Server, start_redis
from tests.router.support import (
    endpoint,
    health_env,
    router_env,
    start_emulator,
    wait_routable,
    warmup_env,
    write_config,
)

MARK = "hostile7q"  # in everything a client sends; never in a key (compared lower-case)
API_KEY = "pk-client-Zq81-secret-key"
ADMIN_KEY = "admin-key-Wv30-secret"
ENDPOINT_TOKEN = "endpoint-bearer-Tk55-secret"
SECRETS = {
    "api key": API_KEY,
    "admin key": ADMIN_KEY,
    "endpoint token": ENDPOINT_TOKEN,
    "redis password": PIER_PASSWORD,
}
SESSION_HEADERS = ("X-Pier-Session-ID", "X-Olla-Session-ID", "X-Claude-Code-Session-Id", "Session-Id")
HOSTILE_MODELS = (
    f"pier:endpoint:{MARK}",
    f"*{MARK}*",
    f"../../{MARK}",
    f"ai/smollm2:latest\x00{MARK}",
    f"{MARK}\r\nX-Evil: 1",
    f"模型{MARK}🙂",
    MARK * 400,
    f"pier:ratelimit:client:{MARK}",
)
HOSTILE_PATHS = (
    f"/engines/v1/../../pier:{MARK}",
    f"/v1/models/pier:endpoint:{MARK}",
    f"/%2e%2e/{MARK}",
    f"/engines/{MARK}/v1/chat/completions",
    f"/internal/{MARK}?x=pier:{MARK}",
    f"/api/chat?model={MARK}",
)
INTERNAL = (
    "/internal/health",
    "/internal/status",
    "/internal/status/endpoints",
    "/internal/status/models",
    "/internal/status/rates",
    "/internal/events",
    "/internal/metrics",
    "/internal/",
)


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[Server]:
    server = start_redis(tmp_path / "redis", acl_users=[f"{PIER_USER} {PIER_ACL}"])
    yield server
    server.stop()


def allowed_key(name: str, endpoints: set[str], instances: set[tuple[str, str]], warm: set[tuple[str, str]]) -> bool:
    """`name` is one of the names `shared.keys` makes, from configured (never client) values."""
    fixed = {
        keys.ENDPOINT_INDEX, keys.EVENTS, keys.SIGNALS, keys.HEALTH_LEASE, keys.WARMUP_LEASE, keys.WARM_INDEX,
        keys.RATE_GLOBAL,
    }  # fmt: skip
    made = {keys.endpoint_state(e) for e in endpoints}
    made |= {keys.heartbeat(service, instance) for service, instance in instances}
    made |= {keys.warm_state(e, m) for e, m in warm}
    bucket = re.compile(re.escape(keys.rate_bucket("")) + r"[0-9a-f]{16,64}")
    return name in fixed or name in made or bucket.fullmatch(name) is not None


def redis_dump(client: sync_redis.Redis) -> tuple[list[str], list[str]]:
    """(every key, every value as text: strings, hash fields, zset members, stream entries)."""
    names = [str(k) for k in client.scan_iter(match="*", count=500)]
    values: list[str] = []
    for name in names:
        kind = client.type(name)
        if kind == "string":
            values.append(str(client.get(name)))
        elif kind == "hash":
            values.append(repr(client.hgetall(name)))
        elif kind == "zset":
            values.append(repr(client.zrange(name, 0, -1)))
        elif kind == "stream":
            values.append(repr(client.xrange(name)))
        else:
            values.append(f"{name}: unexpected type {kind!r}")
    return names, values


async def hostile_traffic(router_url: str, bodies: list[str]) -> int:
    """Requests a hostile client sends; every response body is kept. Returns how many succeeded."""
    ok = 0
    good = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession() as http:

        async def send(method: str, path: str, headers: dict[str, str], body: Any = None) -> int:
            async with http.request(method, f"{router_url}{path}", headers=headers, json=body) as resp:
                bodies.append(await resp.text(errors="replace"))
                return resp.status

        chat = "/engines/v1/chat/completions"
        for i, model in enumerate(HOSTILE_MODELS):
            session = {SESSION_HEADERS[i % len(SESSION_HEADERS)]: f"{MARK}-session-{i}:pier:*"}
            body = {"model": model, "messages": [{"role": "user", "content": f"hi {MARK}"}]}
            await send("POST", chat, {**good, **session}, body)
            await send("POST", "/v1/messages", {"x-api-key": API_KEY, **session}, {**body, "max_tokens": 5})
        for path in HOSTILE_PATHS:
            await send("GET", path, good)
        # Wrong keys that contain the real one, in every place a key is read: refused, and never echoed.
        body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}
        for headers in (
            {"Authorization": f"Bearer {API_KEY}{MARK}"},
            {"Authorization": f"Basic {base64.b64encode(f'{MARK}:{API_KEY}x'.encode()).decode()}"},
            {"x-api-key": f"{MARK}{API_KEY}"},
            {"Authorization": f"Bearer {MARK}"},
        ):
            await send("POST", chat, headers, body)
        # Real traffic with sessions and prompt-cache keys (what affinity reads), streamed and not.
        for i in range(10):
            session = {"X-Pier-Session-ID": f"{MARK}-{i}"}
            extra = {"stream": True} if i % 2 else {"prompt_cache_key": f"{MARK}-cache-{i}"}
            ok += await send("POST", chat, {**good, **session}, {**body, **extra}) == 200
    return ok


def secret_hits(texts: dict[str, str], blobs: list[bytes]) -> list[str]:
    hits = []
    for what, secret in SECRETS.items():
        forms = {secret, base64.b64encode(secret.encode()).decode(), base64.urlsafe_b64encode(secret.encode()).decode()}
        for form in forms:
            hits += [f"{what} in {where}" for where, text in texts.items() if form in text]
            hits += [f"{what} in an OTLP body" for blob in blobs if form.encode() in blob]
    return hits


async def test_no_client_data_in_keys_and_no_secret_anywhere(
    procs: ProcessFactory, tmp_path: Path, acl_redis: Server
) -> None:
    otlp = RawOtlp()
    await otlp.start()
    try:
        await _run(procs, tmp_path, acl_redis, otlp)
    finally:
        await otlp.stop()


async def _run(procs: ProcessFactory, tmp_path: Path, server: Server, otlp: RawOtlp) -> None:
    emu = start_emulator(procs, "e1")
    auth = {"type": "bearer", "token": ENDPOINT_TOKEN}
    config = write_config(tmp_path / "pier.yaml", [endpoint("e1", emu.url, auth=auth)])
    common = {
        "PIER_REDIS_URL": server.url(),
        "PIER_REDIS_USERNAME": PIER_USER,
        "PIER_REDIS_PASSWORD": PIER_PASSWORD,
        "PIER_LOG_LEVEL": "debug",
        "OTEL_SDK_DISABLED": "false",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true",
    }
    procs.python("health", "services.health", env={**health_env(server.url(), tmp_path, config), **common})
    warm_env = {**warmup_env(server.url(), tmp_path, config, PIER_WARMUP_MODELS="ai/smollm2"), **common}
    procs.python("warmup", "services.warmup", env=warm_env)
    port = free_port()
    router_extra = {
        "PIER_ACCESS_CONTROL": "true",
        "PIER_API_KEYS": f"client={API_KEY}",
        "PIER_ADMIN_KEY": ADMIN_KEY,
        "PIER_RATE_LIMIT_PER_S": "1",  # refills slowly: the client's bucket key stays for the audit
        "PIER_RATE_LIMIT_BURST": "1000",
        "PIER_RATE_LIMIT_SHARED": "true",
    }
    router = procs.python(
        "router", "services.router", env={**router_env(server.url(), config, port, **router_extra), **common},
        port=port, ready=lambda p: http_ok(f"{p.url}/internal/health"), ready_timeout_s=30,
    )  # fmt: skip
    await wait_routable(router.url, ["e1"])

    bodies: list[str] = []
    ok = await hostile_traffic(router.url, bodies)
    assert ok == 10, bodies[-10:]
    assert any(r.startswith("401") or "401" in r or "invalid" in r.lower() for r in bodies)
    # Controls: the endpoint token was live in this run (the endpoint received it), and the grep finds a leak.
    upstream = [{k.lower(): v for k, v in r["headers"].items()} for r in await emu.requests()]
    assert any(h.get("authorization") == f"Bearer {ENDPOINT_TOKEN}" for h in upstream), upstream[:2]
    assert not [h for h in upstream if API_KEY in repr(h)]  # the client's key is never forwarded
    assert secret_hits({"control": base64.b64encode(PIER_PASSWORD.encode()).decode()}, []) != []
    status_bodies: dict[str, str] = {}
    async with aiohttp.ClientSession() as http:
        for path in INTERNAL:
            for headers in ({}, {"Authorization": f"Bearer {ADMIN_KEY}"}):
                async with http.get(f"{router.url}{path}", headers=headers) as resp:
                    status_bodies[f"{path} {bool(headers)}"] = await resp.text(errors="replace")
    assert '"redis"' in status_bodies["/internal/status False"]

    await wait_for(lambda: otlp.count("/v1/traces") >= 3 and otlp.count("/v1/metrics") >= 3, timeout_s=30,
                   what="spans and metrics exported")  # fmt: skip
    admin = sync_redis.Redis.from_url(server.url(password=PASSWORD), decode_responses=True)
    await wait_for(lambda: admin.exists(keys.warm_state("e1", "ai/smollm2:latest")) == 1, what="warm state written")
    running_names, running_values = redis_dump(admin)  # with every service up: leases, heartbeats, buckets
    for proc in procs.procs:
        proc.stop()  # SIGTERM: the last spans and log lines leave now
    stopped_names, stopped_values = redis_dump(admin)
    names = sorted(set(running_names) | set(stopped_names))
    values = running_values + stopped_values

    # 1. Keys: only the fixed names, from configured values. No channels at all (Pier uses no pub/sub).
    instances = {("health", "health-test"), ("warmup", "warmup-test")}
    strays = [n for n in names if not allowed_key(n, {"e1"}, instances, {("e1", "ai/smollm2:latest")})]
    assert strays == [], strays
    assert not [n for n in names if MARK in n.lower()]
    assert any(n.startswith(keys.rate_bucket("")) for n in names), names  # the client's bucket was written
    assert keys.heartbeat("health", "health-test") in names, names
    assert admin.pubsub_channels("*") == []
    for name in (keys.ENDPOINT_INDEX, keys.WARM_INDEX):
        assert not [m for m in admin.zrange(name, 0, -1) if MARK in str(m).lower()]
    assert admin.acl_log() == [], admin.acl_log()  # and the minimal ACL refused nothing

    # 2. Secrets: nowhere.
    texts = {f"log {p.name}": p.output() for p in procs.procs}
    texts |= {f"status {k}": v for k, v in status_bodies.items()}
    texts |= {f"error body {i}": b for i, b in enumerate(bodies)}
    texts |= {f"redis value {i}": v for i, v in enumerate(values)}
    assert sum(len(t) for t in texts.values()) > 10_000  # the run said things: the grep had material
    hits = secret_hits(texts, otlp.all_bytes())
    counts = {path: len(b) for path, b in otlp.bodies.items()}
    print(f"\naudit: {len(names)} keys, {len(texts)} texts, OTLP bodies {counts}, secret hits {len(hits)}")
    assert hits == [], hits
