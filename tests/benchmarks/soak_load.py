"""The soak's mixed load: clients that loop over OpenAI and Anthropic calls, streamed and not, and clients that
hang up mid-stream, recording every call's outcome with its time (the report decides which fell in a fault).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

import aiohttp

CALL_TIMEOUT_S = 30.0  # a call unanswered by then counts as a failure (a hang)
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
KINDS = ("openai", "openai-stream", "anthropic", "anthropic-stream", "disconnect")


@dataclass(frozen=True, slots=True)
class Call:
    kind: str
    start_s: float  # monotonic
    end_s: float
    ok: bool
    detail: str  # the status or the error, for the report's list of failures


def _chat(stream: bool) -> dict[str, object]:
    return {"model": "smollm2", "messages": [{"role": "user", "content": "Say hello"}], "stream": stream}


def _message(stream: bool) -> dict[str, object]:
    return {
        "model": "smollm2",
        "max_tokens": 32,
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": stream,
    }


async def _stream_ends(resp: aiohttp.ClientResponse, marker: bytes) -> bool:
    """True when the SSE body arrived whole: its end marker was seen and the body closed cleanly."""
    seen = False
    async for line in resp.content:
        seen = seen or marker in line
    return seen


async def _one(http: aiohttp.ClientSession, base: str, kind: str) -> tuple[bool, str]:
    if kind == "disconnect":
        # A client that reads the first bytes of a stream and hangs up: the router must drop the upstream
        # call and keep no socket, task or buffer of it (the fds and RSS samples show whether it does).
        async with http.post(f"{base}/v1/chat/completions", json=_chat(True)) as resp:
            if resp.status != 200:
                return False, f"status {resp.status}"
            await resp.content.readline()
            resp.close()
        return True, "hung up"
    if kind.startswith("openai"):
        stream = kind.endswith("stream")
        async with http.post(f"{base}/v1/chat/completions", json=_chat(stream)) as resp:
            if resp.status != 200:
                return False, f"status {resp.status}"
            if stream:
                return (True, "200") if await _stream_ends(resp, b"[DONE]") else (False, "stream cut")
            body = await resp.json()
            return (True, "200") if body.get("choices") else (False, "no choices")
    stream = kind.endswith("stream")
    async with http.post(f"{base}/v1/messages", json=_message(stream), headers=ANTHROPIC_HEADERS) as resp:
        if resp.status != 200:
            return False, f"status {resp.status}"
        if stream:
            return (True, "200") if await _stream_ends(resp, b"message_stop") else (False, "stream cut")
        body = await resp.json()
        return (True, "200") if body.get("type") == "message" else (False, "not a message")


async def _client(http: aiohttp.ClientSession, base: str, offset: int, until_s: float, calls: list[Call]) -> None:
    for kind in itertools.islice(itertools.cycle(KINDS), offset, None):
        if time.monotonic() >= until_s:
            return
        start = time.monotonic()
        try:
            ok, detail = await asyncio.wait_for(_one(http, base, kind), CALL_TIMEOUT_S)
        except TimeoutError:
            ok, detail = False, f"no answer in {CALL_TIMEOUT_S:.0f} s"
        except (aiohttp.ClientError, ValueError) as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"[:160]
        calls.append(Call(kind, start, time.monotonic(), ok, detail))


async def run_load(base: str, clients: int, until_s: float, calls: list[Call]) -> None:
    """Run `clients` looping clients against the router at `base` until the monotonic time `until_s`."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    connector = aiohttp.TCPConnector(limit=clients * 2)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        await asyncio.gather(*(_client(http, base, i, until_s, calls) for i in range(clients)))
