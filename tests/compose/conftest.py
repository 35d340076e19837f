"""Fixtures of the compose tier: a real Docker engine for the session, local base images, the Pier image.

Without an engine (not root, no apt-get) the tier is skipped with the reason printed; with CI=true it fails
instead, so CI can never pass by skipping it.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compose.engine import (
    CA_FILE,
    LOCAL_PYTHON,
    LOCAL_REDIS,
    ComposeProject,
    Engine,
    EngineUnavailable,
    build_base_images,
    start_engine,
)
from tests.harness import ROOT

HERE = Path(__file__).resolve().parent
COMPOSE_FILES = (ROOT / "compose.yaml", HERE / "compose.test.yaml")
PIER_IMAGE = "pier-test:local"
PROJECT = "pier-compose-tier"

# Phase -> seconds, printed at the end of the run (the tier's time budget is 10 minutes).
TIMINGS: dict[str, float] = {}


def unavailable(reason: str) -> None:
    message = f"compose tier: no Docker engine here: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def ca_file() -> Path:
    """The CA bundle pip needs behind this machine's TLS proxy; an empty file (no secret) elsewhere."""
    if CA_FILE.exists():
        return CA_FILE
    empty = Path(tempfile.mkstemp(prefix="pier-no-ca-")[1])
    return empty


def compose_env(*, port: str, network: str) -> dict[str, str]:
    """The variables the test sets for compose.yaml: the documented knobs, pointed at local images."""
    return {
        "PIER_IMAGE": PIER_IMAGE,
        "PYTHON_IMAGE": LOCAL_PYTHON,
        "REDIS_IMAGE": LOCAL_REDIS,
        "PIER_PORT": port,
        "PIER_NETWORK": network,
        "PIP_CA_FILE": str(ca_file()),
        "COMPOSE_PROFILES": "",
    }


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """dockerd (started here unless one already answers) with the local base images built or found."""
    workdir = tmp_path_factory.mktemp("docker")
    started = time.monotonic()
    try:
        running = start_engine(workdir)
    except EngineUnavailable as exc:
        unavailable(str(exc))
        raise AssertionError("unreachable") from exc
    TIMINGS["engine start (install if missing)"] = time.monotonic() - started
    try:
        started = time.monotonic()
        built = build_base_images(running)
        TIMINGS["base images" + (f" (built: {', '.join(built)})" if built else " (cached)")] = (
            time.monotonic() - started
        )
        yield running
    finally:
        started = time.monotonic()
        running.stop()
        TIMINGS["engine stop"] = time.monotonic() - started


@pytest.fixture(scope="session")
def pier_image(engine: Engine) -> str:
    """The project's own Dockerfile built on the local Python image (one image for the three services)."""
    project = ComposeProject(engine, f"{PROJECT}-build", COMPOSE_FILES, compose_env(port="0", network=PROJECT))
    started = time.monotonic()
    project("build", "router", timeout_s=900)
    TIMINGS["pier image build"] = time.monotonic() - started
    assert engine.image_exists(PIER_IMAGE)
    return PIER_IMAGE


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.section("compose tier timings")
        for phase, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{seconds:7.1f} s  {phase}")
