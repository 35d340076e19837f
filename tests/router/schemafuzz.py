"""Schemathesis against a running router, loaded from the router's own `/openapi.json`: every operation, valid
and invalid inputs (its positive and negative modes), each answer checked for Pier's promises.

Checked on every answer: no 5xx but the documented 502/503/504 (no endpoint could answer), an answer within
`CALL_TIMEOUT_S` (no hang), every error a JSON object in its family's shape (Anthropic's for Anthropic routes,
OpenAI's elsewhere), and, for inputs the schema allows, the answer conforms to the schema where the schema says
what it is (status codes, content types, error bodies).
"""

from __future__ import annotations

import json
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import requests
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode, Response
from schemathesis.core.result import Err
from schemathesis.errors import FailureGroup
from schemathesis.openapi import from_url
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

CALL_TIMEOUT_S = 15.0
SEED = os.environ.get("FUZZ_SEED", "")
ENDPOINT_STATUSES = {502, 503, 504}  # documented: no endpoint could answer
Operation = APIOperation[Any, Any, Any, Any]
PROPERTIES = (
    "no 5xx but the documented 502/503/504, an answer within 15 s, errors JSON in the family's shape,"
    " schema conformance for valid inputs, the router alive at the end"
)


@dataclass
class Tally:
    """Inputs sent, per route family (the operation's tag), and what went wrong."""

    inputs: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def operations(router_url: str, headers: dict[str, str] | None = None) -> list[Operation]:
    schema = from_url(f"{router_url}/openapi.json", timeout=10, headers=headers or {})
    out: list[Operation] = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        out.append(result.ok())
    return out


def family_shape_problem(family: str, body: object) -> str | None:
    """Why an error body is not in its family's shape, or None when it is."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return "not an object with an `error` object"
    error = body["error"]
    if not isinstance(error.get("message"), str) or not isinstance(error.get("type"), str):
        return "`error` lacks a string message and type"
    if family == "anthropic" and body.get("type") != "error":
        return "an Anthropic error without `type: error`"
    return None


def _check(case: Case[Any], mode: GenerationMode, family: str, response: Response) -> list[str]:
    label = f"{case.method} {case.formatted_path} ({mode.value})"
    status = response.status_code
    out: list[str] = []
    if status >= 500 and status not in ENDPOINT_STATUSES:
        out.append(f"{label}: {status} {response.text[:200]}")
    if status >= 400 and case.method != "HEAD":
        try:
            problem = family_shape_problem(family, json.loads(response.content))
        except ValueError:
            problem = f"not JSON ({response.headers.get('content-type', [''])[0]})"
        if problem:
            out.append(f"{label}: {status} error body {problem}: {response.text[:200]}")
    if mode is GenerationMode.POSITIVE:
        checks = [status_code_conformance, content_type_conformance, response_schema_conformance]
        if "200" in case.operation.definition.raw.get("responses", {}):
            # An input the schema allows is never refused as invalid (a 400 or 422): the schema says what the
            # router checks. Unknown models (404), limits (429), endpoints' outages (5xx) are fine.
            checks.append(positive_data_acceptance)
        try:
            case.validate_response(response, checks=checks)
        except (AssertionError, FailureGroup) as exc:  # one failed check, or several
            out.append(f"{label}: schema: {str(exc)[:400]}")
    return out


def fuzz(
    operation: Operation, router_url: str, examples: int, tally: Tally, key_header: dict[str, str] | None = None
) -> None:
    """Send `examples` positive and `examples` negative inputs to one operation; count them, note problems."""
    with requests.Session() as session:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz_mode(operation, mode, router_url, examples, tally, key_header, session)
            except Unsatisfiable:
                # Nothing about this operation can be made invalid (a GET without parameters): no negative mode.
                if mode is GenerationMode.POSITIVE:
                    raise


def _fuzz_mode(
    operation: Operation,
    mode: GenerationMode,
    router_url: str,
    examples: int,
    tally: Tally,
    key_header: dict[str, str] | None,
    session: requests.Session,
) -> None:
    family = operation.tags[0] if operation.tags else "?"

    # A seed per operation and mode: a run is reproducible, and FUZZ_SEED gives another one.
    @seed(zlib.crc32(f"{SEED}{operation.method}{operation.path}{mode.value}".encode()))
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(mode), with_key=st.booleans())
    def run(case: Case[Any], with_key: bool) -> None:
        headers = key_header if (key_header and with_key) else None
        tally.inputs[family] += 1
        try:
            response = case.call(base_url=router_url, session=session, headers=headers, timeout=CALL_TIMEOUT_S)
        except requests.Timeout:
            tally.problems.append(f"{case.method} {case.formatted_path}: no answer in {CALL_TIMEOUT_S:g} s")
            return
        tally.problems.extend(_check(case, mode, family, response))

    run()
