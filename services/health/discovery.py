"""Following Docker: list containers, map them to endpoints (`labels`), resync on events and periodically.

The Docker SDK blocks, so every call runs in a thread: listing through `asyncio.to_thread`, the endless
event stream in a daemon thread of its own that wakes the loop with `call_soon_threadsafe`. A broken
connection is retried with backoff; the last good endpoint table stays in force meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import docker
from docker.errors import DockerException

from services.health.labels import Discovery, endpoints_from_containers
from shared.profiles import ProfileSet

log = logging.getLogger(__name__)

WATCHED_EVENTS = ("start", "die", "health_status", "destroy")
API_TIMEOUT_S = 5.0
_RETRY_MIN_S = 1.0
_RETRY_MAX_S = 30.0
# Events come in bursts (a compose up starts several containers): one resync per burst.
_DEBOUNCE_S = 0.2


class DockerUnavailable(Exception):
    """The Docker API could not be reached or answered with an error."""


class DockerWatcher:
    """A Docker API client used from asyncio; every blocking call runs off the event loop."""

    def __init__(
        self, *, docker_host: str | None, profiles: ProfileSet, required_labels: Mapping[str, str] | None = None
    ) -> None:
        self._docker_host = docker_host
        self._profiles = profiles
        self._required = dict(required_labels or {})
        self._client: Any = None
        self._stream: Any = None
        self._lock = threading.Lock()

    def _connect_blocking(self) -> Any:
        if self._client is None:
            if self._docker_host:
                self._client = docker.APIClient(base_url=self._docker_host, timeout=API_TIMEOUT_S)
            else:
                # DOCKER_HOST (and its TLS variables) is the Docker SDK's own convention; the socket otherwise.
                self._client = docker.from_env(timeout=API_TIMEOUT_S).api
        self._client.ping()
        return self._client

    async def connect(self) -> None:
        """Reach the Docker API once (ping); raises DockerUnavailable with the reason."""
        try:
            await asyncio.to_thread(self._connect_blocking)
        except (DockerException, OSError) as exc:
            self._reset()
            raise DockerUnavailable(str(exc) or type(exc).__name__) from exc

    async def discover(self) -> Discovery:
        """List running containers and map them to endpoints."""
        try:
            containers = await asyncio.to_thread(self._list_blocking)
        except (DockerException, OSError) as exc:
            self._reset()
            raise DockerUnavailable(str(exc) or type(exc).__name__) from exc
        return endpoints_from_containers(containers, self._profiles, self._required)

    def _list_blocking(self) -> list[dict[str, Any]]:
        client = self._connect_blocking()
        return list(client.containers(all=False))

    async def follow(self, on_event: Callable[[], None]) -> None:
        """Call `on_event` (on the loop) for each container start/die/health event until the stream ends."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[BaseException | None] = loop.create_future()
        cancelled = threading.Event()

        def finish(exc: BaseException | None) -> None:
            if not ended.done():
                ended.set_result(exc)

        def pump() -> None:
            error: BaseException | None = None
            try:
                client = self._connect_blocking()
                filters: dict[str, Any] = {"type": "container", "event": list(WATCHED_EVENTS)}
                if self._required:  # only the containers that could matter wake us
                    filters["label"] = [f"{key}={value}" for key, value in self._required.items()]
                stream = client.events(decode=True, filters=filters)
                with self._lock:
                    if cancelled.is_set():  # follow() ended while we were connecting
                        stream.close()
                        return
                    self._stream = stream
                for _event in stream:
                    loop.call_soon_threadsafe(on_event)
            except (DockerException, OSError) as exc:
                error = exc
            finally:
                with contextlib.suppress(RuntimeError):  # the loop may be closed already at shutdown
                    loop.call_soon_threadsafe(finish, error)

        thread = threading.Thread(target=pump, name="docker-events", daemon=True)
        thread.start()
        try:
            error = await ended
        finally:
            with self._lock:
                cancelled.set()
            self._close_stream()
        if error is not None:
            raise DockerUnavailable(str(error) or type(error).__name__) from error
        raise DockerUnavailable("the Docker event stream ended")

    def _close_stream(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):  # closing a half-dead socket may fail in many ways
                stream.close()

    def _reset(self) -> None:
        self._close_stream()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def close(self) -> None:
        """Stop the event stream and drop the client (safe to call more than once)."""
        self._reset()


async def watch(
    watcher: DockerWatcher,
    apply: Callable[[Discovery], Awaitable[None]],
    *,
    resync_interval_s: float,
) -> None:
    """Keep `apply` fed with the current discovery: on every relevant event and every resync interval.

    Runs until cancelled; Docker outages are logged and retried with backoff (1 s doubling to 30 s).
    """
    dirty = asyncio.Event()
    retry_s = _RETRY_MIN_S
    while True:
        follower: asyncio.Task[None] | None = None
        try:
            await apply(await watcher.discover())
            follower = asyncio.create_task(watcher.follow(dirty.set), name="docker-follow")
            retry_s = _RETRY_MIN_S
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(resync_interval_s):
                        await _first(dirty.wait(), follower)
                if follower.done():
                    follower.result()  # raises DockerUnavailable: reconnect below
                await asyncio.sleep(_DEBOUNCE_S)
                dirty.clear()
                await apply(await watcher.discover())
        except DockerUnavailable as exc:
            log.warning("Docker discovery: %s; retrying in %.0fs", exc, retry_s)
            await asyncio.sleep(retry_s)
            retry_s = min(retry_s * 2, _RETRY_MAX_S)
        finally:
            if follower is not None and not follower.done():
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError, DockerUnavailable):
                    await follower


async def _first(event_wait: Awaitable[bool], task: asyncio.Task[None]) -> None:
    """Return when the event is set or the task ends, whichever is first."""
    waiter = asyncio.ensure_future(event_wait)
    try:
        await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
