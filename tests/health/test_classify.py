"""Status classification of one probe: a table, no I/O."""

from __future__ import annotations

import pytest

from services.health.classify import aux_kind_for_status, classify, is_failure
from shared.state import EndpointStatus as S

BUSY_S = 10.0


@pytest.mark.parametrize(
    ("http_status", "body_ok", "latency_s", "expected"),
    [
        (None, True, 0.0, S.OFFLINE),  # refused, reset, DNS, timeout
        (200, True, 0.01, S.HEALTHY),
        (204, True, 0.01, S.HEALTHY),
        (200, True, 10.5, S.BUSY),  # answered, but slower than the threshold
        (200, True, 10.0, S.HEALTHY),  # at the threshold is not slower than it
        (200, False, 0.01, S.UNHEALTHY),  # garbage body
        (200, False, 20.0, S.UNHEALTHY),  # garbage is garbage however slow
        (500, True, 0.01, S.UNHEALTHY),
        (503, True, 0.01, S.UNHEALTHY),
        (502, True, 30.0, S.UNHEALTHY),
        (404, True, 0.01, S.UNHEALTHY),  # the health route itself is missing
        (401, True, 0.01, S.CONFIG_ERROR),
        (403, False, 0.01, S.CONFIG_ERROR),
        (429, True, 0.01, S.RATE_LIMITED),
        (301, True, 0.01, S.UNHEALTHY),
    ],
)
def test_classify(http_status: int | None, body_ok: bool, latency_s: float, expected: S) -> None:
    assert classify(http_status, body_ok=body_ok, latency_s=latency_s, busy_threshold_s=BUSY_S) is expected


@pytest.mark.parametrize(
    ("status", "failure"),
    [
        (S.OFFLINE, True),
        (S.UNHEALTHY, True),
        (S.HEALTHY, False),
        (S.BUSY, False),
        (S.CONFIG_ERROR, False),  # not counted as a failure
        (S.RATE_LIMITED, False),  # paced by Retry-After instead
        (S.UNKNOWN, False),
    ],
)
def test_failures(status: S, failure: bool) -> None:
    assert is_failure(status) is failure


@pytest.mark.parametrize(
    ("http_status", "kind"),
    [(200, "ok"), (404, "absent"), (405, "absent"), (501, "absent"), (500, "failed"), (503, "failed"), (401, "failed")],
)
def test_inventory_route_status(http_status: int, kind: str) -> None:
    assert aux_kind_for_status(http_status) == kind
