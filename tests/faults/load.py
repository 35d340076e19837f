"""The mixed load every fault runs under: streamed and plain chat completions, and clients that leave mid-answer.

Each client is a loop with its own HTTP session, cycling through the kinds of request. Every request ends as one
`Result`, classified by what its client saw: `ok` (the whole answer), `failed` (no byte of an answer: an error
status, a refused or reset connection, a timeout before the headers), `cut` (an answer had started and broke
off), or `left` (the client went away on purpose, after the first bytes). Times are monotonic, so a test can
count what happened while its fault was on and measure the recovery after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

CHAT = "/engines/v1/chat/completions"
KINDS = ("stream", "plain", "stream", "leave")  # each client's cycle: half streams, a quarter leaves
REQUEST_TIMEOUT_S = 60.0
BACKOFF_S = 0.1  # a client pauses after a failure, as real ones do, rather than spinning on fast errors


@dataclass(frozen=True)
class Result:
    kind: str  # stream, plain, leave
    started: float  # monotonic
    ended: float
    outcome: str  # ok, failed, cut, left
    detail: str  # the status or the error, for the "what clients saw" line


def body(*, stream: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"model": "smollm2", "messages": [{"role": "user", "content": "Say hello"}]}
    if stream:
        out["stream"] = True
    return out


async def _stream(http: aiohttp.ClientSession, url: str, *, leave_after: int | None) -> tuple[str, str]:
    """One streamed chat; (outcome, detail)."""
    events = 0
    try:
        async with http.post(url, json=body(stream=True)) as resp:
            if resp.status != 200:
                return "failed", str(resp.status)
            done = False
            async for raw in resp.content:
                if raw.startswith(b"data: "):
                    events += 1
                    done = raw.strip() == b"data: [DONE]"
                    if leave_after is not None and events >= leave_after:
                        return "left", "200"
            return ("ok", "200") if done else ("cut", "stream ended without [DONE]")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return ("cut" if events else "failed"), type(exc).__name__


async def _plain(http: aiohttp.ClientSession, url: str) -> tuple[str, str]:
    started_body = False
    try:
        async with http.post(url, json=body(stream=False)) as resp:
            if resp.status != 200:
                return "failed", str(resp.status)
            started_body = True
            data = await resp.json()
            return ("ok", "200") if data.get("choices") else ("cut", "an answer without choices")
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        return ("cut" if started_body else "failed"), type(exc).__name__


async def one(http: aiohttp.ClientSession, url: str, kind: str) -> Result:
    started = time.monotonic()
    if kind == "plain":
        outcome, detail = await _plain(http, url)
    else:
        outcome, detail = await _stream(http, url, leave_after=2 if kind == "leave" else None)
    return Result(kind, started, time.monotonic(), outcome, detail)


@dataclass
class Load:
    """`clients` loops sending requests to `base_url` until `stop()`; results collected as they end."""

    base_url: str
    clients: int = 8
    path: str = CHAT
    results: list[Result] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _client(self, index: int) -> None:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            turn = index  # clients start at different points of the cycle: every kind is always in flight
            while not self._stop.is_set():
                result = await one(http, self.base_url + self.path, KINDS[turn % len(KINDS)])
                self.results.append(result)
                turn += 1
                if result.outcome == "failed":
                    await asyncio.sleep(BACKOFF_S)

    def start(self) -> Load:
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]
        return self

    async def stop(self) -> list[Result]:
        """Let every client finish its current request, then return every result."""
        self._stop.set()
        done, pending = await asyncio.wait(self._tasks, timeout=REQUEST_TIMEOUT_S + 10)
        for task in pending:
            task.cancel()
        for task in done:
            task.result()  # a bug in the driver itself must fail the test, not vanish
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)
        return self.results

    def oks_since(self, moment: float) -> int:
        return sum(1 for r in self.results if r.outcome == "ok" and r.started >= moment)

    def __iter__(self) -> Iterator[Result]:
        return iter(self.results)


@dataclass(frozen=True)
class Figures:
    """What a fault cost, from the results of the requests that overlapped it."""

    requests: int
    lost_before_streaming: int
    streams_cut: int
    left: int
    recovery_s: float | None
    saw: str

    @classmethod
    def of(cls, results: list[Result], fault_start: float, fault_end: float) -> Figures:
        """`requests` counts those in flight while the fault was on; recovery runs from the fault's end to the
        end of the first good answer begun after the last bad one (None when nothing went wrong)."""
        during = [r for r in results if r.ended >= fault_start and r.started <= fault_end]
        bad = [r for r in results if r.outcome in ("failed", "cut") and r.ended >= fault_start]
        recovery: float | None = None
        if bad:
            after = max(fault_end, max(r.ended for r in bad))
            good = [r.ended for r in results if r.outcome == "ok" and r.started >= after]
            recovery = round(max(0.0, min(good) - fault_end), 2) if good else float("inf")
        return cls(
            requests=len(during),
            lost_before_streaming=sum(1 for r in bad if r.outcome == "failed"),
            streams_cut=sum(1 for r in bad if r.outcome == "cut"),
            left=sum(1 for r in during if r.outcome == "left"),
            recovery_s=recovery,
            saw=_saw(during + [r for r in bad if r not in during]),
        )


def _saw(results: list[Result]) -> str:
    """One line: how many answers of each kind, and the errors by name."""
    outcomes = Counter(r.outcome for r in results)
    errors = Counter(r.detail for r in results if r.outcome in ("failed", "cut"))
    line = ", ".join(f"{outcomes[o]} {o}" for o in ("ok", "left", "failed", "cut") if outcomes[o])
    if errors:
        line += " (" + ", ".join(f"{n}x {what}" for what, n in errors.most_common()) + ")"
    return line or "no requests"
