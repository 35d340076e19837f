"""The health worker's settings from the environment: defaults, parsing, one-line errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.health.settings import HealthSettings
from shared.startup import config_error_line


def test_defaults() -> None:
    s = HealthSettings()
    assert (s.busy_threshold_s, s.lease_ttl_s, s.heartbeat_ttl_s, s.docker_discovery) == (10.0, 5.0, 5.0, "auto")
    assert s.autodetect_candidates == ()


def test_durations_and_candidates_parse() -> None:
    s = HealthSettings.model_validate(
        {
            "busy_threshold_s": "1500ms",
            "lease_ttl_s": "3s",
            "discovery_resync_interval_s": "1m",
            "autodetect_candidates": "http://127.0.0.1:1/, https://dmr.local",
            "docker_discovery": "OFF",
            "docker_label_filter": "com.docker.compose.project=pier, tier = test",
        }
    )
    assert (s.busy_threshold_s, s.lease_ttl_s, s.discovery_resync_interval_s) == (1.5, 3.0, 60.0)
    assert s.autodetect_candidates == ("http://127.0.0.1:1", "https://dmr.local")
    assert s.docker_discovery == "off"
    assert s.docker_label_filter == {"com.docker.compose.project": "pier", "tier": "test"}


@pytest.mark.parametrize(
    ("field", "value", "key"),
    [
        ("busy_threshold_s", "soon", "PIER_BUSY_THRESHOLD_S"),
        ("lease_ttl_s", "0.5s", "PIER_LEASE_TTL_S"),
        ("docker_discovery", "maybe", "PIER_DOCKER_DISCOVERY"),
        ("autodetect_candidates", "dmr:12434", "PIER_AUTODETECT_CANDIDATES"),
        ("docker_label_filter", "project", "PIER_DOCKER_LABEL_FILTER"),
    ],
)
def test_bad_values_name_the_key(field: str, value: str, key: str) -> None:
    with pytest.raises(ValidationError) as info:
        HealthSettings.model_validate({field: value})
    line = config_error_line(info.value)
    assert line.startswith(f"config error: {key}=")
    assert "\n" not in line
