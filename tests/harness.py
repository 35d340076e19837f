"""Test harness: real processes on free ports, and waits on observable conditions with deadlines.

Nothing here fakes Redis, aiohttp or the services: every helper starts or talks to the real thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, overload

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.02


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Timeout(AssertionError):
    """A condition did not become true before its deadline."""


@overload
async def wait_for(
    check: Callable[[], Awaitable[T | None]], *, timeout_s: float = 10.0, what: str = "condition"
) -> T:  # the value is truthy, so never None
    ...
@overload
async def wait_for(check: Callable[[], T], *, timeout_s: float = 10.0, what: str = "condition") -> T: ...
async def wait_for(check: Callable[[], object], *, timeout_s: float = 10.0, what: str = "condition") -> object:
    """Poll `check` until it returns a truthy value (returned) or the deadline passes (Timeout).

    Polling is the observable-condition wait: the short pause between polls orders nothing.
    """
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        result = check()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        last = result
        if time.monotonic() >= deadline:
            raise Timeout(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(POLL_S)


def wait_for_sync(check: Callable[[], T | None], *, timeout_s: float = 10.0, what: str = "condition") -> T:
    """The blocking twin of `wait_for`, for fixtures that run outside an event loop."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise Timeout(f"timed out after {timeout_s}s waiting for {what} (last: {result!r})")
        time.sleep(POLL_S)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return 200 <= int(resp.status) < 500
    except (urllib.error.URLError, OSError, ValueError):
        return False


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def stop_popen(popen: subprocess.Popen[bytes], timeout_s: float = 10.0) -> int:
    """SIGTERM, wait; SIGKILL if it does not exit in time. Returns the exit code."""
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout=5)
    return int(popen.returncode)


def kill_popen(popen: subprocess.Popen[bytes]) -> None:
    """SIGKILL (no grace) and reap it."""
    if popen.poll() is None:
        popen.kill()
        popen.wait(timeout=5)


@dataclass
class Proc:
    """A real child process with its output captured to files."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log_dir: Path
    port: int | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        parts = []
        for stream in ("stdout", "stderr"):
            path = self.log_dir / f"{self.name}.{stream}"
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, wait; SIGKILL if it does not exit in time. Returns the exit code."""
        return stop_popen(self.popen, timeout_s)

    def kill(self) -> None:
        kill_popen(self.popen)


class ProcessFactory:
    """Starts processes for one test and stops every one of them at teardown."""

    def __init__(self, log_dir: Path, base_env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.base_env = base_env
        self.procs: list[Proc] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        port: int | None = None,
        ready: Callable[[Proc], bool] | None = None,
        ready_timeout_s: float = 20.0,
    ) -> Proc:
        full_env = {**self.base_env, **(env or {})}
        unique = f"{name}-{len(self.procs)}"
        out = open(self.log_dir / f"{unique}.stdout", "wb")  # noqa: SIM115 - owned by the child
        err = open(self.log_dir / f"{unique}.stderr", "wb")  # noqa: SIM115
        popen = subprocess.Popen(list(argv), cwd=ROOT, env=full_env, stdout=out, stderr=err)
        out.close()
        err.close()
        proc = Proc(unique, list(argv), popen, self.log_dir, port, full_env)
        self.procs.append(proc)
        if ready is not None:
            try:
                wait_for_sync(
                    lambda: ready(proc) or (not proc.alive() and _died(proc)),
                    timeout_s=ready_timeout_s,
                    what=f"{name} to be ready",
                )
            except Timeout:
                proc.kill()
                raise Timeout(f"{name} not ready in {ready_timeout_s}s; output:\n{proc.output()[-4000:]}") from None
        return proc

    def python(
        self,
        name: str,
        module: str,
        *args: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
        ready: Callable[[Proc], bool] | None = None,
        ready_timeout_s: float = 20.0,
    ) -> Proc:
        """Start `python -m module args…` with this interpreter."""
        return self.start(
            name,
            [sys.executable, "-m", module, *args],
            env=env,
            port=port,
            ready=ready,
            ready_timeout_s=ready_timeout_s,
        )

    def emulator(self, *args: str, port: int | None = None, ready_timeout_s: float = 20.0) -> Proc:
        """A DMR emulator process (`python -m tests.emulator --port N …`), ready when `GET /` answers."""
        port = port or free_port()
        return self.python(
            "emulator",
            "tests.emulator",
            "--port",
            str(port),
            *args,
            port=port,
            ready=lambda p: http_ok(f"{p.url}/"),
            ready_timeout_s=ready_timeout_s,
        )

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout_s=5)


def _died(proc: Proc) -> bool:
    raise Timeout(f"{proc.name} exited with {proc.popen.returncode}; output:\n{proc.output()[-4000:]}")


@dataclass
class RedisServer:
    port: int
    popen: subprocess.Popen[bytes]
    dir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        stop_popen(self.popen)

    def restart(self) -> None:
        """Start a fresh server on the same port (used to test Redis outages)."""
        self.stop()
        started = start_redis(port=self.port, workdir=self.dir)
        self.popen = started.popen


class MissingTool(RuntimeError):
    """A system binary a test needs is absent and cannot be installed here; the message says what to install."""


def _find_binary(name: str) -> str | None:
    """On PATH, or in the system folders a non-root PATH may lack."""
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/bin", "/usr/sbin", "/sbin") if (p := Path(d) / name).exists()), None
    )


def system_binary(name: str, package: str) -> str:
    """The path of a system binary, installed from Debian's packages when missing (root with apt-get only).

    Otherwise raises MissingTool naming the package: the test command promises to do its own set-up, so a
    missing tool is either installed or reported in one line, never a FileNotFoundError deep in a test.
    """
    found = _find_binary(name)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env, capture_output=True)
        found = _find_binary(name)
        if found:
            return found
    raise MissingTool(f"{name} is not installed: install it with `apt-get install {package}` (as root)")


def require_binary(name: str, package: str) -> str:
    """system_binary() for a test: a missing tool fails the test with one line saying what to install."""
    import pytest  # only tests call this; the benchmark CLI uses system_binary()

    try:
        return system_binary(name, package)
    except MissingTool as exc:
        pytest.fail(str(exc), pytrace=False)


def redis_server_binary() -> str:
    """Find redis-server; install it from Debian's packages when it is missing (root only)."""
    return system_binary("redis-server", "redis-server")


def start_redis(*, port: int | None = None, workdir: Path | None = None) -> RedisServer:
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="pier-redis-"))
    popen = subprocess.Popen(
        [
            redis_server_binary(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            "--logfile", str(workdir / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = RedisServer(port, popen, workdir)
    wait_for_sync(lambda: port_open(port), timeout_s=10, what=f"redis-server on port {port}")
    return server
