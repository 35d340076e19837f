"""The warm-up worker: keeps the wanted models loaded on every routable endpoint that has them.

Each cycle reads the endpoint states the health worker publishes, plans the preloads (a pure function),
and sends each as its own task: DMR gets `X-Preload-Only: true` (load, no generation); other servers a
one-token completion. Warm state goes to Redis with a TTL, and every phase change is an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp
from opentelemetry import trace
from redis.exceptions import RedisError

from services.warmup.plan import Preload, plan_preloads
from services.warmup.settings import WarmupSettings
from shared import statestore
from shared.config import PierConfig
from shared.liveness import record_instance_id
from shared.state import Event, EventKind, WarmPhase, WarmState
from shared.statestore import RedisClient
from shared.tracecontext import current_traceparent

log = logging.getLogger(__name__)
tracer = trace.get_tracer("pier.warmup")
SERVICE = "warmup"


class WarmupWorker:
    """`WarmupWorker(settings, config, redis=None)`: `run()` until `stop()`, `run_once()` for one cycle."""

    def __init__(self, settings: WarmupSettings, config: PierConfig, *, redis: RedisClient | None = None) -> None:
        self.settings = settings
        self.config = config
        self._redis = redis
        self._owns_redis = redis is None
        self._session: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._phases: dict[tuple[str, str], WarmPhase] = {}

    @property
    def redis(self) -> RedisClient:
        if self._redis is None:
            self._redis = statestore.connect(self.settings.redis_url)
        return self._redis

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.settings.warmup_timeout_s, connect=10)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        record_instance_id(self.settings.warmup_id_file, self.settings.instance_id)
        beat = asyncio.create_task(self._beat_loop(), name="warmup-heartbeat")
        try:
            while not self._stopping.is_set():
                try:
                    await self.run_once()
                except RedisError as exc:
                    log.warning("redis unavailable, retrying: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=self.settings.warmup_interval_s)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def run_once(self) -> list[Preload]:
        """One cycle: plan from the current state and start the preloads it needs. Returns the plan."""
        snapshot = await statestore.read_snapshot(self.redis)
        now = time.time()
        for (endpoint, model), phase in list(self._phases.items()):
            current = snapshot.endpoints.get(endpoint)
            if phase is WarmPhase.WARM and current is not None and model not in current.loaded_names():
                await self._set_phase(endpoint, model, WarmPhase.COLD)  # evicted: warm it again
        running = frozenset(key for key, task in self._tasks.items() if not task.done())
        plan = plan_preloads(snapshot.endpoints, self.settings.warmup_models, in_flight=running, now=now)
        for item in plan:
            key = (item.endpoint.name, item.model)
            self._tasks[key] = asyncio.create_task(self._preload(item), name=f"preload-{key}")
        for endpoint, endpoint_state in snapshot.endpoints.items():
            for model in endpoint_state.loaded_names() & frozenset(self.settings.warmup_models):
                if self._phases.get((endpoint, model)) is not WarmPhase.WARM:
                    await self._set_phase(endpoint, model, WarmPhase.WARM)
        return plan

    async def wait_idle(self) -> None:
        """Wait for the preloads started so far (tests use it after `run_once`)."""
        tasks = [t for t in self._tasks.values() if not t.done()]
        if tasks:
            await asyncio.gather(*tasks)

    async def _preload(self, item: Preload) -> None:
        endpoint, model = item.endpoint, item.model
        profile = self.config.profiles.get(endpoint.type)
        configured = self.config.endpoint(endpoint.name)
        headers = dict(configured.headers) if configured is not None else {}
        api_prefix = profile.api_prefix if profile is not None else "/v1"
        body: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": "warm-up"}]}
        if profile is not None and profile.preload_only_header:
            headers["X-Preload-Only"] = "true"
        else:
            body["max_tokens"] = 1
        url = f"{endpoint.url}{api_prefix}/chat/completions"
        await self._set_phase(endpoint.name, model, WarmPhase.WARMING)
        started = time.monotonic()
        with tracer.start_as_current_span("warmup preload", attributes={"gen_ai.request.model": model}):
            try:
                async with self.session.post(url, json=body, headers=headers) as resp:
                    text = await resp.text()
                    if resp.status >= 400:
                        raise RuntimeError(f"HTTP {resp.status}: {text.strip()[:200]}")
            except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
                log.warning("preload of %s on %s failed: %s", model, endpoint.name, exc)
                await self._set_phase(endpoint.name, model, WarmPhase.FAILED, error=str(exc) or type(exc).__name__)
                return
        elapsed = time.monotonic() - started
        log.info("preloaded %s on %s in %.1fs", model, endpoint.name, elapsed)
        await self._set_phase(endpoint.name, model, WarmPhase.WARM, load_time_s=elapsed)

    async def _set_phase(
        self, endpoint: str, model: str, phase: WarmPhase, *, error: str | None = None, load_time_s: float | None = None
    ) -> None:
        warm = WarmState(
            endpoint=endpoint,
            model=model,
            phase=phase,
            last_error=error,
            load_time_s=load_time_s,
            ttl_s=max(60.0, 4 * self.settings.warmup_interval_s),
            writer=self.settings.instance_id,
        )
        await statestore.write_warm_state(self.redis, warm)
        if self._phases.get((endpoint, model)) is not phase:
            self._phases[(endpoint, model)] = phase
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
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
        if self._owns_redis and self._redis is not None:
            await self._redis.aclose()
