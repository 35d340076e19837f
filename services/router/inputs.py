"""Input limits on a request's parsed JSON body: nesting depth, number of messages, length of any string.

One pure function over the parsed body; each limit has its own status and code, and its message names the
setting that sets it. (The parser's own limit stays underneath: JSON nested past the interpreter's recursion
limit is a 400 `invalid_json` before this is reached; see `shared.jsontext`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.router.errors import RouterError


class JSONTooDeep(RouterError):
    status = 400
    type = "invalid_request_error"
    code = "json_too_deep"


class TooManyMessages(RouterError):
    status = 422
    type = "invalid_request_error"
    code = "too_many_messages"


class StringTooLong(RouterError):
    status = 413
    type = "invalid_request_error"
    code = "string_too_long"


@dataclass(frozen=True, slots=True)
class InputLimits:
    """0 turns a limit off."""

    max_depth: int = 0
    max_messages: int = 0
    max_string_chars: int = 0

    @property
    def on(self) -> bool:
        return self.max_depth > 0 or self.max_messages > 0 or self.max_string_chars > 0


def check_input(data: Any, limits: InputLimits) -> None:
    """Raise the first limit `data` breaks. Iterative (no recursion however deep the body is)."""
    if limits.max_messages > 0 and isinstance(data, dict):
        messages = data.get("messages")
        if isinstance(messages, list) and len(messages) > limits.max_messages:
            raise TooManyMessages(
                f"{len(messages)} messages are over the limit of {limits.max_messages} (PIER_MAX_MESSAGES)",
                param="messages",
            )
    max_depth = limits.max_depth
    max_chars = limits.max_string_chars
    if max_depth <= 0 and max_chars <= 0:
        return
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if 0 < max_depth < depth:
                raise JSONTooDeep(
                    f"the request body is JSON nested deeper than {max_depth} levels (PIER_MAX_JSON_DEPTH)"
                )
            if isinstance(value, dict):
                for key, item in value.items():
                    if 0 < max_chars < len(key):
                        raise _too_long(len(key), max_chars)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str) and 0 < max_chars < len(value):
            raise _too_long(len(value), max_chars)


def _too_long(length: int, limit: int) -> StringTooLong:
    return StringTooLong(
        f"a string of {length} characters in the request body is over the limit of {limit} (PIER_MAX_STRING_CHARS)"
    )
