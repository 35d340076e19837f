"""JSON from clients and endpoints, parsed without letting its nesting crash the parser.

`json.loads` recurses once per nesting level and raises RecursionError (not ValueError) past the interpreter's
limit: `{"a":{"a":…}}` 10,000 levels deep is 60 KiB of valid JSON that would otherwise surface as a 500 with a
traceback, or kill a probe loop. Every place that parses JSON it did not write goes through `loads`, and sees
too-deep JSON as the ValueError any other malformed JSON already is.
"""

from __future__ import annotations

import json
from typing import Any


class JSONTooDeep(ValueError):
    """Valid JSON nested deeper than the parser can follow."""


def loads(data: str | bytes | bytearray) -> Any:
    """`json.loads`, with nesting too deep to parse raised as JSONTooDeep (a ValueError)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise JSONTooDeep("JSON is nested too deeply") from None
