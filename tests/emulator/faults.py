"""Fault injection: what the emulator does wrong, for how many requests, on which paths.

Modes: none, refuse (main listener closed: ECONNREFUSED), reset (accept, then abort the connection),
status (answer an HTTP error as DMR would), loading (llama.cpp's 503 `Loading model`), hang (never send headers),
drop (streams: send `drop_after` chunks then close; others: close after the headers), slow_first_byte
(wait `delay_ms` before the headers), garbage (answer bytes that are not HTTP, then close), trickle (a valid
answer sent one byte every `delay_ms`, one second when unset: a peer that is alive but useless).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODES = ("none", "refuse", "reset", "status", "loading", "hang", "drop", "slow_first_byte", "garbage", "trickle")
ADMIN_PREFIX = "/_emulator/"

# DMR's own error texts for the `status` fault (text/plain, http.Error style).
STATUS_TEXT = {
    400: "invalid request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    429: "too many requests",
    500: "unable to load runner: error waiting for runner to be ready: llama.cpp terminated unexpectedly",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
}


_SETTINGS = {"mode", "status", "message", "retry_after", "count", "paths", "delay_ms", "drop_after", "duration_ms"}


class FaultError(ValueError):
    """A bad fault setting; the message names the key."""


@dataclass
class Fault:
    mode: str = "none"
    status: int = 500
    message: str | None = None
    retry_after: str | int | None = None
    count: int | None = None
    paths: list[str] | None = None
    delay_ms: float = 0.0
    drop_after: int = 1
    duration_ms: float | None = None
    applied: int = field(default=0)

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "status": self.status,
            "message": self.message,
            "retry_after": self.retry_after,
            "count": self.count,
            "paths": self.paths,
            "delay_ms": self.delay_ms,
            "drop_after": self.drop_after,
            "duration_ms": self.duration_ms,
            "applied": self.applied,
        }

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Fault:
        """Build a fault from the admin route's JSON; raises FaultError on a bad key or value."""
        for key in body:
            if key not in _SETTINGS:
                raise FaultError(f"{key}: unknown fault setting")
        mode = body.get("mode", "none")
        if mode not in MODES:
            raise FaultError(f"mode: must be one of {', '.join(MODES)}")
        fault = cls(mode=mode)
        fault.status = _int(body, "status", 500, low=100, high=599)
        message = body.get("message")
        if message is not None and not isinstance(message, str):
            raise FaultError("message: expected a string")
        fault.message = message
        retry_after = body.get("retry_after")
        if retry_after is not None and (isinstance(retry_after, bool) or not isinstance(retry_after, str | int)):
            raise FaultError("retry_after: expected seconds or an HTTP date")
        fault.retry_after = retry_after
        count = body.get("count")
        fault.count = None if count is None else _int(body, "count", 0, low=0)
        paths = body.get("paths")
        if paths is not None and not (isinstance(paths, list) and all(isinstance(p, str) for p in paths)):
            raise FaultError("paths: expected a list of path prefixes or null")
        fault.paths = paths
        fault.delay_ms = _number(body, "delay_ms", 0.0)
        fault.drop_after = _int(body, "drop_after", 1, low=0)
        duration = body.get("duration_ms")
        fault.duration_ms = None if duration is None else _number(body, "duration_ms", 0.0)
        return fault

    def clear(self) -> None:
        self.__dict__.update(Fault().__dict__)

    def matches(self, path: str) -> bool:
        if self.mode == "none" or path.startswith(ADMIN_PREFIX):
            return False
        if self.count is not None and self.applied >= self.count:
            return False
        return self.paths is None or any(path.startswith(p) for p in self.paths)

    def take(self, path: str) -> Fault | None:
        """The fault to apply to this request (consuming one of `count`), or None."""
        if not self.matches(path):
            return None
        self.applied += 1
        snapshot = Fault(**{k: v for k, v in self.__dict__.items()})
        if self.count is not None and self.applied >= self.count and self.mode != "refuse":
            # Used up: later requests behave normally (a refused listener is re-opened by the admin route).
            self.clear()
        return snapshot

    def status_text(self) -> str:
        if self.message is not None:
            return self.message
        return STATUS_TEXT.get(self.status, f"error {self.status}")


def _int(body: dict[str, Any], key: str, default: int, *, low: int | None = None, high: int | None = None) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FaultError(f"{key}: expected an integer")
    if (low is not None and value < low) or (high is not None and value > high):
        raise FaultError(f"{key}: out of range")
    return value


def _number(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FaultError(f"{key}: expected a number >= 0")
    return float(value)
