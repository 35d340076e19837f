"""The router as a process: bad config, `--check`, several workers on one port, SIGTERM drain, Redis outages."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.harness import ROOT, ProcessFactory, RedisServer, free_port, port_open, wait_for
from tests.router.support import (
    Emu,
    EmuSpec,
    base_env,
    build_stack,
    chat,
    endpoint,
    endpoints_status,
    get_json,
    read_sse,
    router_env,
    start_emulator,
    start_health,
    start_router,
    wait_routable,
    write_config,
)

CHAT = "/engines/v1/chat/completions"


def run_router(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.router", *args],
        cwd=ROOT,
        env={**base_env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"PIER_PORT": "not-a-port"}, "PIER_PORT"),
        ({"PIER_WORKERS": "0"}, "PIER_WORKERS"),
        ({"PIER_MAX_BODY_BYTES": "-1"}, "PIER_MAX_BODY_BYTES"),
        ({"PIER_DRAIN_TIMEOUT_S": "soon"}, "PIER_DRAIN_TIMEOUT_S"),
        ({"PIER_LOADING_RETRY_INITIAL_S": "2", "PIER_LOADING_RETRY_MAX_S": "1"}, "PIER_LOADING_RETRY_MAX_S"),
        ({"PIER_CONFIG_FILE": "/nonexistent/pier.yaml"}, "PIER_CONFIG_FILE"),
        ({"PIER_LOAD_BALANCER": "fastest"}, "PIER_LOAD_BALANCER"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(env: dict[str, str], key: str) -> None:
    result = run_router({"PIER_REDIS_URL": "redis://127.0.0.1:9/0", **env})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert key in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_endpoint_in_the_config_file_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path / "bad.yaml", [{"name": "x", "url": "ftp://nope"}])
    result = run_router({"PIER_CONFIG_FILE": str(config)})
    assert result.returncode == 2
    assert "endpoints[0].url" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unused_top_level_keys_are_logged_at_start(procs: ProcessFactory, tmp_path: Path, redis_url: str) -> None:
    config = write_config(tmp_path / "pier.yaml", [endpoint("e1", "http://127.0.0.1:9")], team_notes="gpu boxes")
    router = start_router(procs, redis_url, config)
    assert "top-level key 'team_notes' is not used; ignored" in router.output()


def test_check_answers_0_when_serving_and_1_when_not(procs: ProcessFactory, tmp_path: Path, redis_url: str) -> None:
    config = write_config(tmp_path / "pier.yaml", [endpoint("e1", "http://127.0.0.1:9")])
    router = start_router(procs, redis_url, config)
    env = router_env(redis_url, config, router.port or 0)
    assert run_router(env, "--check").returncode == 0
    router.stop()
    failed = run_router(env, "--check")
    assert failed.returncode == 1
    assert "internal/health" in failed.stdout


async def test_two_worker_processes_share_the_port(procs: ProcessFactory, tmp_path: Path, redis_url: str) -> None:
    stack = build_stack(procs, tmp_path, redis_url, [EmuSpec("e1")], router_extra={"PIER_WORKERS": "2"})
    pids: set[int] = set()
    for _ in range(200):
        # A fresh connection each time: the kernel spreads connections over the two listening sockets.
        async with (
            aiohttp.ClientSession(base_url=stack.url) as http,
            http.get("/internal/health") as resp,
        ):
            pids.add((await resp.json())["pid"])
        if len(pids) == 2:
            break
    assert len(pids) == 2
    assert stack.router.pid not in pids  # the supervisor only supervises
    # Both route (each keeps its own table from Redis).
    served: set[int] = set()
    for _ in range(200):
        async with aiohttp.ClientSession(base_url=stack.url) as http:
            async with http.post(CHAT, json=chat()) as resp:
                assert resp.status == 200
            async with http.get("/internal/health") as resp:
                served.add((await resp.json())["pid"])
        if served == pids:
            break
    assert served == pids
    assert stack.router.stop(timeout_s=20) == 0
    await wait_for(lambda: not any(_alive(pid) for pid in pids), timeout_s=10, what="the workers to exit")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_sigterm_lets_a_running_stream_finish(procs: ProcessFactory, tmp_path: Path, redis_url: str) -> None:
    args = ("--chunks", "4", "--chunk-interval-ms", "700")
    stack = build_stack(
        procs, tmp_path, redis_url, [EmuSpec("e1", args=args)], router_extra={"PIER_DRAIN_TIMEOUT_S": "30"}
    )
    port = stack.router.port
    assert port is not None
    async with (
        aiohttp.ClientSession(base_url=stack.url) as http,
        http.post(CHAT, json=chat(stream=True)) as resp,
    ):
        assert resp.status == 200
        first = await resp.content.readline()
        assert first.startswith(b"data: ")
        stack.router.popen.send_signal(signal.SIGTERM)
        # It stops accepting at once...
        await wait_for(lambda: not port_open(port), timeout_s=10, what="the router to stop listening")
        # ...but the stream under way runs to its end.
        rest = await read_sse(resp)
    assert rest[-1] == "[DONE]"
    assert len(rest) == 6  # after the role chunk read above: four pieces, the finish chunk, [DONE]
    await wait_for(lambda: not stack.router.alive(), timeout_s=15, what="the router to exit")
    assert stack.router.popen.returncode == 0
    records = await stack.emu("e1").requests()
    assert [r["finished"] for r in records] == [True]


async def test_drain_timeout_cuts_streams_that_run_too_long(
    procs: ProcessFactory, tmp_path: Path, redis_url: str
) -> None:
    args = ("--chunks", "100", "--chunk-interval-ms", "300")  # 30 s
    stack = build_stack(
        procs, tmp_path, redis_url, [EmuSpec("e1", args=args)], router_extra={"PIER_DRAIN_TIMEOUT_S": "1"}
    )
    async with (
        aiohttp.ClientSession(base_url=stack.url) as http,
        http.post(CHAT, json=chat(stream=True)) as resp,
    ):
        assert (await resp.content.readline()).startswith(b"data: ")
        stopped_at = time.monotonic()
        stack.router.popen.send_signal(signal.SIGTERM)
        with pytest.raises(aiohttp.ClientPayloadError):
            await read_sse(resp)
    await wait_for(lambda: not stack.router.alive(), timeout_s=15, what="the router to exit")
    assert time.monotonic() - stopped_at < 15  # long before the 30 s stream would have ended
    assert stack.router.popen.returncode == 0
    e1 = stack.emu("e1")
    await wait_for(
        lambda: _all_disconnected(e1), timeout_s=10, what="the emulator to see the cut stream's client go away"
    )


async def _all_disconnected(emu: Emu) -> bool:
    records = await emu.requests()
    return bool(records) and all(r["disconnected"] for r in records)


async def test_redis_stopped_and_restarted_while_requests_keep_flowing(
    procs: ProcessFactory, tmp_path: Path, own_redis: RedisServer
) -> None:
    specs = [EmuSpec("e1", 100), EmuSpec("e2", 50)]
    stack = build_stack(procs, tmp_path, own_redis.url, specs, router_extra={"PIER_RESYNC_INTERVAL_S": "1"})
    failures: list[str] = []
    served: list[str] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        async with aiohttp.ClientSession(base_url=stack.url) as http:
            while not stop.is_set():
                async with http.post(CHAT, json=chat()) as resp:
                    if resp.status != 200:
                        failures.append(f"{resp.status} {await resp.text()}")
                    else:
                        served.append(resp.headers["X-Pier-Endpoint"])
                await asyncio.sleep(0.02)  # paces the traffic (~50 req/s); orders nothing

    flowing = asyncio.create_task(traffic())
    try:
        await wait_for(lambda: len(served) >= 10, timeout_s=10, what="traffic to flow")
        own_redis.stop()
        await wait_for(
            lambda: not get_json(f"{stack.url}/internal/status")["redis"]["connected"],
            timeout_s=15,
            what="the router to notice Redis is gone",
        )
        during = len(served)
        await wait_for(lambda: len(served) >= during + 30, timeout_s=20, what="requests to keep flowing without Redis")
        own_redis.restart()
        await wait_for(
            lambda: get_json(f"{stack.url}/internal/status")["redis"]["connected"],
            timeout_s=30,
            what="the router to reconnect to Redis",
        )
        # State written after the restart reaches the router: e1 goes down, the health worker says so.
        await stack.emu("e1").fault(mode="refuse")
        await wait_for(
            lambda: endpoints_status(stack.url)["e1"]["status"] == "offline",
            timeout_s=30,
            what="the router to learn e1 is offline from the restarted Redis",
        )
        after = len(served)
        await wait_for(lambda: len(served) >= after + 10, timeout_s=20, what="requests to flow to e2")
    finally:
        stop.set()
        await flowing
    assert failures == []
    assert set(served[after:]) == {"e2"}


async def test_router_starts_without_redis_and_catches_up_when_it_comes(
    procs: ProcessFactory, tmp_path: Path, own_redis: RedisServer
) -> None:
    emu = start_emulator(procs, "e1")
    config = write_config(tmp_path / "pier.yaml", [endpoint("e1", emu.url)])
    own_redis.stop()
    router = start_router(procs, own_redis.url, config)
    assert not get_json(f"{router.url}/internal/status")["redis"]["connected"]
    async with aiohttp.ClientSession(base_url=router.url) as http:
        # No state at all: the configured endpoint is still tried, as a last resort, and says so.
        async with http.post(CHAT, json=chat()) as resp:
            assert resp.status == 200
            assert resp.headers["X-Pier-Endpoint"] == "e1"
            assert resp.headers["X-Pier-Route"].startswith("unknown-state;")
        own_redis.restart()
        start_health(procs, own_redis.url, tmp_path, config)
        await wait_routable(router.url, ["e1"])
        async with http.post(CHAT, json=chat()) as resp:
            assert resp.status == 200
            assert resp.headers["X-Pier-Route"].startswith("priority;")


async def test_port_in_use_exits_1_with_one_line(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    config = write_config(tmp_path / "pier.yaml", [endpoint("e1", "http://127.0.0.1:9")])
    holder = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
    try:
        result = await asyncio.to_thread(run_router, router_env(redis_url, config, port))
    finally:
        holder.close()
        await holder.wait_closed()
    assert result.returncode == 1
    assert "cannot serve" in result.stderr
    assert "Traceback" not in result.stderr
