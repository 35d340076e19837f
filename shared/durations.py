"""Duration values as Olla writes them (`500ms`, `10s`, `5m`, `1h`, `1h30m`) or plain seconds."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration_s(value: object) -> float:
    """Return seconds for a duration given as a number or a Go-style string; raise ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"not a duration: {value!r}")
    text = value.strip().lower()
    sign = 1.0
    if text.startswith("-"):
        sign, text = -1.0, text[1:]
    try:
        return sign * float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"not a duration (use e.g. 500ms, 10s, 5m, 1h): {value!r}")
    return sign * total


Seconds = Annotated[float, BeforeValidator(parse_duration_s)]
"""A float of seconds that also accepts `10s`, `5m`, `1h` in config files and env vars."""
