"""Runners: lazy loading, in-use counting, keep-alive eviction and the max-runners limit, as DMR's loader does.

A runner is keyed by (backend, model tag, mode). The first request for a key starts a load that takes
`load_time_ms`; concurrent requests wait on the same load. If every waiter goes away during the load, the load
is aborted and the model is not marked loaded (DMR terminates the runner when the request context ends).
Inside a loaded runner, requests generate one at a time unless the runner was started with more slots
(`--parallel N` in the model's `_configure` runtime-flags, else the emulator's `parallel` switch): see slots.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.emulator.promptcache import PromptCache
from tests.emulator.slots import Slots

Key = tuple[str, str, str]  # backend, model tag, mode


class LoadAborted(Exception):
    """The load this request waited on was aborted (every other waiter went away, or an unload)."""


class LoadFailed(Exception):
    """The runner could not start (the `fail_models` switch: llama.cpp exits during the load)."""


def go_duration(seconds: float) -> str:
    """Format like Go's time.Duration.String(): 600 -> `10m0s`, 90.5 -> `1m30.5s`."""
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    rest = abs(seconds)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    sec_text = f"{secs:.9f}".rstrip("0").rstrip(".")
    out = ""
    if hours:
        out += f"{int(hours)}h"
    if hours or minutes:
        out += f"{int(minutes)}m"
    return f"{sign}{out}{sec_text}s"


def go_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Runner:
    key: Key
    model_name: str  # the name the first request used, as DMR shows it
    keep_alive_s: float | None  # set by _configure; None = the global default
    slots: Slots  # generation slots, fixed when the runner starts (llama.cpp's --parallel)
    prompt_cache: PromptCache  # one cached prompt per slot (llama.cpp's cache_prompt)
    loading: bool = True
    refs: int = 0
    last_used: float = field(default_factory=time.time)
    load_task: asyncio.Task[None] | None = None
    ready: asyncio.Future[None] | None = None
    expiry: asyncio.TimerHandle | None = None
    requests: int = 0
    prompt_tokens: int = 0
    predicted_tokens: int = 0

    @property
    def backend(self) -> str:
        return self.key[0]

    @property
    def tag(self) -> str:
        return self.key[1]

    @property
    def mode(self) -> str:
        return self.key[2]

    def ps_json(self) -> dict[str, Any]:
        """One `GET /engines/ps` entry; false/empty fields omitted as DMR's `omitempty` does."""
        out: dict[str, Any] = {
            "backend_name": self.backend,
            "model_name": self.model_name,
            "mode": self.mode,
            "last_used": go_time(self.last_used),
        }
        if self.refs > 0 and not self.loading:
            out["in_use"] = True
        if self.loading:
            out["loading"] = True
        if self.keep_alive_s is not None:
            out["keep_alive"] = "-1" if self.keep_alive_s < 0 else go_duration(self.keep_alive_s)
        return out


