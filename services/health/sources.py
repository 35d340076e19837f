"""Where endpoints come from: the config file, Docker discovery and zero-config detection, merged into one table.

Static endpoints win a name clash. Docker discovery runs when the Docker API answers (`auto`), always (`on`,
retrying) or never (`off`). Zero-config detection runs only when the config lists no endpoint and Docker
discovery found no DMR.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from services.health import autodetect
from services.health.discovery import DockerUnavailable, DockerWatcher, watch
from services.health.fetch import Fetcher
from services.health.labels import Discovery, merge_endpoints
from services.health.settings import HealthSettings
from shared.config import Endpoint, PierConfig

log = logging.getLogger(__name__)

_DISCOVERY_FIRST_SYNC_S = 5.0
OnChange = Callable[[], Awaitable[None]]


class EndpointSources:
    """The current endpoint table, and the tasks that keep it current (`follow`)."""

    def __init__(self, settings: HealthSettings, config: PierConfig, fetcher: Callable[[], Fetcher]) -> None:
        self._settings = settings
        self._config = config
        self._fetcher = fetcher  # the prober's, for the zero-config probes
        self._discovered: tuple[Endpoint, ...] = ()
        self._auto: tuple[Endpoint, ...] = ()
        self._docker: DockerWatcher | None = None
        self._docker_unavailable = False  # PIER_DOCKER_DISCOVERY=auto found no Docker API at start
        self._logged_clashes: set[str] = set()
        self._logged_problems: set[str] = set()

    def table(self) -> tuple[Endpoint, ...]:
        """Static, then discovered, then auto-detected endpoints; clashes are logged once each."""
        endpoints, clashes = merge_endpoints(self._config.endpoints, self._discovered, self._auto)
        for clash in sorted(set(clashes) - self._logged_clashes):
            log.warning("%s", clash)
        self._logged_clashes = set(clashes)
        return endpoints

    def _wants_autodetect(self) -> bool:
        return not self._config.endpoints and not self._auto

    async def first_sync(self) -> None:
        """Take Docker's first snapshot and try zero-config once, before the table is first used."""
        await self._first_discovery()
        if self._wants_autodetect():
            await self._autodetect_once()

    async def follow(self, on_change: OnChange) -> None:
        """Follow Docker and retry zero-config detection; `on_change()` after each change. Until cancelled."""
        async with asyncio.TaskGroup() as group:
            if self._docker is not None:
                group.create_task(self._watch_docker(self._docker, on_change), name="docker")
            if self._wants_autodetect():
                group.create_task(self._autodetect_loop(on_change), name="autodetect")

    def close(self) -> None:
        if self._docker is not None:
            self._docker.close()

    # ---- Docker -------------------------------------------------------------------------------------

    async def _first_discovery(self) -> None:
        mode = self._settings.docker_discovery
        if mode == "off" or self._docker_unavailable:
            return
        if self._docker is None:
            watcher = DockerWatcher(
                docker_host=self._settings.docker_host,
                profiles=self._config.profiles,
                required_labels=self._settings.docker_label_filter,
            )
            try:
                async with asyncio.timeout(_DISCOVERY_FIRST_SYNC_S):
                    await watcher.connect()
            except (DockerUnavailable, TimeoutError) as exc:
                watcher.close()
                if mode == "auto":
                    log.info("Docker discovery off: the Docker API is not reachable (%s)", exc or "timeout")
                    self._docker_unavailable = True
                    return
                log.warning("Docker discovery: the Docker API is not reachable yet (%s); will retry", exc)
                self._docker = watcher
                return
            self._docker = watcher
            log.info("Docker discovery on")
        with contextlib.suppress(DockerUnavailable, TimeoutError):
            async with asyncio.timeout(_DISCOVERY_FIRST_SYNC_S):
                self._set_discovered(await self._docker.discover())

    def _set_discovered(self, discovery: Discovery) -> bool:
        for problem in sorted(set(discovery.problems) - self._logged_problems):
            log.warning("Docker discovery: %s", problem)
        self._logged_problems = set(discovery.problems)
        changed = discovery.endpoints != self._discovered
        self._discovered = discovery.endpoints
        return changed

    async def _watch_docker(self, watcher: DockerWatcher, on_change: OnChange) -> None:
        async def apply(discovery: Discovery) -> None:
            if self._set_discovered(discovery):
                await on_change()

        await watch(watcher, apply, resync_interval_s=self._settings.discovery_resync_interval_s)

    # ---- zero-config --------------------------------------------------------------------------------

    def _candidates(self) -> tuple[str, ...]:
        if self._settings.autodetect_candidates:
            return self._settings.autodetect_candidates
        gateway = None
        # The bridge gateway is DMR's address only from inside a container; on a host it is the LAN router.
        if Path("/.dockerenv").exists():
            with contextlib.suppress(OSError):
                gateway = autodetect.default_gateway(Path("/proc/net/route").read_text())
        return autodetect.default_candidates(gateway=gateway)

    async def _autodetect_once(self) -> bool:
        if any(e.type == "docker-model-runner" for e in self._discovered):
            return False  # Docker discovery found DMR itself
        candidates = self._candidates()
        url = await autodetect.detect(self._fetcher(), candidates, timeout_s=self._settings.autodetect_timeout_s)
        if url is None:
            log.warning("no endpoint configured and no DMR answered at %s", ", ".join(candidates))
            return False
        log.info("no endpoint configured: adopted DMR at %s (tried %s)", url, ", ".join(candidates))
        self._auto = (autodetect.auto_endpoint(url, self._config.profiles),)
        return True

    async def _autodetect_loop(self, on_change: OnChange) -> None:
        while self._wants_autodetect():
            await asyncio.sleep(self._settings.discovery_resync_interval_s)
            if await self._autodetect_once():
                await on_change()
