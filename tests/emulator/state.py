"""The emulator's shared state: switches, pulled models, runners, the fault, counters and the request log."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.emulator.catalog import Catalog, normalise
from tests.emulator.config import EmulatorConfig
from tests.emulator.faults import Fault
from tests.emulator.runners import Runners

logger = logging.getLogger("tests.emulator")

COUNTERS = (
    "requests",
    "inference_requests",
    "loads_started",
    "loads_completed",
    "loads_aborted",
    "loads_failed",
    "evictions",
    "unloads",
    "pulls",
    "disconnects",
    "faults_applied",
    "streams_completed",
    "streams_aborted",
    "peak_runners",  # the most runners (loaded or loading) held at once: a client must never push it past a limit
)


@dataclass
class RequestRecord:
    """One non-admin request as received, and what became of it."""

    id: int
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    at: float
    status: int | None = None
    finished: bool = False
    disconnected: bool = False
    disconnected_during_load: bool = False
    fault: str | None = None
    cached_tokens: int | None = None  # prompt tokens a chat reused from its slot's prompt cache

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ListenerControl:
    """Closes and re-opens the main listener (the `refuse` fault); provided by EmulatorServer."""

    def __init__(self, close: Callable[[], Awaitable[None]], open_: Callable[[], Awaitable[None]]) -> None:
        self.close = close
        self.open = open_
        self.listening = True


@dataclass
class Emulator:
    config: EmulatorConfig
    catalog: Catalog = field(default_factory=Catalog)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    log: deque[RequestRecord] = field(default_factory=deque)
    fault: Fault = field(default_factory=Fault)
    listener: ListenerControl | None = None
    started_at: float = field(default_factory=time.time)
    runners: Runners = field(init=False)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    fault_timer: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.catalog.set_pulled(self.config.models)
        self.runners = Runners(
            load_time_s=self.load_time_s,
            keep_alive_s=lambda: self.config.keep_alive_s,
            max_runners=lambda: self.config.max_runners,
            counters=self.counters,
            load_error=self.load_error,
            parallel=lambda: self.config.parallel,
        )

    def load_time_s(self, tag: str) -> float:
        per_model = {normalise(k): v for k, v in self.config.model_load_time_ms.items()}
        return per_model.get(tag, self.config.load_time_ms) / 1000.0

    def load_error(self, tag: str) -> str | None:
        if tag in {normalise(m) for m in self.config.fail_models}:
            return (
                f"error waiting for runner to be ready: llama.cpp terminated unexpectedly: failed to load model {tag}"
            )
        return None

    def record(self, record: RequestRecord) -> RequestRecord:
        self.log.append(record)
        # Long benchmarks would grow the log without bound: keep the newest `log_limit` records.
        while len(self.log) > self.config.log_limit:
            self.log.popleft()
        self.counters["requests"] += 1
        return record

    def state_json(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "config": self.config.to_json(),
            "listening": self.listener.listening if self.listener else True,
            "pulled": sorted(self.catalog.models),
            "runners": [
                r.ps_json()
                | {
                    "tag": r.tag,
                    "refs": r.refs,
                    "parallel": r.slots.limit,
                    "generating": r.slots.in_use,
                    "queued": r.slots.waiting,
                }
                for r in self.runners.runners.values()
            ],
            "loaded": sorted(self.runners.loaded_tags()),
            "fault": self.fault.to_json(),
            "counters": dict(self.counters),
        }

    def start_background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run work that outlives its request (a `_configure` preload); kept referenced, cancelled on close."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task failed", exc_info=task.exception())

    async def close(self) -> None:
        pending = [*self.tasks, *([self.fault_timer] if self.fault_timer else [])]
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.runners.close()

    def reset(self) -> None:
        self.log.clear()
        for key in self.counters:
            self.counters[key] = 0
        self.runners.reset()
        self.fault.clear()
