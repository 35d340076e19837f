"""llama.cpp's prompt cache, one per generation slot of a runner (`cache_prompt`, on by default).

Each slot keeps the tokens it processed last (the prompt and what it generated). A new request takes the idle
slot whose cache shares the longest prefix with its prompt (llama.cpp's slot selection by prompt similarity)
and only the tokens past that prefix are processed again: prefill time is proportional to the tokens not
already cached. That is what makes conversation affinity worth having: turn N+1 of a conversation on the
endpoint (and slot) that served turn N costs only its new tokens.

Tokens here are words of the messages as "role: content" lines: not llama.cpp's tokenizer, but a prefix of a
conversation is a prefix of its words, which is all the cache needs.
"""

from __future__ import annotations

from typing import Any

Tokens = tuple[str, ...]
SIMILARITY = 0.5  # llama.cpp's default --slot-prompt-similarity: the share of the prompt a slot must hold


def prompt_tokens(messages: Any) -> Tokens:
    """The chat's tokens, in order: each message's role, then the words of its text content."""
    if isinstance(messages, str):
        return tuple(messages.split())
    out: list[str] = []
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            out.append(f"{message.get('role')}:")
            body = message.get("content")
            if isinstance(body, list):  # content parts: their text
                body = " ".join(str(p.get("text", "")) for p in body if isinstance(p, dict))
            if isinstance(body, str):
                out.extend(body.split())
    return tuple(out)


def reply_tokens(text: str) -> Tokens:
    """What the slot holds after generating `text`: the reply as the next turn will send it back."""
    return ("assistant:", *text.split())


def _common(a: Tokens, b: Tokens) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PromptCache:
    """The caches of one runner's `slots` slots. Runs on the event loop (no locks)."""

    def __init__(self, slots: int) -> None:
        self._cached: list[Tokens] = [() for _ in range(slots)]
        self._used = [0] * slots  # when each slot was last taken (a counter): the LRU slot goes to a newcomer
        self._clock = 0
        self._busy: set[int] = set()
        self.hits_tokens = 0  # prompt tokens served from cache, over all requests
        self.prompt_tokens = 0

    def take(self, tokens: Tokens) -> tuple[int, int]:
        """(slot, cached tokens) for a request about to prefill `tokens`: the idle slot with the longest match."""
        best, best_n = -1, 0
        for index, held in enumerate(self._cached):
            if index in self._busy:
                continue
            n = _common(held, tokens)
            # The longest match that covers enough of the prompt (llama.cpp's --slot-prompt-similarity)...
            if n > best_n and n > SIMILARITY * len(tokens):
                best, best_n = index, n
        if best < 0:  # ...else the least recently used idle slot: another conversation's cache goes last
            idle = [i for i in range(len(self._cached)) if i not in self._busy]
            if not idle:  # more requests than slots (cannot happen under the Slots limit): no cache
                return -1, 0
            best = min(idle, key=self._used.__getitem__)
            best_n = _common(self._cached[best], tokens)
        self._busy.add(best)
        self._clock += 1
        self._used[best] = self._clock
        # A whole-prompt match still processes the last token (llama.cpp re-evaluates it to get logits).
        cached = min(best_n, max(0, len(tokens) - 1))
        self.hits_tokens += cached
        self.prompt_tokens += len(tokens)
        return best, cached

    def put(self, slot: int, tokens: Tokens) -> None:
        """The slot is free again and holds `tokens` (the prompt and the reply)."""
        if slot < 0:
            return
        self._cached[slot] = tokens
        self._busy.discard(slot)
