"""Docker containers -> endpoints: the label mapping, table-tested on Docker's list-API summaries."""

from __future__ import annotations

from typing import Any

import pytest

from services.health.labels import endpoints_from_containers, merge_endpoints
from tests.health.endpoints import PROFILES, endpoint


def container(
    name: str, labels: dict[str, str], *, networks: dict[str, str] | None = None, state: str = "running"
) -> dict[str, Any]:
    nets = {"pier_default": "172.18.0.5"} if networks is None else networks
    return {
        "Id": f"{name}0123456789abcdef",
        "Names": [f"/{name}"],
        "Labels": labels,
        "State": state,
        "NetworkSettings": {"Networks": {net: {"IPAddress": ip} for net, ip in nets.items()}},
    }


# (case, container, expected (name, url, type, priority, interval) or None for "not an endpoint")
CASES: list[tuple[str, dict[str, Any], tuple[str, str, str, int, float] | None]] = [
    (
        "dmr controller on Docker CE",
        container(
            "docker-model-runner",
            {"com.docker.model-runner.role": "controller", "com.docker.desktop.service": "model-runner"},
            networks={"bridge": "172.17.0.2"},
        ),
        ("docker-model-runner", "http://172.17.0.2:12434", "docker-model-runner", 95, 5.0),
    ),
    (
        "marked, all defaults",
        container("gpu-box", {"pier.endpoint": "true"}),
        ("gpu-box", "http://172.18.0.5:12434", "docker-model-runner", 95, 5.0),
    ),
    (
        "marked, every label",
        container(
            "vllm-1",
            {
                "pier.endpoint": "TRUE",
                "pier.name": "big",
                "pier.type": "vllm",
                "pier.port": "8001",
                "pier.priority": "120",
                "pier.check_interval": "2s",
                "pier.check_timeout": "1s",
            },
        ),
        ("big", "http://172.18.0.5:8001", "openai-compatible", 120, 2.0),
    ),
    (
        "type default port (ollama)",
        container("ol", {"pier.endpoint": "yes", "pier.type": "ollama"}),
        ("ol", "http://172.18.0.5:11434", "ollama", 50, 5.0),
    ),
    (
        "chosen network",
        container(
            "multi", {"pier.endpoint": "1", "pier.network": "models"}, networks={"a": "10.0.0.2", "models": "10.9.0.7"}
        ),
        ("multi", "http://10.9.0.7:12434", "docker-model-runner", 95, 5.0),
    ),
    (
        "first network by name when several",
        container("multi2", {"pier.endpoint": "true"}, networks={"zeta": "10.0.0.9", "alpha": "10.0.0.3"}),
        ("multi2", "http://10.0.0.3:12434", "docker-model-runner", 95, 5.0),
    ),
    (
        "explicit url",
        container("ext", {"pier.endpoint": "true", "pier.url": "http://model-runner.docker.internal/"}, networks={}),
        ("ext", "http://model-runner.docker.internal", "docker-model-runner", 95, 5.0),
    ),
    ("not marked", container("redis", {"com.docker.compose.service": "redis"}), None),
    ("marked false", container("off", {"pier.endpoint": "false"}), None),
    ("stopped", container("gone", {"pier.endpoint": "true"}, state="exited"), None),
]


@pytest.mark.parametrize(("case", "item", "expected"), CASES, ids=[c[0] for c in CASES])
def test_mapping(case: str, item: dict[str, Any], expected: tuple[str, str, str, int, float] | None) -> None:
    result = endpoints_from_containers([item], PROFILES)
    assert result.problems == ()
    if expected is None:
        assert result.endpoints == ()
        return
    (e,) = result.endpoints
    assert (e.name, e.url, e.type, e.priority, e.check_interval_s) == expected
    assert e.source == "docker"


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("bad port", container("p", {"pier.endpoint": "true", "pier.port": "http"}), "pier.port='http'"),
    ("port out of range", container("p2", {"pier.endpoint": "true", "pier.port": "70000"}), "not a port"),
    ("bad priority", container("q", {"pier.endpoint": "true", "pier.priority": "high"}), "priority"),
    ("negative priority", container("q2", {"pier.endpoint": "true", "pier.priority": "-1"}), "priority"),
    ("unknown type", container("t", {"pier.endpoint": "true", "pier.type": "tgi"}), "unknown endpoint type"),
    ("no address", container("h", {"pier.endpoint": "true"}, networks={}), "no IP address"),
    (
        "missing network",
        container("n", {"pier.endpoint": "true", "pier.network": "models"}),
        "no IP address on network 'models'",
    ),
    ("bad url", container("u", {"pier.endpoint": "true", "pier.url": "ftp://x"}), "url"),
    (
        "timeout >= interval",
        container("i", {"pier.endpoint": "true", "pier.check_interval": "1s", "pier.check_timeout": "2s"}),
        "check_timeout",
    ),
]


@pytest.mark.parametrize(("case", "item", "problem"), BAD, ids=[c[0] for c in BAD])
def test_bad_labels_are_skipped_with_a_reason(case: str, item: dict[str, Any], problem: str) -> None:
    result = endpoints_from_containers([item, container("fine", {"pier.endpoint": "true"})], PROFILES)
    assert [e.name for e in result.endpoints] == ["fine"]
    (line,) = result.problems
    assert line.startswith(f"container {item['Names'][0][1:]}: ")
    assert problem in line


def test_name_clash_between_containers_first_by_name_wins() -> None:
    result = endpoints_from_containers(
        [
            container("b-box", {"pier.endpoint": "true", "pier.name": "gpu"}, networks={"n": "10.0.0.2"}),
            container("a-box", {"pier.endpoint": "true", "pier.name": "gpu"}, networks={"n": "10.0.0.1"}),
        ],
        PROFILES,
    )
    assert [(e.name, e.url) for e in result.endpoints] == [("gpu", "http://10.0.0.1:12434")]
    assert "already taken" in result.problems[0]


def test_static_wins_a_name_clash() -> None:
    static = (endpoint("gpu", "http://10.1.1.1:12434"), endpoint("local", "http://127.0.0.1:12434"))
    discovered = endpoints_from_containers(
        [
            container("gpu", {"pier.endpoint": "true"}, networks={"n": "10.0.0.1"}),
            container("other", {"pier.endpoint": "true"}, networks={"n": "10.0.0.2"}),
        ],
        PROFILES,
    ).endpoints
    merged, clashes = merge_endpoints(static, discovered)
    assert [(e.name, e.url, e.source) for e in merged] == [
        ("gpu", "http://10.1.1.1:12434", "static"),
        ("local", "http://127.0.0.1:12434", "static"),
        ("other", "http://10.0.0.2:12434", "docker"),
    ]
    assert len(clashes) == 1
    assert "'gpu'" in clashes[0]
    assert "keeping the static one" in clashes[0]


def test_required_labels_restrict_discovery() -> None:
    mine = container("mine", {"pier.endpoint": "true", "com.docker.compose.project": "a"})
    theirs = container("theirs", {"pier.endpoint": "true", "com.docker.compose.project": "b"})
    dmr = container("docker-model-runner", {"com.docker.model-runner.role": "controller"})
    result = endpoints_from_containers([mine, theirs, dmr], PROFILES, {"com.docker.compose.project": "a"})
    assert [e.name for e in result.endpoints] == ["mine"]
    everything = endpoints_from_containers([mine, theirs, dmr], PROFILES)
    assert [e.name for e in everything.endpoints] == ["docker-model-runner", "mine", "theirs"]
