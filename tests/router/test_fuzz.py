"""Property tests (Hypothesis) over paths, methods, headers and bodies, on every route family, against two real
routers: one with defaults, one with everything of the gate on (client keys, rate and concurrency limits,
input limits, a trusted proxy). Properties: never a 500, never a hang (each answer within a deadline), every
error is JSON, the router never dies, and /openapi.json describes the routes served.

`FUZZ_EXAMPLES` (default 150 per router) scales the run; the number of inputs tried is printed.
"""

from __future__ import annotations

import http.client
import json
import os
import string
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.router.access import Family, family_of
from tests.harness import Proc, ProcessFactory, RedisServer
from tests.reliability import Inputs, record_inputs
from tests.router.support import EmuSpec, Stack, build_stack, start_router

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
ANSWER_DEADLINE_S = 15.0  # a request unanswered by then is a hang
KEY = "sk-pier-fuzz-0123456789abcdef"
TRIED = {"open": 0, "gated": 0}
BY_FAMILY: Counter[str] = Counter()  # inputs per route family (the path's), for docs/reliability.md
PROPERTIES = "no 500, an answer within 15 s, errors JSON objects, the router alive at the end (open and gated)"

PREFIXES = [
    "/v1/",
    "/engines/v1/",
    "/engines/llama.cpp/v1/",
    "/engines/unknown/v1/",
    "/olla/dmr/v1/",
    "/olla/dmr/engines/v1/",
    "/olla/",
    "/anthropic/v1/",
    "/olla/anthropic/v1/",
    "/internal/",
    "/internal/status/",
    "/models/",
    "/engines/",
    "/api/",
    "/",
]
SEGMENTS = [
    "chat",
    "completions",
    "embeddings",
    "responses",
    "messages",
    "count_tokens",
    "models",
    "ps",
    "status",
    "health",
    "endpoints",
    "create",
    "ai",
    "smollm2",
    "smollm2:latest",
    "..",
    ".",
    "%2F",
    "%2e%2e",
    "%00",
    "%",
    "%zz",
    "",
]
URL_CHARS = string.ascii_letters + string.digits + "-._~:@!$&'()*+,;=%"
HEADER_NAMES = [
    "Authorization",
    "x-api-key",
    "X-Forwarded-For",
    "Forwarded",
    "X-Forwarded-Host",
    "Content-Type",
    "Content-Encoding",
    "anthropic-version",
    "X-Request-ID",
    "Accept",
    "Accept-Encoding",
    "Origin",
    "Cookie",
    "Connection",
    "Expect",
    "Upgrade",
    "Range",
]
HEADER_VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_value = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
chat_like = st.fixed_dictionaries(
    {"model": st.sampled_from(["ai/smollm2", "smollm2", "ai/unknown", "", "x" * 300]) | json_leaf},
    optional={
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "assistant", "system", "tool", "x"])},
                optional={"content": json_value},
            ),
            max_size=4,
        )
        | json_value,
        "stream": st.booleans() | json_leaf,
        "max_tokens": st.integers(-5, 50) | json_leaf,
        "input": json_value,
        "system": json_value,
        "tools": json_value,
    },
)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=200),
    json_value.map(lambda v: json.dumps(v).encode()),
    chat_like.map(lambda v: json.dumps(v).encode()),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes | None]:
    prefix = draw(st.sampled_from(PREFIXES))
    segments = draw(st.lists(st.sampled_from(SEGMENTS) | st.text(alphabet=URL_CHARS, max_size=12), max_size=4))
    path = prefix + "/".join(segments)
    if draw(st.booleans()):
        path += "?" + draw(st.text(alphabet=URL_CHARS + "/?", max_size=30))
    method = draw(st.sampled_from(["GET", "POST", "POST", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
    headers = draw(st.dictionaries(st.sampled_from(HEADER_NAMES), HEADER_VALUE, max_size=5))
    return method, path, headers, draw(bodies)


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
        PIER_API_KEYS=f'[{{"name": "fuzz", "key": "{KEY}", "models": ["ai/smollm2*"]}}]',
        PIER_RATE_LIMIT_PER_S="500",
        PIER_RATE_LIMIT_GLOBAL_PER_S="1000",
        PIER_MAX_CONCURRENT_PER_CLIENT="4",
        PIER_MAX_JSON_DEPTH="8",
        PIER_MAX_MESSAGES="3",
        PIER_MAX_STRING_CHARS="100",
        PIER_TRUSTED_PROXIES="127.0.0.1",
        PIER_MAX_BODY_BYTES="4096",
    )


def send(port: int, method: str, path: str, headers: dict[str, str], body: bytes | None) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_DEADLINE_S)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


def check_answer(proc: Proc, method: str, path: str, headers: dict[str, str], body: bytes | None) -> None:
    assert proc.port is not None
    BY_FAMILY[family_of(path.split("?", 1)[0]).value] += 1
    try:
        status, content_type, payload = send(proc.port, method, path, headers, body)
    except TimeoutError:
        pytest.fail(f"no answer in {ANSWER_DEADLINE_S}s: {method} {path} {headers}")
    assert status != 500, payload[:500]
    if status >= 400 and method != "HEAD":
        assert content_type.startswith("application/json"), (status, content_type, payload[:200])
        assert isinstance(json.loads(payload), dict)


FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


@FUZZ
@given(request=requests())
def test_open_router_never_500s_or_hangs(stack: Stack, request: tuple[str, str, dict[str, str], bytes | None]) -> None:
    TRIED["open"] += 1
    check_answer(stack.router, *request)


@FUZZ
@given(request=requests(), with_key=st.booleans())
def test_gated_router_never_500s_or_hangs(
    gated: Proc, request: tuple[str, str, dict[str, str], bytes | None], with_key: bool
) -> None:
    TRIED["gated"] += 1
    method, path, headers, body = request
    if with_key:
        headers = {**headers, "Authorization": f"Bearer {KEY}"}
    check_answer(gated, method, path, headers, body)


def test_both_routers_survived_and_report_inputs(stack: Stack, gated: Proc) -> None:
    assert stack.router.alive()
    assert gated.alive()
    print(f"fuzz: {TRIED['open']} inputs on the open router, {TRIED['gated']} on the gated one: {dict(BY_FAMILY)}")
    for proc in (stack.router, gated):
        assert "Traceback" not in proc.output()
    # Every family was reached (the path prefixes cover them all), and its inputs go to docs/reliability.md.
    assert set(BY_FAMILY) == {f.value for f in Family}, BY_FAMILY
    for family in Family:
        record_inputs(Inputs("hypothesis", family.value, BY_FAMILY[family.value], PROPERTIES))


def test_openapi_describes_every_family(stack: Stack) -> None:
    with urllib.request.urlopen(f"{stack.url}/openapi.json", timeout=10) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for path in (
        "/v1/chat/completions",
        "/engines/v1/chat/completions",
        "/engines/{engine}/v1/chat/completions",
        "/v1/messages",
        "/anthropic/v1/messages/count_tokens",
        "/olla/models",
        "/internal/status",
        "/models/{name}",
        "/openapi.json",
    ):
        assert path in paths, path
    chat = paths["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/InferenceBody"
    anthropic_errors = paths["/v1/messages"]["post"]["responses"]["4XX"]["content"]["application/json"]["schema"]
    assert anthropic_errors["$ref"].endswith("AnthropicError")
    # Every path listed is served: a GET on each GET path without parameters answers something but 404/405.
    for path, operations in paths.items():
        if "get" in operations and "{" not in path:
            if path == "/internal/metrics":
                # The one route a setting switches off says which setting (PIER_PROMETHEUS_METRICS is off here).
                with pytest.raises(urllib.error.HTTPError) as off:
                    urllib.request.urlopen(f"{stack.url}{path}", timeout=10)
                assert off.value.code == 404
                assert "PIER_PROMETHEUS_METRICS" in off.value.read().decode()
                continue
            with urllib.request.urlopen(f"{stack.url}{path}", timeout=10) as resp:
                assert resp.status == 200, path
