"""Every service refuses bad configuration at start: exit code 2, one line naming the key and the value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT

SERVICES = ["services.router", "services.health", "services.warmup"]


def run_service(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OTEL_SDK_DISABLED": "true"}
    return subprocess.run(
        [sys.executable, "-m", module],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def bad_file(tmp_path: Path, body: str) -> str:
    path = tmp_path / "pier.yaml"
    path.write_text(body)
    return str(path)


CASES = [
    ("unknown type", "endpoints: [{url: 'http://a:1', name: a, type: gopher}]", "endpoints[0].type", "gopher"),
    ("negative interval", "endpoints: [{url: 'http://a:1', name: a, check_interval: -1s}]", "check_interval", "-1"),
    (
        "timeout not below interval",
        "endpoints: [{url: 'http://a:1', name: a, check_interval: 2s, check_timeout: 3s}]",
        "endpoints[0]",
        "check_timeout",
    ),
    ("duplicate name", "endpoints: [{url: 'http://a:1', name: a}, {url: 'http://b:1', name: a}]", "name", "a"),
    ("malformed url", "endpoints: [{url: 'not a url', name: a}]", "endpoints[0].url", "not a url"),
    ("broken yaml", "endpoints: [unclosed", "PIER_CONFIG_FILE", "pier.yaml"),
    ("misspelt top-level key", "endpoint: [{url: 'http://a:1', name: a}]", "endpoint=", "did you mean 'endpoints'"),
]


@pytest.mark.parametrize("module", SERVICES)
@pytest.mark.parametrize(("case", "body", "key", "value"), CASES, ids=[c[0] for c in CASES])
def test_bad_config_file_exits_2_with_one_line(
    tmp_path: Path, module: str, case: str, body: str, key: str, value: str
) -> None:
    result = run_service(module, {"PIER_CONFIG_FILE": bad_file(tmp_path, body)})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (case, result.stderr)
    assert len(lines) == 1, lines
    assert key in lines[0]
    assert value in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("module", SERVICES)
@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"PIER_CONFIG_FILE": "/nonexistent/pier.yaml"}, "PIER_CONFIG_FILE"),
        ({"PIER_REDIS_URL": "http://nope"}, "PIER_REDIS_URL"),
        ({"PIER_DMR_URL": "model-runner"}, "PIER_DMR_URL"),
        ({"PIER_LOAD_BALANCER": "fastest"}, "PIER_LOAD_BALANCER"),
        ({"PIER_LOG_LEVEL": "loud"}, "PIER_LOG_LEVEL"),
    ],
)
def test_bad_env_value_exits_2_with_one_line(module: str, env: dict[str, str], key: str) -> None:
    result = run_service(module, env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"config error: {key}=")
    assert "Traceback" not in result.stderr
