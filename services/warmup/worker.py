"""The warm-up worker: keeps the wanted models loaded, driven by the event stream, one leader at a time.

Every instance beats a heartbeat; the one holding `keys.WARMUP_LEASE` leads. Leading: read the endpoint
states once, then follow the event stream. An endpoint is planned again (`plan.plan_endpoint`, with a fresh
`/engines/ps`) at start, when it becomes routable, when its loaded or listed models change, when a `keep`
model's refresh or a failed model's retry falls due, and on a slow full resync (`PIER_WARMUP_INTERVAL_S`).
Each endpoint has at most one reconcile task, doing one step at a time, so its runner limit holds.
Warm state per (endpoint, model) goes to Redis, and every change of it is a `warm_changed` event.
On SIGTERM a preload in flight may finish for `PIER_WARMUP_DRAIN_S`: DMR aborts a load whose client leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from opentelemetry import metrics, trace
from opentelemetry.trace import Status, StatusCode
from redis.exceptions import RedisError

from services.warmup import calls
from services.warmup.calls import CallError, Method, Target
from services.warmup.plan import RECHECK_S, EndpointPlan, Knobs, Memory, Report, Step, StepKind, plan_endpoint
from services.warmup.settings import WarmupSettings
from services.warmup.wanted import WarmupConfig
from shared import keys, statestore
from shared.config import PierConfig
from shared.lease import Lease
from shared.liveness import record_instance_id
from shared.state import EndpointState, Event, EventKind, WarmPhase, WarmState
from shared.statestore import RedisClient
from shared.tracecontext import consumer_span, current_traceparent
from shared.warmuptelemetry import WarmupTelemetry

log = logging.getLogger(__name__)
SERVICE = "warmup"
_PUBLISHING = (StepKind.LOAD, StepKind.PIN, StepKind.PULL)  # steps that publish their model's phase themselves
_PRELOADS = (StepKind.LOAD, StepKind.PIN)  # steps that load a model: the preload span and its duration
_MAX_CAUSES = 4  # links per preload span: the latest events that asked for it
MAX_STEPS = 64  # per reconcile: a plan that never settles is a bug, not a reason to spin
_TRIGGERS = (
    EventKind.ENDPOINT_ADDED,
    EventKind.STATUS_CHANGED,
    EventKind.MODELS_CHANGED,
    EventKind.LOADED_CHANGED,
    EventKind.VERSION_CHANGED,
)


class WarmupWorker:
    """`WarmupWorker(settings, config, warm=None, *, redis=None)`: `run()` until `stop()`; `run_once()` for tests."""

    def __init__(
        self,
        settings: WarmupSettings,
        config: PierConfig,
        warm: WarmupConfig | None = None,
        *,
        redis: RedisClient | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.settings = settings
        # The process's global providers unless given (tests); no-ops until `shared.telemetry.setup` ran.
        self.telemetry = WarmupTelemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
        self._tracer = trace.get_tracer("pier.warmup", tracer_provider=tracer_provider)
        self.config = config
        self.warm = warm if warm is not None else settings.warmup_config()
        self._redis = redis
        self._owns_redis = redis is None
        self._session: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()
        self._kick = asyncio.Event()
        self.leading = False
        self._halted = False  # the lease was lost or the worker stops: reconcile tasks end after their step
        self.states: dict[str, EndpointState] = {}
        self._dirty: set[str] = set()
        self._wake: dict[str, float] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._memory: dict[tuple[str, str], Memory] = {}
        self._published: dict[tuple[str, str], tuple[object, ...]] = {}
        self._methods: dict[str, Method] = {}
        # Per endpoint, the `traceparent`s of the events that asked for its next reconcile: its preload spans
        # link to them (the health probe that saw the endpoint come back, ...).
        self._causes: dict[str, list[str]] = {}
        self.steps_done: list[tuple[str, Step]] = []  # what this worker did, in order (tests, logs)

    @property
    def redis(self) -> RedisClient:
        if self._redis is None:
            self._redis = statestore.connect(self.settings.redis_target())
        return self._redis

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.settings.warmup_timeout_s, connect=10)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    def stop(self) -> None:
        self._stopping.set()
        self._kick.set()

    # ---- leading ----------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Beat, compete for the lease, and lead while holding it; returns after `stop()`."""
        record_instance_id(self.settings.warmup_id_file, self.settings.instance_id)
        lease = Lease(self.redis, keys.WARMUP_LEASE, self.settings.instance_id, ttl_s=self.settings.lease_ttl_s)
        beat = asyncio.create_task(self._beat_loop(), name="warmup-heartbeat")
        period_s = self.settings.lease_ttl_s / 3
        try:
            while not self._stopping.is_set():
                held = False
                with contextlib.suppress(RedisError, OSError):
                    held = await lease.acquire()
                if held:
                    await self._hold(lease, period_s)
                else:
                    await self._sleep(period_s)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            with contextlib.suppress(RedisError, OSError):
                if await lease.release():
                    log.info("released the warm-up lease")

    async def _hold(self, lease: Lease, period_s: float) -> None:
        log.info("acquired the warm-up lease: leading")
        self.leading, self._halted = True, False
        # Another worker may have led meanwhile: announce every phase afresh, plan everything from scratch.
        self._published.clear()
        self._wake.clear()
        lead = asyncio.create_task(self._lead(), name="warmup-lead")
        last_held = time.monotonic()
        try:
            while not self._stopping.is_set() and not lead.done():
                await self._sleep(period_s, lead)
                if self._stopping.is_set() or lead.done():
                    break
                try:
                    if not await lease.renew():
                        log.warning("lost the warm-up lease; standing by")
                        break
                    last_held = time.monotonic()
                except (RedisError, OSError) as exc:
                    log.warning("lease renewal failed: %s", exc)
                    if time.monotonic() - last_held > self.settings.lease_ttl_s:
                        break
        finally:
            self.leading, self._halted = False, True
            ended_itself = lead.done()
            lead.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lead
            # Still the leader while preloads finish: a standby must not start the same loads meanwhile.
            renewing = asyncio.create_task(self._keep_renewing(lease, period_s), name="warmup-lease-drain")
            try:
                await self._drain()
            finally:
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
            if ended_itself:
                if not lead.cancelled() and lead.exception() is not None:
                    log.error("warm-up leader failed", exc_info=lead.exception())
                await self._sleep(period_s)  # not straight back to a leader that just ended

    async def _keep_renewing(self, lease: Lease, period_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            with contextlib.suppress(RedisError, OSError):
                if not await lease.renew():
                    return

    async def _drain(self) -> None:
        """Let preloads in flight finish (DMR would abort them), up to the drain time; then cancel the rest."""
        running = [t for t in self._tasks.values() if not t.done()]
        if running:
            log.info("waiting up to %gs for %d preload(s) in flight", self.settings.warmup_drain_s, len(running))
            await asyncio.wait(running, timeout=self.settings.warmup_drain_s)
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _sleep(self, seconds: float, *others: asyncio.Future[Any]) -> None:
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stopping.wait())
        waited: list[asyncio.Future[Any]] = [stop, *others]
        try:
            await asyncio.wait(waited, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()

    async def _lead(self) -> None:
        try:
            await self._lead_loop()
        except (RedisError, OSError) as exc:
            log.warning("redis unavailable while leading, retrying: %s", exc)

    async def _lead_loop(self) -> None:
        position = await self._resync()
        follower = asyncio.create_task(self._follow(position), name="warmup-events")
        next_resync = time.monotonic() + self.settings.warmup_interval_s
        try:
            while not self._stopping.is_set():
                if follower.done():
                    follower.result()  # surface its error
                if time.monotonic() >= next_resync:
                    await self._resync()
                    next_resync = time.monotonic() + self.settings.warmup_interval_s
                self._start_due(time.time())
                self._kick.clear()
                # An endpoint whose task is still running is planned again when it ends (its end kicks).
                wakes = [w - time.time() for n, w in self._wake.items() if not self._busy(n)]
                wait_s = min([next_resync - time.monotonic(), *wakes])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), timeout=max(0.05, wait_s))
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower

    async def _resync(self) -> str:
        snapshot = await statestore.read_snapshot(self.redis)
        for name in set(self.states) - set(snapshot.endpoints):
            self._forget(name)
        for state in snapshot.endpoints.values():
            self._apply_state(state)
        self._dirty |= set(self.states)
        return snapshot.last_event_id

    async def _follow(self, position: str) -> None:
        while True:
            try:
                events = await statestore.read_events(self.redis, position, block_ms=1000)
            except (RedisError, OSError) as exc:
                log.warning("event stream unavailable, retrying: %s", exc)
                await asyncio.sleep(1.0)
                continue
            for entry_id, event in events:
                position = entry_id
                self.on_event(event)

    def on_event(self, event: Event) -> None:
        """Apply one event from the stream; an endpoint it concerns is planned again."""
        if event.kind is EventKind.ENDPOINT_REMOVED:
            self._forget(event.endpoint)
        elif event.kind in _TRIGGERS and event.state is not None:
            self._apply_state(event.state)
            if event.traceparent:
                causes = self._causes.setdefault(event.endpoint, [])
                if event.traceparent not in causes:
                    causes.append(event.traceparent)
                    del causes[:-_MAX_CAUSES]
            self._dirty.add(event.endpoint)
            self._kick.set()

    def _apply_state(self, state: EndpointState) -> None:
        old = self.states.get(state.name)
        was_routable = old is not None and old.status.routable
        if old is not None and old.version != state.version:
            self._methods.pop(state.name, None)  # an upgraded DMR may support a cheaper preload
        if state.status.routable and not was_routable:
            # A new routable period: `preload` models load again; a restarted DMR may have another version.
            # A failure of the last period says nothing about this one: no backoff carried over.
            for (endpoint, _), mem in self._memory.items():
                if endpoint == state.name:
                    mem.preloaded = False
                    mem.failures, mem.next_retry_at = 0, 0.0
            self._methods.pop(state.name, None)
        self.states[state.name] = state

    def _forget(self, name: str) -> None:
        self.states.pop(name, None)
        self._wake.pop(name, None)
        self._dirty.discard(name)

    def _busy(self, name: str) -> bool:
        task = self._tasks.get(name)
        return task is not None and not task.done()

    def _start_due(self, now: float) -> None:
        due = {name for name, at in self._wake.items() if at <= now} | self._dirty
        for name in due:
            if self._busy(name):
                continue  # it plans again after its current step; keep the mark for when it ends
            self._dirty.discard(name)
            self._wake.pop(name, None)
            self._tasks[name] = asyncio.create_task(self._reconcile_task(name), name=f"warmup-{name}")

    async def _reconcile_task(self, name: str) -> None:
        try:
            await self.reconcile(name)
        except (RedisError, OSError) as exc:
            log.warning("warm-up of %s interrupted: %s", name, exc)
            self._wake[name] = time.time() + self.settings.warmup_backoff_initial_s
        finally:
            self._kick.set()

    # ---- one endpoint -----------------------------------------------------------------------------------

    async def run_once(self) -> None:
        """Read the states and reconcile every endpoint to completion, without lease or events (tests)."""
        await self._resync()
        self._dirty.clear()
        await asyncio.gather(*(self.reconcile(name) for name in list(self.states)))

    def knobs(self, state: EndpointState) -> Knobs:
        limits = self.warm.runner_limits or {}
        profile = self.config.profiles.get(state.type)
        return Knobs(
            runner_limit=limits.get(state.name, self.settings.warmup_runner_limit),
            default_keep_alive_s=self.settings.warmup_keep_alive_s,
            keep_margin_s=self.settings.warmup_keep_margin_s,
            pull=self.settings.warmup_pull and profile is not None and profile.preload_only_header,
            pin_supported=profile is not None and calls.configure_supported(state, profile),
        )

    def _target(self, state: EndpointState) -> Target | None:
        profile = self.config.profiles.get(state.type)
        if profile is None:
            return None
        configured = self.config.endpoint(state.name)
        headers = dict(configured.headers) if configured is not None else {}
        return Target(state.name, state.url.rstrip("/"), profile, headers)

    async def reconcile(self, name: str) -> EndpointPlan | None:
        """Plan and act on one endpoint, a step at a time, until nothing is left to do now."""
        plan: EndpointPlan | None = None
        previous: Step | None = None
        causes = self._causes.pop(name, [])
        for _ in range(MAX_STEPS):
            if self._stopping.is_set() or self._halted:
                return plan
            state = self.states.get(name)
            wanted = self.warm.for_endpoint(name)
            target = self._target(state) if state is not None else None
            if state is None or target is None or not wanted:
                return plan
            if not state.status.routable:
                for w in wanted:
                    if (name, w.model) in self._published:
                        detail = f"endpoint {state.status.value}"
                        await self._publish(name, w.model, Report(WarmPhase.COLD, w.policy, detail=detail))
                return plan
            try:
                runners = await calls.fetch_ps(self.http, target)
            except (CallError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("warm-up: /engines/ps of %s failed: %s", name, exc)
                self._wake[name] = time.time() + self.settings.warmup_backoff_initial_s
                return plan
            memory = {w.model: self._memory.setdefault((name, w.model), Memory()) for w in wanted}
            plan = plan_endpoint(state, runners, wanted, memory, self.knobs(state), time.time())
            for model, report in plan.reports.items():
                if plan.step is None or plan.step.model != model or plan.step.kind not in _PUBLISHING:
                    await self._publish(name, model, report)
            if plan.step is None or plan.step == previous:
                # Nothing to do, or the last step changed nothing (a runner turned busy): look again later.
                wake = plan.wake_at if plan.step is None else time.time() + RECHECK_S
                if wake is not None:
                    self._wake[name] = wake
                return plan
            previous = plan.step
            if not await self._do(state, target, plan.step, causes):
                return plan
        log.error("warm-up of %s did not settle in %d steps", name, MAX_STEPS)
        return plan

    async def _do(self, state: EndpointState, target: Target, step: Step, causes: Sequence[str] = ()) -> bool:
        """One step; False when the endpoint should not be planned again right now.

        A preload (load or pin) is the `warmup preload` span, linked to the events that caused it, and its
        duration goes to `pier.warmup.load.duration`; the other steps have a span of their own."""
        name, model = state.name, step.model
        mem = self._memory.setdefault((name, model), Memory())
        self.steps_done.append((name, step))
        preload = step.kind in _PRELOADS
        if preload:
            scope = self.telemetry.preload(model, name, causes)
        else:
            attributes = {"gen_ai.request.model": model, "pier.endpoint": name, "pier.warmup.step": step.kind.value}
            scope = consumer_span(self._tracer, f"warmup {step.kind.value}", causes, attributes)
        started = time.monotonic()
        with scope as span:
            if preload:
                span.set_attribute("pier.warmup.step", step.kind.value)
            try:
                if step.kind is StepKind.UNLOAD:
                    log.info("unloading idle %s on %s to make room", model, name)
                    await calls.unload(self.http, target, model)
                    return True
                if step.kind is StepKind.REFRESH:
                    await calls.preload(self.http, target, model, self._method(state, target))
                    mem.last_touch = time.time()
                    return True
                if step.kind is StepKind.PULL:
                    await self._publish(name, model, Report(WarmPhase.PULLING, step.policy))
                    log.info("pulling %s on %s", model, name)
                    await calls.pull(self.http, target, model)
                    mem.pulled = True
                    return True
                done = await self._load(state, target, step, mem)
                if done:
                    self.telemetry.loaded(model, name, time.monotonic() - started, "ok")
                return done
            except (CallError, aiohttp.ClientError, TimeoutError) as exc:
                outcome = "timeout" if isinstance(exc, TimeoutError) else "error"
                if preload:
                    self.telemetry.loaded(model, name, time.monotonic() - started, outcome)
                span.set_status(Status(StatusCode.ERROR))
                span.set_attribute("error.type", outcome)
                self._failed(name, step, mem, str(exc) or type(exc).__name__)
                await self._publish(name, model, Report(WarmPhase.FAILED, step.policy, detail=f"{step.kind} failed"))
                return True

    async def _load(self, state: EndpointState, target: Target, step: Step, mem: Memory) -> bool:
        name, model = state.name, step.model
        await self._publish(name, model, Report(WarmPhase.LOADING, step.policy))
        started = time.monotonic()
        if step.kind is StepKind.PIN and not await calls.configure(self.http, target, model, keep_alive="-1"):
            # Busy: DMR refuses to reconfigure a runner serving a request. Not a failure; look again soon.
            self._wake[name] = time.time() + RECHECK_S
            return False
        method = self._method(state, target)
        self._methods[name] = await calls.preload(self.http, target, model, method)
        elapsed = time.monotonic() - started
        mem.failures, mem.next_retry_at, mem.last_error = 0, 0.0, None
        mem.last_touch = time.time()
        mem.preloaded = True
        mem.load_time_s = elapsed
        log.info("warm-up: %s on %s ready in %.2fs (%s)", model, name, elapsed, self._methods[name].value)
        await self._publish(name, model, Report(WarmPhase.WARM, step.policy))
        return True

    def _method(self, state: EndpointState, target: Target) -> Method:
        method = self._methods.get(state.name)
        if method is None:
            method = self._methods[state.name] = calls.detect_method(state, target.profile)
        return method

    def _failed(self, name: str, step: Step, mem: Memory, error: str) -> None:
        mem.failures += 1
        delay = min(
            self.settings.warmup_backoff_max_s, self.settings.warmup_backoff_initial_s * 2 ** (mem.failures - 1)
        )
        mem.next_retry_at = time.time() + delay
        mem.last_error = error
        log.warning("warm-up: %s of %s on %s failed (retry in %gs): %s", step.kind, step.model, name, delay, error)

    # ---- state ------------------------------------------------------------------------------------------

    async def _publish(self, endpoint: str, model: str, report: Report) -> None:
        """Write the warm state (always: it refreshes the TTL) and announce a change with an event."""
        mem = self._memory.setdefault((endpoint, model), Memory())
        failed = report.phase is WarmPhase.FAILED
        warm = WarmState(
            endpoint=endpoint,
            model=model,
            phase=report.phase,
            policy=report.policy,
            last_error=mem.last_error,
            next_retry_at=mem.next_retry_at if failed else None,
            failures=mem.failures,
            load_time_s=mem.load_time_s,
            fits=report.fits,
            detail=report.detail,
            method=self._methods.get(endpoint, None),
            ttl_s=max(60.0, 3 * self.settings.warmup_interval_s),
            writer=self.settings.instance_id,
        )
        await statestore.write_warm_state(self.redis, warm)
        signature = (report.phase, report.fits, report.detail, mem.failures, mem.load_time_s)
        if self._published.get((endpoint, model)) != signature:
            self._published[(endpoint, model)] = signature
            event = Event(
                kind=EventKind.WARM_CHANGED,
                endpoint=endpoint,
                warm=warm,
                traceparent=current_traceparent(),
                writer=self.settings.instance_id,
            )
            await statestore.publish(self.redis, event)

    async def _beat_loop(self) -> None:
        while True:
            with contextlib.suppress(RedisError, OSError):
                await statestore.beat(
                    self.redis, SERVICE, self.settings.instance_id, ttl_s=self.settings.heartbeat_ttl_s
                )
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        await self._drain()
        if self._session is not None:
            await self._session.close()
        if self._owns_redis and self._redis is not None:
            await self._redis.aclose()
