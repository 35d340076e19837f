"""Zero-config candidates: the default route parser and the candidate list (pure parts)."""

from __future__ import annotations

from services.health.autodetect import auto_endpoint, default_candidates, default_gateway
from tests.health.endpoints import PROFILES

ROUTE_TABLE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
"""


def test_default_gateway_from_proc_net_route() -> None:
    assert default_gateway(ROUTE_TABLE) == "172.17.0.1"


def test_no_default_route() -> None:
    assert (
        default_gateway(ROUTE_TABLE.splitlines()[0] + "\neth0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\n") is None
    )
    assert default_gateway("") is None
    assert default_gateway("header\neth0\t00000000\tnothex\n") is None


def test_candidates_in_preference_order() -> None:
    assert default_candidates(gateway="172.17.0.1") == (
        "http://model-runner.docker.internal",
        "http://model-runner.docker.internal:12434",
        "http://host.docker.internal:12434",
        "http://172.17.0.1:12434",
    )
    assert len(default_candidates(gateway=None)) == 3


def test_auto_endpoint() -> None:
    e = auto_endpoint("http://127.0.0.1:12434", PROFILES)
    assert (e.name, e.type, e.source, e.health_check_path) == (
        "dmr",
        "docker-model-runner",
        "auto",
        "/engines/v1/models",
    )
