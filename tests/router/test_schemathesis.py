"""Schemathesis against real routers, loaded from their own `/openapi.json`: every operation, valid and invalid
inputs, once with the router open and once with access control on (a valid key on about half the calls).
What is checked on every answer is in `tests/router/schemafuzz.py`; the inputs sent per route family go to
`docs/reliability.md`.

`SCHEMATHESIS_EXAMPLES` (default 20 per operation and mode) scales the run; `FUZZ_SEED` picks other inputs.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from tests.harness import Proc, ProcessFactory, RedisServer
from tests.reliability import Inputs, record_inputs
from tests.router import schemafuzz
from tests.router.support import EmuSpec, Stack, build_stack, start_router

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "20"))
KEY = "sk-pier-schemathesis-0123456789abcdef"
FAMILIES = ("openai", "dmr", "anthropic", "olla", "internal")
SENT: Counter[str] = Counter()


@pytest.fixture(scope="module")
def stack(module_procs: ProcessFactory, module_dir: Path, module_redis: RedisServer) -> Stack:
    return build_stack(module_procs, module_dir, module_redis.url, [EmuSpec("e1")])


@pytest.fixture(scope="module")
def gated(module_procs: ProcessFactory, stack: Stack) -> Proc:
    return start_router(
        module_procs,
        stack.redis_url,
        stack.config,
        PIER_ACCESS_CONTROL="true",
        PIER_API_KEYS=f'[{{"name": "schemathesis", "key": "{KEY}"}}]',
        PIER_RATE_LIMIT_PER_S="1000",
        PIER_RATE_LIMIT_GLOBAL_PER_S="2000",
    )


def _fuzz_all(router: Proc, key_header: dict[str, str] | None) -> schemafuzz.Tally:
    # With access control on, the description itself needs a key, as every route but the health check does.
    operations = schemafuzz.operations(router.url, key_header)
    families = {op.tags[0] for op in operations if op.tags}
    assert families == set(FAMILIES), families
    tally = schemafuzz.Tally()
    for operation in operations:
        schemafuzz.fuzz(operation, router.url, EXAMPLES, tally, key_header)
    SENT.update(tally.inputs)
    print(f"schemathesis: {sum(tally.inputs.values())} inputs over {len(operations)} operations: {dict(tally.inputs)}")
    return tally


def test_open_router_keeps_its_promises_on_every_operation(stack: Stack) -> None:
    tally = _fuzz_all(stack.router, None)
    assert not tally.problems, "\n".join(tally.problems[:20])
    assert stack.router.alive()


def test_gated_router_keeps_its_promises_on_every_operation(gated: Proc) -> None:
    tally = _fuzz_all(gated, {"Authorization": f"Bearer {KEY}"})
    assert not tally.problems, "\n".join(tally.problems[:20])
    assert gated.alive()


def test_routers_survived_and_inputs_are_recorded(stack: Stack, gated: Proc) -> None:
    for proc in (stack.router, gated):
        assert proc.alive()
        assert "Traceback" not in proc.output()
    assert all(SENT[family] > 0 for family in FAMILIES), SENT
    for family in FAMILIES:
        record_inputs(Inputs("schemathesis", family, SENT[family], schemafuzz.PROPERTIES))


def _get(port: int, path: str) -> tuple[int, str, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", json.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("path", "family"),
    [("/x%0Ay", "openai"), ("/v1/models/a%0Ab", "openai"), ("/anthropic/v1/models/a%0Ab", "anthropic")],
)
def test_a_path_with_a_newline_gets_pier_json_404(stack: Stack, path: str, family: str) -> None:
    # Found by Schemathesis: the catch-all's `.*` stopped at the newline, and aiohttp answered in text.
    assert stack.router.port is not None
    status, content_type, body = _get(stack.router.port, path)
    assert status == 404
    assert content_type.startswith("application/json")
    assert schemafuzz.family_shape_problem(family, body) is None, body


def test_the_description_says_what_routes_answer(stack: Stack) -> None:
    # Mismatches Schemathesis found: management routes documented a 200 they never answer; the Anthropic
    # routes documented only `model` though Pier checks max_tokens and messages; an empty model or path
    # parameter was "valid".
    with urllib.request.urlopen(f"{stack.url}/openapi.json", timeout=10) as resp:
        doc = json.loads(resp.read())
    paths = doc["paths"]
    assert set(paths["/models/create"]["post"]["responses"]) == {"405", "4XX"}
    assert set(paths["/v1/chat/completions"]["post"]["responses"]) == {"200", "4XX", "5XX"}
    messages = paths["/v1/messages"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert messages["$ref"].endswith("/AnthropicMessages")
    schemas = doc["components"]["schemas"]
    assert schemas["AnthropicMessages"]["required"] == ["model", "max_tokens", "messages"]
    assert schemas["AnthropicCountTokens"]["required"] == ["model", "messages"]
    model = schemas["InferenceBody"]["properties"]["model"]
    assert model["minLength"] == 1
    # No name the router strips to nothing matches (`\x1f` did: ECMA's `\S` is not Python's).
    blank = [chr(c) for c in range(0x3000 + 1) if chr(c).isspace()]
    assert not [c for c in blank if re.search(model["pattern"], c)]
    assert re.search(model["pattern"], " ai/smollm2 ")
    assert paths["/models/{name}"]["get"]["parameters"][0]["schema"]["minLength"] == 1
