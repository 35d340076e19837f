"""Pier against a Redis with a password, a minimal ACL user and TLS (one-way and mutual): the services run fully;
a login, ACL or TLS refusal at start is exit 2 with one line naming the setting and no secret in it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis as sync_redis

from tests.harness import ROOT, ProcessFactory, free_port, http_ok, wait_for
from tests.redissec.servers import (
    PASSWORD,
    PIER_ACL,
    PIER_PASSWORD,
    PIER_USER,
    Certs,
    Server,
    make_certs,
    start_redis,
)
from tests.router.support import (
    base_env,
    chat,
    endpoint,
    get_json,
    health_env,
    router_env,
    start_emulator,
    wait_routable,
    warmup_env,
    write_config,
)

CHAT = "/engines/v1/chat/completions"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[Server]:
    server = start_redis(tmp_path / "redis", acl_users=[f"{PIER_USER} {PIER_ACL}"])
    yield server
    server.stop()


def admin(server: Server, certs: Certs | None = None) -> sync_redis.Redis:
    extra = {"ssl_ca_certs": str(certs.ca), "ssl_certfile": str(certs.client_cert),
             "ssl_keyfile": str(certs.client_key)} if certs else {}  # fmt: skip
    return sync_redis.Redis.from_url(server.url(password=PASSWORD), decode_responses=True, **extra)


def run_service(module: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**base_env(), **env},
        capture_output=True,
        text=True,
        timeout=20,
    )


async def start_stack(procs: ProcessFactory, tmp_path: Path, redis_env: dict[str, str], **router_extra: str) -> str:
    """Emulator, health, warm-up and router, all with `redis_env`; returns the router's URL once it routes."""
    emu = start_emulator(procs, "e1")
    config = write_config(tmp_path / "pier.yaml", [endpoint("e1", emu.url)])
    url = redis_env["PIER_REDIS_URL"]
    procs.python("health", "services.health", env={**health_env(url, tmp_path, config), **redis_env})
    warm_env = {**warmup_env(url, tmp_path, config), **redis_env}
    procs.python("warmup", "services.warmup", env=warm_env)
    port = free_port()
    router = procs.python(
        "router",
        "services.router",
        env={**router_env(url, config, port, **router_extra), **redis_env},
        port=port,
        ready=lambda p: http_ok(f"{p.url}/internal/health"),
        ready_timeout_s=30,
    )
    await wait_routable(router.url, ["e1"])
    return router.url


async def chat_ok(router_url: str, n: int = 5) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(n):
            async with http.post(f"{router_url}{CHAT}", json=chat()) as resp:
                assert resp.status == 200, await resp.text()


async def test_services_run_fully_under_the_minimal_acl(
    procs: ProcessFactory, tmp_path: Path, acl_redis: Server
) -> None:
    redis_env = {
        "PIER_REDIS_URL": acl_redis.url(),
        "PIER_REDIS_USERNAME": PIER_USER,
        "PIER_REDIS_PASSWORD": PIER_PASSWORD,
    }
    limits = {"PIER_RATE_LIMIT_PER_S": "1000", "PIER_RATE_LIMIT_BURST": "1000", "PIER_RATE_LIMIT_SHARED": "true"}
    router_url = await start_stack(procs, tmp_path, redis_env, **limits)
    await chat_ok(router_url)
    client = admin(acl_redis)
    # Every service's writes landed: state, events, both leases, heartbeats, and the shared rate-limit buckets.
    await wait_for(lambda: client.exists("pier:lease:health", "pier:lease:warmup") == 2, what="both leases held")
    keys = {str(k) for k in client.keys("*")}
    assert "pier:endpoint:e1" in keys, keys
    assert "pier:events" in keys, keys
    assert any(k.startswith("pier:ratelimit:") for k in keys), keys
    assert any(k.startswith("pier:heartbeat:warmup:") for k in keys), keys
    status = get_json(f"{router_url}/internal/status")
    assert status["redis"]["connected"] is True, status
    # The container healthchecks log in the same way.
    check_env = {**redis_env, "PIER_HEALTH_ID_FILE": str(tmp_path / "health.id")}
    health_check = run_service("services.health", check_env, "--check")
    assert health_check.returncode == 0, health_check.stdout + health_check.stderr
    # Not one command or key the ACL refused, in any service (ACL LOG records every denial).
    assert client.acl_log() == [], client.acl_log()


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
async def test_services_run_over_tls(procs: ProcessFactory, tmp_path: Path, certs: Certs, mutual: bool) -> None:
    server = start_redis(tmp_path / "redis", certs=certs, mutual=mutual)
    try:
        redis_env = {"PIER_REDIS_URL": server.url(), "PIER_REDIS_PASSWORD": PASSWORD}
        redis_env["PIER_REDIS_CA_FILE"] = str(certs.ca)
        if mutual:
            redis_env |= {"PIER_REDIS_CERT_FILE": str(certs.client_cert), "PIER_REDIS_KEY_FILE": str(certs.client_key)}
            # And the password from a file, as a Compose secret gives it.
            (tmp_path / "redis_password").write_text(PASSWORD + "\n", encoding="utf-8")
            del redis_env["PIER_REDIS_PASSWORD"]
            redis_env["PIER_REDIS_PASSWORD_FILE"] = str(tmp_path / "redis_password")
        router_url = await start_stack(procs, tmp_path, redis_env)
        await chat_ok(router_url)
        assert admin(server, certs).exists("pier:endpoint:e1") == 1
        assert server.url().startswith("rediss://")
    finally:
        server.stop()