class Runners:
    """The loaded and loading runners, with their limits; all methods run on the event loop."""

    def __init__(
        self,
        *,
        load_time_s: Callable[[str], float],
        keep_alive_s: Callable[[], float],
        max_runners: Callable[[], int],
        counters: dict[str, int],
        load_error: Callable[[str], str | None] = lambda tag: None,
        parallel: Callable[[], int] = lambda: 1,
    ) -> None:
        self._load_error = load_error
        self._parallel = parallel
        self._load_time_s = load_time_s
        self._keep_alive_s = keep_alive_s
        self._max_runners = max_runners
        self._counters = counters
        self.runners: dict[Key, Runner] = {}
        self.keep_alive_by_tag: dict[str, float] = {}
        # `--parallel` from a `_configure` of this runner key; read when the runner starts.
        self.parallel_by_key: dict[Key, int] = {}
        self._changed = asyncio.Event()

    def busy(self, tag: str) -> bool:
        return any(r.tag == tag and (r.refs > 0 or r.loading) for r in self.runners.values())

    def loaded_tags(self) -> set[str]:
        return {r.tag for r in self.runners.values() if not r.loading}

    async def acquire(self, key: Key, model_name: str, on_loading: Callable[[], None] | None = None) -> Runner:
        """Get a loaded runner for `key`, loading it (and evicting an idle one) when needed.

        Raises LoadAborted when the load it waited on was aborted. Cancellation (client gone) releases the
        reference; if nobody else waits on the load, the load is aborted.
        """
        runner = self.runners.get(key)
        if runner is None:
            runner = await self._new_runner(key, model_name)
        runner.refs += 1
        self._cancel_expiry(runner)
        try:
            if runner.loading:
                if on_loading is not None:
                    on_loading()
                assert runner.ready is not None
                await asyncio.shield(runner.ready)
        except asyncio.CancelledError:
            self._drop_ref_during_load(runner)
            raise
        except (LoadAborted, LoadFailed):
            runner.refs -= 1
            raise
        runner.last_used = time.time()
        return runner

    async def release(self, runner: Runner) -> None:
        runner.refs -= 1
        runner.last_used = time.time()
        if runner.refs == 0 and self.runners.get(runner.key) is runner:
            self._schedule_expiry(runner)
        self._notify()

    async def preload(self, key: Key, model_name: str) -> None:
        """Load without a request (`_configure`, old DMR's 503 mode); the runner is idle once loaded."""
        with contextlib.suppress(LoadAborted, LoadFailed):
            runner = await self.acquire(key, model_name)
            await self.release(runner)

    def loaded(self, key: Key) -> bool:
        runner = self.runners.get(key)
        return runner is not None and not runner.loading

    def unload(self, *, all_: bool, tags: set[str], backend: str | None = None) -> int:
        """Unload idle runners matching; busy ones stay. Returns how many were unloaded."""
        count = 0
        for runner in list(self.runners.values()):
            if not (all_ or runner.tag in tags):
                continue
            if backend and runner.backend != backend:
                continue
            if runner.refs > 0:
                continue
            if runner.loading:
                self._abort_load(runner)
            else:
                self._remove(runner)
            self._counters["unloads"] += 1
            count += 1
        return count

    async def close(self) -> None:
        for runner in list(self.runners.values()):
            self._cancel_expiry(runner)
            if runner.loading:
                self._abort_load(runner, count=False)
            if runner.load_task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await runner.load_task
        self.runners.clear()

    def reset(self) -> None:
        """Forget every runner (admin reset); loads in flight are aborted."""
        for runner in list(self.runners.values()):
            self._cancel_expiry(runner)
            if runner.loading:
                self._abort_load(runner, count=False)
        self.runners.clear()
        self.keep_alive_by_tag.clear()
        self.parallel_by_key.clear()

    # internals

    async def _new_runner(self, key: Key, model_name: str) -> Runner:
        while key not in self.runners and len(self.runners) >= self._max_runners():
            idle = [r for r in self.runners.values() if r.refs == 0 and not r.loading]
            if idle:
                victim = min(idle, key=lambda r: r.last_used)
                self._remove(victim)
                self._counters["evictions"] += 1
                break
            # Every runner is busy: DMR blocks the request until one frees up.
            await self._changed.wait()
        existing = self.runners.get(key)
        if existing is not None:
            return existing
        slots = Slots(self.parallel_by_key.get(key, self._parallel()))
        runner = Runner(key, model_name, self.keep_alive_by_tag.get(key[1]), slots, PromptCache(slots.limit))
        runner.ready = asyncio.get_running_loop().create_future()
        runner.load_task = asyncio.create_task(self._load(runner), name=f"load {key}")
        self.runners[key] = runner
        self._counters["loads_started"] += 1
        self._counters["peak_runners"] = max(self._counters.get("peak_runners", 0), len(self.runners))
        return runner

    async def _load(self, runner: Runner) -> None:
        await asyncio.sleep(self._load_time_s(runner.tag))
        error = self._load_error(runner.tag)
        if error is not None:
            self._counters["loads_failed"] += 1
            if self.runners.get(runner.key) is runner:
                del self.runners[runner.key]
            if runner.ready is not None and not runner.ready.done():
                runner.ready.set_exception(LoadFailed(error))
                runner.ready.exception()  # mark retrieved: waiters may all be gone
            self._notify()
            return
        runner.loading = False
        runner.last_used = time.time()
        self._counters["loads_completed"] += 1
        if runner.ready is not None and not runner.ready.done():
            runner.ready.set_result(None)

    def _drop_ref_during_load(self, runner: Runner) -> None:
        runner.refs -= 1
        if runner.loading and runner.refs == 0:
            self._abort_load(runner)
        elif runner.refs == 0:
            self._schedule_expiry(runner)

    def _abort_load(self, runner: Runner, *, count: bool = True) -> None:
        if runner.load_task is not None and not runner.load_task.done():
            runner.load_task.cancel()
        if runner.ready is not None and not runner.ready.done():
            runner.ready.set_exception(LoadAborted(f"runner for {runner.tag} terminated during load"))
            runner.ready.exception()  # mark retrieved: waiters may all be gone
        if self.runners.get(runner.key) is runner:
            del self.runners[runner.key]
        if count:
            self._counters["loads_aborted"] += 1
        self._notify()

    def _remove(self, runner: Runner) -> None:
        self._cancel_expiry(runner)
        if self.runners.get(runner.key) is runner:
            del self.runners[runner.key]
        self._notify()

    def _schedule_expiry(self, runner: Runner) -> None:
        self._cancel_expiry(runner)
        keep = runner.keep_alive_s if runner.keep_alive_s is not None else self._keep_alive_s()
        if keep < 0:
            return
        loop = asyncio.get_running_loop()
        runner.expiry = loop.call_later(max(keep, 0.0), self._expire, runner)

    def _expire(self, runner: Runner) -> None:
        runner.expiry = None
        if runner.refs == 0 and not runner.loading and self.runners.get(runner.key) is runner:
            self._remove(runner)
            self._counters["evictions"] += 1

    def _cancel_expiry(self, runner: Runner) -> None:
        if runner.expiry is not None:
            runner.expiry.cancel()
            runner.expiry = None

    def _notify(self) -> None:
        # A broadcast: waiters hold the event they saw; set it and install a fresh one for the next wait.
        self._changed.set()
        self._changed = asyncio.Event()
