"""The health worker: holds the lease, probes every endpoint on its own timer, publishes state and events.

Shape: `HealthWorker(settings, *, redis=None)`, `await run()`, `stop()`, `await close()`, `await run_once()`.
Every worker beats a heartbeat; only the lease holder probes. Leading is one task (`_lead`) that owns the
scheduler, the signal follower and the endpoint sources (`sources`); losing the lease or stopping cancels
it whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from opentelemetry import metrics, trace
from redis.exceptions import RedisError

from services.health.fetch import Fetcher
from services.health.probe import Prober, plan_for
from services.health.publisher import Publisher
from services.health.scheduler import Scheduler
from services.health.settings import HealthSettings
from services.health.signals import follow_signals
from services.health.sources import EndpointSources
from services.health.tracker import next_state
from shared import keys, statestore
from shared.config import Endpoint, PierConfig
from shared.lease import Lease
from shared.liveness import record_instance_id
from shared.state import EndpointState, Event, EventKind
from shared.statestore import RedisClient
from shared.telemetry import HTTP_BUCKETS
from shared.tracecontext import links_to

log = logging.getLogger(__name__)

SERVICE = "health"
HEARTBEAT_PERIOD_S = 1.0
_CLOSE_REDIS_TIMEOUT_S = 1.5
_REDIS_OP_TIMEOUT_S = 5.0


class HealthWorker:
    """Probes DMR endpoints and publishes their state (see the module docstring)."""

    def __init__(
        self,
        settings: HealthSettings,
        *,
        redis: RedisClient | None = None,
        config: PierConfig | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.settings = settings
        self.config = config if config is not None else settings.pier_config()
        self.instance_id = settings.instance_id
        self._redis = redis if redis is not None else statestore.connect(settings.redis_target())
        self._owns_redis = redis is None
        self._publisher = Publisher(self._redis, writer=self.instance_id)
        self._lease = Lease(self._redis, keys.HEALTH_LEASE, self.instance_id, ttl_s=settings.lease_ttl_s)
        # The global provider unless one is given (tests); a no-op until telemetry is configured.
        self._tracer = trace.get_tracer("pier.health", tracer_provider=tracer_provider)
        meter = metrics.get_meter("pier.health", meter_provider=meter_provider)
        self._probe_duration = meter.create_histogram(
            "pier.health.probe.duration",
            unit="s",
            description="Duration of one endpoint probe.",
            explicit_bucket_boundaries_advisory=HTTP_BUCKETS,
        )
        self._reported: dict[str, str] = {}  # endpoint -> traceparent of the router request that reported it down
        self._fetcher: Fetcher | None = None
        self._prober: Prober | None = None
        self._states: dict[str, EndpointState] = {}
        self._full_read_at: dict[str, float] = {}  # when every inventory route was last read (probe.Plan)
        self._sources = EndpointSources(settings, self.config, self._ensure_fetcher)
        self._scheduler: Scheduler | None = None
        self._lead_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._table_lock = asyncio.Lock()
        self._closed = False
        self._publish_failing = False

    # ---- public surface -------------------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self._lead_task is not None and not self._lead_task.done()

    async def run(self) -> None:
        """Beat, compete for the lease, and lead while holding it; returns after `stop()`."""
        self._write_id_file()
        log.info(
            "health worker %s: %d configured endpoint(s) (%s), lease %gs",
            self.instance_id,
            len(self.config.endpoints),
            self.config.source,
            self.settings.lease_ttl_s,
        )
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._lease_loop(), name="lease"),
        ]
        stop_wait = asyncio.create_task(self._stopping.wait(), name="stop-wait")
        try:
            done, _ = await asyncio.wait([*background, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*background, stop_wait):
                task.cancel()
            await asyncio.gather(*background, stop_wait, return_exceptions=True)
        for task in done:
            error = None if task is stop_wait or task.cancelled() else task.exception()
            if error is not None:
                raise error  # a background loop crashed: the worker exits non-zero

    def stop(self) -> None:
        """Ask `run()` to return (signal handlers call this)."""
        self._stopping.set()

    async def close(self) -> None:
        """Cancel in-flight probes, release the lease, drop the heartbeat, close clients. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        await self._stop_leading()
        await self._publisher.close()
        try:
            async with asyncio.timeout(_CLOSE_REDIS_TIMEOUT_S):
                if await self._lease.release():
                    log.info("released the lease")
                await self._redis.delete(keys.heartbeat(SERVICE, self.instance_id))
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("could not release the lease or heartbeat: %s", exc)
        self._remove_id_file()
        self._sources.close()
        if self._fetcher is not None:
            await self._fetcher.close()
        if self._owns_redis:
            await self._redis.aclose()

    async def run_once(self) -> list[EndpointState]:
        """Probe every endpoint once and publish, without lease or timers (tests, one-shot use)."""
        self._ensure_prober()
        await self._load_baseline()
        await self._sources.first_sync()
        endpoints = self._sources.table()
        await asyncio.gather(*(self._tick(e) for e in endpoints))
        return [self._states[e.name] for e in endpoints if e.name in self._states]

    # ---- probing --------------------------------------------------------------------------------------

    def _ensure_prober(self) -> Prober:
        if self._prober is None:
            self._fetcher = Fetcher()
            self._prober = Prober(self._fetcher, busy_threshold_s=self.settings.busy_threshold_s)
        return self._prober

    async def _tick(self, endpoint: Endpoint) -> float:
        """Probe one endpoint, publish its state and events; return the wait before its next probe.

        A span only for a probe that changed something (200 endpoints probed every second must not flood
        the exporter); it starts when the probe did, and the events it publishes carry its traceparent.
        """
        prober = self._ensure_prober()
        started_ns = time.time_ns()
        started = time.perf_counter()
        now = time.time()
        previous = self._states.get(endpoint.name)
        plan = plan_for(previous, self._full_read_at.get(endpoint.name), now)
        result = await prober.probe(endpoint, plan)
        if plan.full and result.status.routable:
            self._full_read_at[endpoint.name] = now
        decision = next_state(
            endpoint,
            previous,
            result,
            now=time.time(),
            writer=self.instance_id,
            max_backoff_s=self.settings.max_backoff_s,
        )
        state = decision.state
        self._states[endpoint.name] = state
        status = state.status.value
        self._probe_duration.record(
            time.perf_counter() - started, {"pier.endpoint": endpoint.name, "pier.status": status}
        )
        span: trace.Span | None = None
        if self._publisher.would_announce(state):
            attributes = {
                "pier.endpoint.name": endpoint.name,
                "url.full": endpoint.url + endpoint.health_check_path,
                "pier.endpoint.status": status,
                "pier.endpoint.previous_status": previous.status.value if previous is not None else "",
            }
            links = links_to(self._reported.pop(endpoint.name, None))
            span = self._tracer.start_span(
                "health probe", kind=trace.SpanKind.CLIENT, start_time=started_ns, attributes=attributes, links=links
            )
        with trace.use_span(span, end_on_exit=True) if span is not None else contextlib.nullcontext():
            try:
                # Bounded: the Redis client has no read timeout (blocking XREADs need none), and a hung
                # Redis must not stall this endpoint's probing. A write that times out may still land.
                async with asyncio.timeout(_REDIS_OP_TIMEOUT_S):
                    events = await self._publisher.publish(state)
            except (RedisError, OSError, TimeoutError) as exc:
                # One warning per Redis outage, not one per probe of every endpoint.
                level = logging.DEBUG if self._publish_failing else logging.WARNING
                log.log(level, "could not publish state of %s: %s", endpoint.name, exc)
                self._publish_failing = True
                return decision.next_delay_s
            if self._publish_failing:
                log.info("publishing state again")
                self._publish_failing = False
        for event in events:
            _log_event(event)
        return decision.next_delay_s

    def _on_signal(self, name: str, reported_at: float, traceparent: str | None) -> bool:
        """A router reported `name` down: probe it now; the probe's span (if it changes something) links to
        the router's request that failed."""
        scheduler = self._scheduler
        if scheduler is None or not scheduler.poke(name, reported_at):
            return False
        if traceparent:
            self._reported[name] = traceparent
        return True

    # ---- heartbeat and lease --------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        failing = False
        while not self._stopping.is_set():
            try:
                async with asyncio.timeout(_REDIS_OP_TIMEOUT_S):
                    await statestore.beat(self._redis, SERVICE, self.instance_id, ttl_s=self.settings.heartbeat_ttl_s)
                if failing:
                    log.info("heartbeat restored")
                failing = False
            except (RedisError, OSError, TimeoutError) as exc:
                if not failing:
                    log.warning("heartbeat failed: %s", exc or "timeout")
                failing = True
            await self._pause(HEARTBEAT_PERIOD_S)

    async def _lease_loop(self) -> None:
        period_s = self.settings.lease_ttl_s / 3
        last_held = time.monotonic()
        while not self._stopping.is_set():
            self._check_lead_task()
            holder: str | None = None
            try:
                async with asyncio.timeout(period_s):
                    if self.leading:
                        held = await self._lease.renew()
                        holder = None if held else await self._lease.holder()
                    else:
                        held = await self._lease.acquire()
                if held and not self.leading:
                    log.info("acquired the lease: leading")
                    self._lead_task = asyncio.create_task(self._lead(), name="lead")
                elif not held and self.leading:
                    log.warning("lost the lease to %s; standing by", holder)
                    await self._stop_leading()
                if held:
                    last_held = time.monotonic()
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("lease check failed: %s", exc or "timeout")
                if self.leading and time.monotonic() - last_held > self.settings.lease_ttl_s:
                    log.warning("lease expired while Redis was unreachable; standing by")
                    await self._stop_leading()
            await self._pause(period_s)

    def _check_lead_task(self) -> None:
        """A lead task that ended by itself: Redis trouble means step down and retry; anything else surfaces."""
        task = self._lead_task
        if task is None or not task.done() or task.cancelled():
            return
        self._lead_task = None
        exc = task.exception()
        if isinstance(exc, RedisError | OSError):
            log.warning("leading stopped on a Redis error (%s); will retry", exc)
            return
        if exc is not None:
            raise exc

    async def _stop_leading(self) -> None:
        task, self._lead_task = self._lead_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    # ---- leading --------------------------------------------------------------------------------------

    async def _lead(self) -> None:
        """Everything the leader does, until cancelled: probe on timers, follow signals and Docker."""
        scheduler = Scheduler(self._tick)
        self._scheduler = scheduler
        try:
            await self._load_baseline()
            await self._sources.first_sync()  # before pruning: discovered endpoints are not "gone"
            await self._apply_table(prune=True)
            async with asyncio.TaskGroup() as group:
                group.create_task(follow_signals(self._redis, self._on_signal), name="signals")
                group.create_task(self._sources.follow(self._apply_table), name="sources")
        finally:
            self._scheduler = None
            await scheduler.close()

    async def _load_baseline(self) -> None:
        """Start from the state in Redis: backoff and change detection continue across a failover."""
        await self._publisher.load_baseline()
        known = (self._publisher.last(name) for name in self._publisher.known_names())
        self._states = {state.name: state for state in known if state is not None}

    async def _apply_table(self, *, prune: bool = False) -> None:
        """Swap the scheduler's endpoint table for the current one; remove the state of endpoints gone."""
        async with self._table_lock:
            scheduler = self._scheduler
            if scheduler is None:
                return
            table = self._sources.table()
            change = await scheduler.update(table)
            gone = set(change.removed)
            if prune:
                gone |= self._publisher.known_names() - {e.name for e in table}
            for name in sorted(gone):
                self._states.pop(name, None)
                try:
                    if await self._publisher.remove(name, reason="endpoint gone") is not None:
                        log.info("endpoint %s removed", name)
                except (RedisError, OSError) as exc:
                    log.warning("could not remove state of %s: %s", name, exc)
            if change.added or change.changed:
                log.info("probing %d endpoint(s); new: %s", len(table), ", ".join((*change.added, *change.changed)))

    def _ensure_fetcher(self) -> Fetcher:
        self._ensure_prober()
        assert self._fetcher is not None
        return self._fetcher

    # ---- the id file for --check ----------------------------------------------------------------------

    def _write_id_file(self) -> None:
        record_instance_id(self.settings.health_id_file, self.instance_id)

    def _remove_id_file(self) -> None:
        path = self.settings.health_id_file
        with contextlib.suppress(OSError):
            if path.read_text(encoding="utf-8").strip() == self.instance_id:
                path.unlink()


def _log_event(event: Event) -> None:
    state = event.state
    if event.kind is EventKind.STATUS_CHANGED and state is not None:
        error = f" ({state.last_error})" if state.last_error else ""
        log.info("%s: %s -> %s%s", event.endpoint, event.detail.get("previous"), state.status.value, error)
    else:
        log.info("%s: %s %s", event.endpoint, event.kind.value, event.detail)
