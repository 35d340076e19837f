"""The prompt cache of each runner slot: the next turn of a conversation reuses what its slot processed, and
prefill time is proportional to the tokens that were not cached (`--prefill-ms-per-token`)."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from tests.emulator.promptcache import PromptCache, prompt_tokens, reply_tokens
from tests.emulator_tests.conftest import StartEmulator

LONG_SYSTEM = "You are a careful assistant. " * 100  # ~500 words: prefill that costs time when not cached


def turn(history: list[dict[str, str]], user: str) -> list[dict[str, str]]:
    return [*history, {"role": "user", "content": user}]


async def chat(http: aiohttp.ClientSession, url: str, messages: list[dict[str, str]]) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    body = {"model": "ai/smollm2", "messages": messages}
    async with http.post(f"{url}/engines/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
    return data, time.monotonic() - started


def test_slot_selection_prefers_the_longest_cached_prefix_and_reports_what_it_reused() -> None:
    cache = PromptCache(2)
    a = prompt_tokens([{"role": "user", "content": "one two three"}])
    slot_a, cached = cache.take(a)
    assert cached == 0
    cache.put(slot_a, a + reply_tokens("four"))
    b = prompt_tokens([{"role": "user", "content": "other words"}])
    slot_b, cached = cache.take(b)
    assert slot_b != slot_a  # no slot holds enough of it: the least recently used one, not a's
    assert cached == 0
    cache.put(slot_b, b)
    # The conversation's next turn: the whole previous exchange is its prefix, on its own slot.
    a2 = prompt_tokens(
        [
            {"role": "user", "content": "one two three"},
            {"role": "assistant", "content": "four"},
            {"role": "user", "content": "five"},
        ]
    )
    slot, cached = cache.take(a2)
    assert slot == slot_a
    assert cached == len(a) + len(reply_tokens("four"))
    # A busy slot is not taken: the same prompt again gets the other slot, which shares only the role token.
    other, cached_other = cache.take(a2)
    assert other == slot_b
    assert cached_other == 1


async def test_the_next_turn_on_the_same_emulator_prefills_only_its_new_tokens(
    start_emulator: StartEmulator, http: aiohttp.ClientSession
) -> None:
    emu = await start_emulator(prefill_ms_per_token=2.0, chunks=2)
    first = turn([{"role": "system", "content": LONG_SYSTEM}], "Say hello")
    await chat(http, emu.url, [{"role": "user", "content": "load the model"}])  # the load is not prefill
    reply, cold_s = await chat(http, emu.url, first)
    assert reply["timings"]["cache_n"] == 0
    assert reply["timings"]["prompt_n"] >= 500
    answer = reply["choices"][0]["message"]["content"]
    second = turn([*first, {"role": "assistant", "content": answer}], "And again")
    reply2, warm_s = await chat(http, emu.url, second)
    assert reply2["timings"]["cache_n"] == len(prompt_tokens(first)) + len(reply_tokens(answer))
    assert reply2["timings"]["prompt_n"] == len(prompt_tokens(second)) - reply2["timings"]["cache_n"]
    # ~500 tokens at 2 ms is >= 1 s cold; the warm turn prefills a handful of tokens.
    assert cold_s >= 1.0
    assert warm_s < cold_s / 3
    assert emu.emulator.log[-1].cached_tokens == reply2["timings"]["cache_n"]  # the request log says so too
