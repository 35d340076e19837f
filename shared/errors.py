"""The one error a service raises for bad configuration; `shared.startup` turns it into exit code 2."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration value is wrong. `key` names it the way the user wrote it."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        super().__init__(f"config error: {key}={_short(value)}: {reason}")


def _short(value: object) -> str:
    text = repr(value) if not isinstance(value, str) else value
    text = " ".join(text.split())
    return text if len(text) <= 120 else text[:117] + "..."
