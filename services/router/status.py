"""Routes the router answers itself, from its in-memory table: listings, `/internal/*` status, and the
405 that points model management at the `docker model` CLI."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

import services.router.listing as listing
from services.router.circuit import Circuits
from services.router.conditional import answer
from services.router.errors import ManagementNotProxied, ModelNotFound
from services.router.runtime import Runtime
from services.router.settings import RouterSettings
from services.router.table import RoutingTable, Target
from shared.config import PierConfig
from shared.names import normalise_model

if TYPE_CHECKING:
    from services.router.statecache import StateCache

# DMR management routes -> the `docker model` command that does the job against one DMR.
MANAGEMENT: tuple[tuple[str, str, str, str], ...] = (
    ("POST", "/models/create", "pulling a model", "docker model pull <model>"),
    ("DELETE", "/models/{name:.+}", "deleting a model", "docker model rm <model>"),
    ("POST", "/models/{name:.+}/tag", "tagging a model", "docker model tag <source> <target>"),
    ("POST", "/models/{name:.+}/push", "pushing a model", "docker model push <model>"),
    ("POST", "/models/prune", "pruning models", "docker model prune"),
    ("POST", "/models/load", "loading a model from a file", "docker model load <file>"),
    ("POST", "/engines/_configure", "configuring a model", "docker model configure <model> ..."),
    ("POST", "/engines/unload", "unloading models", "docker model unload <model>"),
    ("POST", "/api/pull", "pulling a model", "docker model pull <model>"),
    ("DELETE", "/api/delete", "deleting a model", "docker model rm <model>"),
    ("POST", "/api/create", "creating a model", "docker model package ..."),
    ("POST", "/api/copy", "copying a model", "docker model tag <source> <target>"),
    ("POST", "/api/push", "pushing a model", "docker model push <model>"),
)


ANTHROPIC_VERSION = "anthropic-version"  # every Anthropic SDK request carries it


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


@dataclass(slots=True)
class StatusRoutes:
    """Handlers for everything the router answers without an endpoint."""

    settings: RouterSettings
    config: PierConfig
    runtime: Runtime
    circuits: Circuits
    state: StateCache | None = None

    @property
    def table(self) -> RoutingTable:
        assert self.state is not None, "the state cache is bound at start-up"
        return self.state.table

    # --- DMR / OpenAI / Olla listings --------------------------------------------------------------------------

    async def openai_models(self, request: web.Request) -> web.Response:
        if ANTHROPIC_VERSION in request.headers:  # the Anthropic SDK's `models.list()` on its default base URL
            return await self.anthropic_models(request)
        return _json(listing.openai_models(self.table))

    async def openai_model(self, request: web.Request) -> web.Response:
        if ANTHROPIC_VERSION in request.headers:
            return await self.anthropic_model(request)
        wanted = normalise_model(request.match_info["model"])
        listed = listing.openai_models(self.table)
        for entry in listed.get("data", []):
            if normalise_model(str(entry.get("id", ""))) == wanted:
                return _json(entry)
        raise ModelNotFound(request.match_info["model"], self.table.model_names)

    async def anthropic_models(self, request: web.Request) -> web.Response:
        return _json(listing.anthropic_models(self.table))

    async def anthropic_model(self, request: web.Request) -> web.Response:
        wanted = normalise_model(request.match_info["model"])
        for entry in listing.anthropic_models(self.table)["data"]:
            if normalise_model(str(entry["id"])) == wanted:
                return _json(entry)
        raise ModelNotFound(request.match_info["model"], self.table.model_names)

    async def olla_models(self, request: web.Request) -> web.Response:
        return _json(listing.olla_models(self.table))

    async def inventory(self, request: web.Request) -> web.Response:
        return _json(listing.merged_inventory(self.table))

    async def inventory_entry(self, request: web.Request) -> web.Response:
        wanted = normalise_model(request.match_info["name"])
        for entry in listing.merged_inventory(self.table):
            tags = entry.get("tags") or []
            if any(normalise_model(str(tag)) == wanted for tag in tags) or entry.get("id") == wanted:
                return _json(entry)
        raise ModelNotFound(request.match_info["name"], self.table.model_names)

    async def ps(self, request: web.Request) -> web.Response:
        return _json(listing.merged_ps(self.table))

    async def engines_status(self, request: web.Request) -> web.Response:
        """DMR's `{engine: status}`, merged: an engine is Running when it runs on any routable endpoint."""
        merged: dict[str, str] = {}
        for target in self.table.ordered_targets():
            if not target.routable or target.engines is None:
                continue
            for engine, status in target.engines.items():
                if engine not in merged or (status.lower().startswith("running") and not _running(merged[engine])):
                    merged[engine] = status
        return _json(merged)

    async def root(self, request: web.Request) -> web.Response:
        # DMR answers this text at `/`; tools that probe it see the same through Pier.
        return web.Response(text="Docker Model Runner is running", content_type="text/plain")

    async def version(self, request: web.Request) -> web.Response:
        return _json({"version": _pier_version(), "service": "pier-router"})

    # --- /internal ---------------------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "service": "pier-router", "pid": os.getpid()})

    async def status(self, request: web.Request) -> web.Response:
        table = self.table
        by_status: dict[str, int] = {}
        for target in table.targets.values():
            by_status[target.status.value] = by_status.get(target.status.value, 0) + 1
        state = self.state
        runtime = self.runtime.describe()
        data: dict[str, Any] = {
            "service": "pier-router",
            "version": _pier_version(),
            "instance_id": self.settings.instance_id,
            "pid": os.getpid(),
            "workers": self.settings.workers,
            "redis": {"connected": bool(state is not None and state.connected)},
            "table": {"version": table.version, "age_s": round(max(0.0, time.time() - table.built_at), 3)},
            "load_balancer": self.config.load_balancer.value,
            "routing_strategy": self.config.routing_strategy.value,
            "endpoints": {
                "total": len(table.targets),
                "routable": sum(1 for t in table.targets.values() if t.routable),
                "by_status": by_status,
            },
            "models": len(table.model_names),
            "circuits_open": sorted(self.circuits.blocked()),
            "runtime": runtime,
            "grafana_url": self.settings.grafana_url or None,
        }
        # The ages change on every read; the ETag (for the status page's conditional GETs) leaves them out.
        stable = {**data, "table": {"version": table.version}, "runtime": {**runtime, "uptime_s": None}}
        return answer(request, data, stable=stable)

    async def endpoints(self, request: web.Request) -> web.Response:
        now = time.time()
        described = [self._describe(target, now) for target in self.table.ordered_targets()]
        stable = [_stable(entry) for entry in described]
        return answer(request, {"endpoints": described}, stable={"endpoints": stable})

    async def models_status(self, request: web.Request) -> web.Response:
        return answer(request, listing.models_status(self.table))

    def _describe(self, target: Target, now: float) -> dict[str, Any]:
        state = target.state
        return {
            "name": target.name,
            "url": target.url,
            "type": target.type,
            "source": target.source,
            "status": target.status.value,
            "known": target.known,
            "routable": target.routable,
            "marked_down": target.local_down,
            "priority": target.priority,
            "latency_ms": state.latency_ms if state is not None else None,
            "models": sorted(target.models),
            "models_known": target.models_known,
            "loaded": sorted(target.loaded),
            "engines": dict(target.engines) if target.engines is not None else None,
            "in_flight": self.runtime.inflight[target.name],
            "max_concurrent": target.max_concurrent,
            "circuit": self.circuits.describe(target.name),
            "state_age_s": round(max(0.0, now - state.checked_at), 3) if state is not None else None,
            "checked_at": state.checked_at if state is not None else None,
            "consecutive_failures": state.consecutive_failures if state is not None else 0,
            "last_error": state.last_error if state is not None else None,
            "version": state.version if state is not None else None,
        }

    # --- model management ----------------------------------------------------------------------------------------

    @staticmethod
    def management(what: str, command: str) -> Callable[[web.Request], Any]:
        async def refuse(request: web.Request) -> web.Response:
            raise ManagementNotProxied(what, command)

        return refuse


def _stable(entry: dict[str, Any]) -> dict[str, Any]:
    """An endpoint's description without what changes on every read (ages, a countdown): the ETag's basis."""
    out = {k: v for k, v in entry.items() if k != "state_age_s"}
    out["circuit"] = {k: v for k, v in entry["circuit"].items() if k != "retry_after_s"}
    return out


def _running(status: str) -> bool:
    return status.lower().startswith("running")


def _pier_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pier")
    except PackageNotFoundError:
        return "dev"