def _refusal_cases(server: Server, tls: Server, mtls: Server, certs: Certs) -> list[tuple[str, dict[str, str], str]]:
    tls_env = {"PIER_REDIS_URL": tls.url(), "PIER_REDIS_PASSWORD": PASSWORD}
    return [
        ("wrong password", {"PIER_REDIS_URL": server.url(), "PIER_REDIS_PASSWORD": "not-it"}, "PIER_REDIS_PASSWORD"),
        ("no password", {"PIER_REDIS_URL": server.url()}, "PIER_REDIS_PASSWORD"),
        (
            "wrong password in the URL",
            {"PIER_REDIS_URL": server.url(user=PIER_USER, password="wrong-" + PIER_PASSWORD)},
            "PIER_REDIS_PASSWORD",
        ),
        (
            "ACL user without Pier's keys",
            {"PIER_REDIS_URL": server.url(), "PIER_REDIS_USERNAME": "other", "PIER_REDIS_PASSWORD": PIER_PASSWORD},
            "PIER_REDIS_USERNAME",
        ),
        ("wrong CA", {**tls_env, "PIER_REDIS_CA_FILE": str(certs.other_ca)}, "PIER_REDIS_CA_FILE"),
        ("no CA (system store)", tls_env, "PIER_REDIS_URL"),
        (
            "mutual TLS without a client certificate",
            {"PIER_REDIS_URL": mtls.url(), "PIER_REDIS_PASSWORD": PASSWORD, "PIER_REDIS_CA_FILE": str(certs.ca)},
            "PIER_REDIS_CERT_FILE",
        ),
        (
            "TLS files with redis://",
            {"PIER_REDIS_URL": server.url(), "PIER_REDIS_PASSWORD": PASSWORD, "PIER_REDIS_CA_FILE": str(certs.ca)},
            "PIER_REDIS_URL",
        ),
        (
            "certificate without its key",
            {**tls_env, "PIER_REDIS_CA_FILE": str(certs.ca), "PIER_REDIS_CERT_FILE": str(certs.client_cert)},
            "PIER_REDIS_KEY_FILE",
        ),
        (
            "password twice",
            {"PIER_REDIS_URL": server.url(password=PASSWORD), "PIER_REDIS_PASSWORD": PASSWORD},
            "PIER_REDIS_PASSWORD",
        ),
        ("bad URL with a password", {"PIER_REDIS_URL": f"http://u:{PASSWORD}@127.0.0.1:1/0"}, "PIER_REDIS_URL"),
    ]


def test_refusals_at_start_exit_2_naming_the_setting(tmp_path: Path, certs: Certs) -> None:
    other = f"other on >{PIER_PASSWORD} ~other:* +@all"  # a real user whose keys are not Pier's
    server = start_redis(tmp_path / "plain", acl_users=[f"{PIER_USER} {PIER_ACL}", other])
    tls = start_redis(tmp_path / "tls", certs=certs)
    mtls = start_redis(tmp_path / "mtls", certs=certs, mutual=True)
    secrets = (PASSWORD, PIER_PASSWORD, "not-it")
    try:
        for what, env, key in _refusal_cases(server, tls, mtls, certs):
            for module in ("services.health", "services.router", "services.warmup"):
                base = {"PIER_DOCKER_DISCOVERY": "off", "PIER_DMR_URL": "http://127.0.0.1:9"}
                result = run_service(module, {**base, **env})
                lines = result.stderr.strip().splitlines()
                assert result.returncode == 2, f"{what} / {module}: {result.returncode}\n{result.stderr}"
                assert len(lines) == 1, f"{what} / {module}: {result.stderr}"
                assert key in lines[0], f"{what} / {module}: {lines[0]}"
                assert "Traceback" not in result.stderr
                for secret in secrets:
                    assert secret not in result.stderr + result.stdout, f"{what} / {module}: {secret} shown"
    finally:
        for s in (server, tls, mtls):
            s.stop()


def test_unreachable_redis_at_start_is_not_a_config_error(procs: ProcessFactory, tmp_path: Path) -> None:
    # Unchanged behaviour: Redis may come up later; the health worker keeps running and retrying.
    env = health_env(f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0", tmp_path, write_config(tmp_path / "p.yaml", []))
    proc = procs.python("health", "services.health", env=env)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.popen.wait(timeout=4)  # it must still be running after this
    assert proc.alive(), proc.output()
    assert PASSWORD not in proc.output()
    assert "not reachable yet" in proc.output()
