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
        if not isinstance(data, str) and data and 0 < data[0] < 0x80 and (len(data) < 2 or data[1]):
            # What `json.loads` decides for bytes that start so (UTF-8: no BOM, no UTF-16/32 NUL pattern), without
            # its Python-level detection on every request body and answer.
            data = data.decode("utf-8", "surrogatepass")
        return json.loads(data)
    except RecursionError:
        raise JSONTooDeep("JSON is nested too deeply") from None
