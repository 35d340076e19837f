"""The probe schedule after failures, and Retry-After parsing: pure functions."""

from __future__ import annotations

import email.utils

import pytest

from services.health.backoff import DEFAULT_RETRY_AFTER_S, MAX_RETRY_AFTER_S, backoff_delay_s, parse_retry_after_s


@pytest.mark.parametrize(
    ("interval_s", "failures", "expected_s"),
    [
        (1.0, 0, 1.0),  # healthy: the interval
        (1.0, 1, 1.0),  # after failures: x1, x2, x4, x8, x12 ...
        (1.0, 2, 2.0),
        (1.0, 3, 4.0),
        (1.0, 4, 8.0),
        (1.0, 5, 12.0),
        (1.0, 6, 12.0),  # the last factor repeats
        (1.0, 100, 12.0),
        (5.0, 3, 20.0),
        (5.0, 4, 40.0),
        (5.0, 5, 60.0),  # 60 = cap
        (10.0, 4, 60.0),  # 80 capped at 60
        (10.0, 5, 60.0),
        (90.0, 3, 90.0),  # the cap never shortens the interval itself
        (3.0, -1, 3.0),
    ],
)
def test_backoff_schedule(interval_s: float, failures: int, expected_s: float) -> None:
    assert backoff_delay_s(interval_s, failures) == pytest.approx(expected_s)


def test_backoff_cap_is_configurable() -> None:
    assert backoff_delay_s(2.0, 5, max_backoff_s=10.0) == 10.0
    assert backoff_delay_s(2.0, 2, max_backoff_s=10.0) == 4.0


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("header", "expected_s"),
    [
        (None, DEFAULT_RETRY_AFTER_S),
        ("", DEFAULT_RETRY_AFTER_S),
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("-3", 0.0),
        ("soon", DEFAULT_RETRY_AFTER_S),
        ("nan", DEFAULT_RETRY_AFTER_S),
        ("99999999", MAX_RETRY_AFTER_S),
        (email.utils.formatdate(NOW + 42, usegmt=True), 42.0),
        (email.utils.formatdate(NOW - 42, usegmt=True), 0.0),  # a date in the past: probe again now
        ("Wed, 99 Foo 2026 00:00:00 GMT", DEFAULT_RETRY_AFTER_S),
    ],
)
def test_retry_after(header: str | None, expected_s: float) -> None:
    assert parse_retry_after_s(header, NOW) == pytest.approx(expected_s, abs=1.0)
