"""The emulator as a real process: the CLI flags, ECONNREFUSED on `refuse`, SIGTERM, bad arguments."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

from tests.harness import ROOT, ProcessFactory, free_port, wait_for_sync


def get_json(url: str, data: dict[str, Any] | None = None) -> Any:
    body = None if data is None else json.dumps(data).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as resp:
        return json.loads(resp.read())


def connect_errno(port: int) -> int:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port))


def test_cli_flags(procs: ProcessFactory) -> None:
    proc = procs.emulator(
        "--name", "gamma", "--models", "ai/smollm2,ai/gemma3", "--list-mode", "loaded", "--version", "v1.0.9",
        "--load-time-ms", "10", "--chunks", "2", "--chunk-interval-ms", "1", "--engines", "llama.cpp,vllm",
        "--keep-alive-s", "60", "--max-runners", "3", "--first-byte-delay-ms", "1", "--parallel", "3",
    )  # fmt: skip
    config = get_json(f"{proc.url}/_emulator/state")["config"]
    assert config["name"] == "gamma"
    assert config["models"] == ["ai/smollm2", "ai/gemma3"]
    assert (config["list_mode"], config["version"], config["chunks"]) == ("loaded", "v1.0.9", 2)
    assert (config["load_time_ms"], config["keep_alive_s"], config["max_runners"]) == (10.0, 60.0, 3)
    assert config["engines"] == ["llama.cpp", "vllm"]
    assert config["parallel"] == 3
    assert get_json(f"{proc.url}/engines/v1/models")["data"] == []
    assert get_json(f"{proc.url}/version") == {"version": "v1.0.9"}
    client = openai.OpenAI(base_url=f"{proc.url}/engines/v1", api_key="unused", max_retries=0, timeout=30)
    with client:
        done = client.chat.completions.create(model="ai/gemma3", messages=[{"role": "user", "content": "hi"}])
        stream = client.chat.completions.create(
            model="ai/gemma3", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert done.choices[0].message.content == "Hello from gamma (ai/gemma3). chunk 1."
    assert streamed == done.choices[0].message.content
    assert [m["id"] for m in get_json(f"{proc.url}/engines/v1/models")["data"]] == ["ai/gemma3:latest"]
    [runner] = get_json(f"{proc.url}/_emulator/state")["runners"]
    assert (runner["tag"], runner["parallel"]) == ("ai/gemma3:latest", 3)


def test_no_ps_flag(procs: ProcessFactory) -> None:
    proc = procs.emulator("--no-ps")
    for path in ("/engines/ps", "/version"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(proc.url + path, timeout=10)
        assert info.value.code == 404
        info.value.close()
    assert get_json(f"{proc.url}/engines/status")["llama.cpp"].startswith("Running")


def test_port_in_use_exits_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "tests.emulator", "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 2
    assert "cannot listen" in done.stderr
    assert "Traceback" not in done.stderr


def test_refuse_gives_econnrefused_and_sigterm_exits(procs: ProcessFactory) -> None:
    admin_port = free_port()
    proc = procs.emulator("--admin-port", str(admin_port))
    assert proc.port is not None
    admin = f"http://127.0.0.1:{admin_port}/_emulator"
    assert get_json(f"{admin}/fault", {"mode": "refuse"})["listening"] is False
    assert connect_errno(proc.port) == errno.ECONNREFUSED
    assert get_json(f"{admin}/state")["fault"]["mode"] == "refuse"
    get_json(f"{admin}/fault", {"mode": "none"})
    wait_for_sync(lambda: connect_errno(proc.port or 0) == 0, what="the main port to accept again")
    assert get_json(f"{proc.url}/engines/v1/models")["object"] == "list"
    assert proc.stop(timeout_s=10) == 0


def test_bad_arguments_exit_2() -> None:
    for args in (["--list-mode", "sometimes"], ["--engines", "tensorflow"], ["--parallel", "0"], []):
        done = subprocess.run(
            [sys.executable, "-m", "tests.emulator", *(["--port", "1"] if args else []), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2, args
        assert "Traceback" not in done.stderr
        assert done.stderr.strip()
