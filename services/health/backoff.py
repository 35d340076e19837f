"""When to probe an endpoint next: its interval, stretched after failures, or a server's Retry-After."""

from __future__ import annotations

import email.utils
import math

# After n consecutive failures the next probe waits interval x FACTORS[n-1] (the last factor repeats).
BACKOFF_FACTORS: tuple[int, ...] = (1, 2, 4, 8, 12)
DEFAULT_MAX_BACKOFF_S = 60.0
DEFAULT_RETRY_AFTER_S = 30.0
# A Retry-After longer than this is taken as this: a typo must not silence an endpoint for a day.
MAX_RETRY_AFTER_S = 3600.0


def backoff_delay_s(
    interval_s: float, consecutive_failures: int, *, max_backoff_s: float = DEFAULT_MAX_BACKOFF_S
) -> float:
    """Seconds until the next probe: the interval when healthy, interval x 1, 2, 4, 8, 12 after failures.

    The stretched wait is capped at `max_backoff_s`, but never made shorter than the interval itself.
    """
    if consecutive_failures <= 0:
        return interval_s
    factor = BACKOFF_FACTORS[min(consecutive_failures, len(BACKOFF_FACTORS)) - 1]
    return max(interval_s, min(interval_s * factor, max_backoff_s))


def parse_retry_after_s(value: str | None, now: float) -> float:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; 30 s when absent or garbled."""
    if value is None or not value.strip():
        return DEFAULT_RETRY_AFTER_S
    text = value.strip()
    seconds: float | None = None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None and when.tzinfo is not None:
            seconds = when.timestamp() - now
    if seconds is None or not math.isfinite(seconds):
        return DEFAULT_RETRY_AFTER_S
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
