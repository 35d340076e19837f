"""Conversation affinity through real processes: three emulators in one tier, the health worker, and two router
replicas on one Redis. Clients are the official openai and anthropic SDKs; each turn's endpoint is read from the
answer's X-Pier-Endpoint header."""

from __future__ import annotations

import functools
import uuid
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from services.router.sessions import Source, digest
from tests.harness import Proc, ProcessFactory, RedisServer, wait_for_sync
from tests.router.support import (
    MODEL,
    EmuSpec,
    Stack,
    build_stack,
    endpoints_status,
    get_json,
    start_router,
    wait_routable_sync,
)

NAMES = ("e1", "e2", "e3")


@pytest.fixture(scope="module")
def stack(module_procs: ProcessFactory, module_dir: Path, module_redis: RedisServer) -> Stack:
    specs = [EmuSpec(name, 100, ("--parallel", "4", "--load-time-ms", "0")) for name in NAMES]
    built = build_stack(module_procs, module_dir, module_redis.url, specs)
    # The model loaded everywhere (as the warm-up worker keeps it): warm-first then leaves all three to choose.
    for name in NAMES:
        with openai.OpenAI(base_url=f"{built.emu(name).url}/engines/v1", api_key="x", max_retries=0) as sdk:
            sdk.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "load"}])
    wait_routable_sync(built.url, list(NAMES), loaded=True)
    second = start_router(module_procs, module_redis.url, built.config)
    wait_routable_sync(second.url, list(NAMES), loaded=True)
    built.extra["second"] = second
    return built


def replicas(stack: Stack) -> tuple[Proc, Proc]:
    second = stack.extra["second"]
    assert isinstance(second, Proc)
    return stack.router, second


def openai_turn(router: Proc, messages: list[dict[str, Any]], **extra: Any) -> tuple[str, str, str]:
    """(endpoint, X-Pier-Route, the reply's text) of one chat turn."""
    with openai.OpenAI(base_url=f"{router.url}/v1", api_key="not-forwarded", max_retries=0, timeout=30) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(model="smollm2", messages=messages, **extra)  # type: ignore[arg-type]
        text = raw.parse().choices[0].message.content or ""
        return raw.headers["X-Pier-Endpoint"], raw.headers["X-Pier-Route"], text


def conversation(stack: Stack, system: str, turns: int, **extra: Any) -> list[tuple[str, str]]:
    """A conversation of `turns` turns with growing context, alternating between the two router replicas."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    seen: list[tuple[str, str]] = []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Question {turn} of {system}"})
        endpoint, route, text = openai_turn(replicas(stack)[turn % 2], messages, **extra)
        seen.append((endpoint, route))
        messages.append({"role": "assistant", "content": text})
    return seen


def test_every_turn_of_an_openai_conversation_lands_on_one_endpoint_across_replicas(stack: Stack) -> None:
    homes = set()
    for i in range(8):
        seen = conversation(stack, f"You are assistant number {i}.", turns=5)
        assert len({endpoint for endpoint, _ in seen}) == 1, seen
        assert all(route.endswith(";affinity=hit") for _, route in seen), seen
        homes.add(seen[0][0])
    assert len(homes) >= 2  # conversations spread over the tier (8 prefixes over 3 endpoints)


def test_an_agent_session_header_pins_its_turns_and_beats_the_prefix(stack: Stack) -> None:
    session = str(uuid.uuid4())
    headers = {"X-Claude-Code-Session-Id": session}
    ends = {
        openai_turn(
            replicas(stack)[i % 2], [{"role": "user", "content": f"unrelated prompt {i}"}], extra_headers=headers
        )[0]
        for i in range(6)
    }
    assert len(ends) == 1  # six different prompts, one session: one endpoint


def test_every_turn_of_an_anthropic_conversation_lands_on_one_endpoint_across_replicas(stack: Stack) -> None:
    for i in range(4):
        messages: list[dict[str, Any]] = []
        endpoints = set()
        for turn in range(4):
            messages.append({"role": "user", "content": f"Turn {turn}"})
            router = replicas(stack)[turn % 2]
            with anthropic.Anthropic(base_url=router.url, api_key="not-forwarded", max_retries=0, timeout=30) as sdk:
                raw = sdk.messages.with_raw_response.create(
                    model="smollm2",
                    max_tokens=32,
                    system=f"Anthropic persona {i}",
                    messages=messages,  # type: ignore[arg-type]
                )
            endpoints.add(raw.headers["X-Pier-Endpoint"])
            assert raw.headers["X-Pier-Route"].endswith(";affinity=hit")
            reply = raw.parse()
            messages.append({"role": "assistant", "content": reply.content[0].text})  # type: ignore[union-attr]
        assert len(endpoints) == 1


def test_no_key_material_in_logs_or_status_routes(stack: Stack) -> None:
    secret = "very-secret-session-" + uuid.uuid4().hex
    for router in replicas(stack):
        openai_turn(router, [{"role": "user", "content": "hi"}], extra_headers={"X-Pier-Session-ID": secret})
    hashed = digest(MODEL, Source.HEADER, secret)
    texts = [stack.router.output(), replicas(stack)[1].output()]
    if stack.health is not None:
        texts.append(stack.health.output())
    for router in replicas(stack):
        for path in ("/internal/status", "/internal/status/endpoints", "/internal/status/models"):
            texts.append(str(get_json(router.url + path)))
    for text in texts:
        assert secret not in text
        assert hashed not in text


def test_sessions_move_only_when_their_endpoint_leaves_then_stay(stack: Stack) -> None:
    sessions = [f"session-{i}" for i in range(12)]

    def homes() -> dict[str, str]:
        return {
            s: openai_turn(stack.router, [{"role": "user", "content": "hi"}], extra_headers={"X-Pier-Session-ID": s})[0]
            for s in sessions
        }

    before = homes()
    leaving = before[sessions[0]]
    stack.emu(leaving).proc.kill()  # the module's last test: the other tests need all three
    remaining = [n for n in NAMES if n != leaving]
    for router in replicas(stack):
        # Until the health worker has seen it gone, a request there would fail over; wait for the tables.
        wait_for_sync(functools.partial(gone, router, leaving), timeout_s=30, what=f"{leaving} unroutable")

    # A health flap on this loaded machine (an endpoint reported busy for a probe) may briefly route a session
    # to the other healthy one: affinity never beats health. So each check is waited for, with a deadline.
    def moved_only_the_leavers() -> dict[str, str] | None:
        now = homes()
        ok = all((now[s] in remaining) if before[s] == leaving else (now[s] == before[s]) for s in sessions)
        return now if ok else None

    after = wait_for_sync(moved_only_the_leavers, timeout_s=30, what="only the leaving endpoint's sessions moved")
    assert {s for s in sessions if after[s] != before[s]} == {s for s in sessions if before[s] == leaving}
    wait_for_sync(lambda: homes() == after, timeout_s=30, what="the moved sessions to stay where they went")


def gone(router: Proc, name: str) -> bool:
    return not endpoints_status(router.url)[name]["routable"]
