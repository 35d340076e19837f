"""Input limits as one pure function over a parsed body, in a table (the process tests prove the wiring)."""

from __future__ import annotations

from typing import Any

import pytest

from services.router.errors import RouterError
from services.router.inputs import InputLimits, JSONTooDeep, StringTooLong, TooManyMessages, check_input

LIMITS = InputLimits(max_depth=4, max_messages=2, max_string_chars=10)


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}] * 2}, None),
        ({"messages": [{"content": "hi"}] * 3}, TooManyMessages),
        ({"messages": "not a list"}, None),  # the shape is the endpoint's to refuse
        (deep(4), None),
        (deep(5), JSONTooDeep),
        ({"a": [[[1]]]}, None),  # object, list, list, list: 4
        ({"a": [[[[1]]]]}, JSONTooDeep),
        ({"s": "x" * 10}, None),
        ({"s": "x" * 11}, StringTooLong),
        ({"x" * 11: 1}, StringTooLong),
        ({"a": [{"b": ["x" * 11]}]}, StringTooLong),
        ([1, 2, 3], None),
    ],
)
def test_check_input(body: Any, error: type[RouterError] | None) -> None:
    if error is None:
        check_input(body, LIMITS)
    else:
        with pytest.raises(error) as caught:
            check_input(body, LIMITS)
        assert caught.value.status in (400, 413, 422)


def test_each_limit_has_its_own_status_and_code() -> None:
    assert {(e.status, e.code) for e in (JSONTooDeep, TooManyMessages, StringTooLong)} == {
        (400, "json_too_deep"),
        (422, "too_many_messages"),
        (413, "string_too_long"),
    }


def test_off_limits_check_nothing_and_depth_needs_no_recursion() -> None:
    check_input(deep(50) | {"s": "x" * 100, "messages": [1] * 100}, InputLimits())
    assert not InputLimits().on
    with pytest.raises(JSONTooDeep):
        check_input(deep(50_000), InputLimits(max_depth=100))  # iterative: no RecursionError
