"""Model lists built from the routing table (pure): one entry per normalised model, whatever serves it.

The same model on three endpoints is one entry naming the three endpoints. Lists for clients (OpenAI/DMR
shape, Olla shape, DMR's inventory and `ps`) show only routable endpoints: what a request could use now.
`models_status` (for operators) shows every endpoint with state, routable or not.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from services.router.table import RoutingTable, Target
from shared.names import normalise_model
from shared.state import LoadedModel, PulledModel

DMR_TYPE = "docker-model-runner"


def _routable(table: RoutingTable) -> list[Target]:
    return [t for t in table.ordered_targets() if t.routable]


def _pulled(target: Target) -> dict[str, PulledModel]:
    """The target's pulled models by normalised name, model filter applied."""
    if target.state is None:
        return {}
    return {p.name: p for p in target.state.pulled if p.name in target.models}


def _served(table: RoutingTable) -> Iterator[tuple[str, Target, PulledModel | None]]:
    """Every (model, routable target serving it, its pulled details), targets in priority order."""
    for target in _routable(table):
        pulled = _pulled(target)
        for model in sorted(target.models):
            yield model, target, pulled.get(model)


def _take_created(entry: dict[str, Any], details: PulledModel) -> None:
    # `created` comes from the first endpoint, in priority order, whose inventory reports it.
    if not entry["created"] and details.created:
        entry["created"] = details.created


def _dmr_details(pulled: PulledModel) -> dict[str, Any]:
    """DMR's `dmr` object of a listing entry (all fields optional), from the pulled model's details."""
    fields: dict[str, Any] = {
        "context_window": pulled.context_size,
        "architecture": pulled.architecture,
        "parameters": pulled.parameters,
        "quantization": pulled.quantization,
        "size": pulled.size,
    }
    return {k: v for k, v in fields.items() if v is not None}


def openai_models(table: RoutingTable) -> dict[str, Any]:
    """`/engines/v1/models` and `/v1/models`: DMR's OpenAI-style list, one entry per model, with `pier` details.

    `dmr` (and `created`) come from the first endpoint, in priority order, whose inventory has them.
    """
    entries: dict[str, dict[str, Any]] = {}
    for model, target, details in _served(table):
        entry = entries.get(model)
        if entry is None:
            entry = entries[model] = {
                "id": model,
                "object": "model",
                "created": 0,
                "owned_by": "docker" if target.type == DMR_TYPE else "pier",
                "pier": {"endpoints": [], "loaded_on": []},
            }
        if details is not None:
            _take_created(entry, details)
            if "dmr" not in entry and (dmr := _dmr_details(details)):
                entry["dmr"] = dmr
        entry["pier"]["endpoints"].append(target.name)
        if model in target.loaded:
            entry["pier"]["loaded_on"].append(target.name)
    return {"object": "list", "data": [entries[m] for m in sorted(entries)]}


def anthropic_models(table: RoutingTable) -> dict[str, Any]:
    """`/anthropic/v1/models`: the same models in Anthropic's list shape (one page holds them all)."""
    data = []
    for entry in openai_models(table)["data"]:
        created = datetime.fromtimestamp(int(entry.get("created") or 0), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        data.append({"type": "model", "id": entry["id"], "display_name": entry["id"], "created_at": created})
    first = data[0]["id"] if data else None
    last = data[-1]["id"] if data else None
    return {"data": data, "has_more": False, "first_id": first, "last_id": last}


def _aliases_by_model(table: RoutingTable) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for alias, real_names in table.config.model_aliases.items():
        for real in real_names:
            out.setdefault(normalise_model(real), []).append(alias)
    return out


def _availability(target: Target, model: str) -> str:
    if model in target.loaded:
        return "loaded"
    if target.state is not None and any(m.name == model and m.loading for m in target.state.loaded):
        return "loading"
    return "available"


def olla_models(table: RoutingTable) -> dict[str, Any]:
    """`/olla/models`: Olla's unified list (OpenAI list with an `olla` object per model)."""
    aliases = _aliases_by_model(table)
    entries: dict[str, dict[str, Any]] = {}
    for model, target, details in _served(table):
        entry = entries.get(model)
        if entry is None:
            entry = entries[model] = {
                "id": model,
                "object": "model",
                "created": 0,
                "owned_by": "pier",
                "olla": {"aliases": list(aliases.get(model, [])), "availability": []},
            }
        olla = entry["olla"]
        if details is not None:
            _take_created(entry, details)
            for tag in details.tags:
                if tag != model and tag not in olla["aliases"]:
                    olla["aliases"].append(tag)
            for key, value in (
                ("format", details.format),
                ("parameter_size", details.parameters),
                ("quantization", details.quantization),
                ("max_context_length", details.context_size),
            ):
                if value is not None:
                    olla.setdefault(key, value)
        olla["availability"].append({"endpoint": target.name, "url": target.url, "state": _availability(target, model)})
    return {"object": "list", "data": [entries[m] for m in sorted(entries)]}


def merged_inventory(table: RoutingTable) -> list[dict[str, Any]]:
    """`/models`: DMR's management listing merged by tag across routable endpoints, each with `endpoints`."""
    merged: dict[str, dict[str, Any]] = {}
    for target in _routable(table):
        for name, pulled in _pulled(target).items():
            entry = merged.get(name)
            if entry is None:
                entry = merged[name] = {
                    "id": pulled.id or name,
                    "tags": [],
                    "created": pulled.created or 0,
                    "config": {},
                    "endpoints": [],
                }
            for tag in pulled.tags or (name,):
                if tag not in entry["tags"]:
                    entry["tags"].append(tag)
            for key, value in (
                ("format", pulled.format),
                ("quantization", pulled.quantization),
                ("parameters", pulled.parameters),
                ("architecture", pulled.architecture),
                ("size", pulled.size),
                ("context_size", pulled.context_size),
            ):
                if value is not None:
                    entry["config"].setdefault(key, value)
            entry["endpoints"].append(target.name)
    return [merged[name] for name in sorted(merged)]


def _ps_entry(model: LoadedModel, endpoint: str) -> dict[str, Any]:
    """One `/engines/ps` row in DMR's shape (`in_use`, `loading`, `keep_alive` omitted when false or empty)."""
    row: dict[str, Any] = {"backend_name": model.backend or "", "model_name": model.name}
    if model.mode is not None:
        row["mode"] = model.mode
    if model.last_used is not None:
        row["last_used"] = model.last_used
    if model.in_use:
        row["in_use"] = True
    if model.loading:
        row["loading"] = True
    if model.keep_alive:
        row["keep_alive"] = model.keep_alive
    row["endpoint"] = endpoint
    return row


def merged_ps(table: RoutingTable) -> list[dict[str, Any]]:
    """`/engines/ps`: what is loaded (or loading) on every routable endpoint, each row tagged with it."""
    rows: list[dict[str, Any]] = []
    for target in _routable(table):
        if target.state is None:
            continue
        rows.extend(_ps_entry(m, target.name) for m in target.state.loaded if m.name in target.models)
    return rows


def models_status(table: RoutingTable) -> dict[str, dict[str, Any]]:
    """`/internal/status/models`: for each model, where it is listed, pulled, loaded, loading, routable, stale,
    and its warm-up state per endpoint (`warm`: phase, policy, whether it fits the runner limit, the last
    error and the next retry, the measured load time)."""
    out: dict[str, dict[str, Any]] = {}

    def row(model: str) -> dict[str, Any]:
        return out.setdefault(
            model,
            {
                "listed_on": [],
                "pulled_on": [],
                "loaded_on": [],
                "loading_on": [],
                "routable_on": [],
                "stale_on": [],
                "warm": {},
            },
        )

    for target in table.ordered_targets():
        state = target.state
        if state is None:
            continue
        for model in state.models:
            if model in target.models:
                row(model)["listed_on"].append(target.name)
        for pulled in state.pulled:
            if pulled.name in target.models:
                row(pulled.name)["pulled_on"].append(target.name)
        for loaded in state.loaded:
            if loaded.name in target.models:
                key = "loading_on" if loaded.loading else "loaded_on"
                if target.name not in row(loaded.name)[key]:
                    row(loaded.name)[key].append(target.name)
        for model in target.models:
            if target.routable:
                row(model)["routable_on"].append(target.name)
            elif not target.known:
                row(model)["stale_on"].append(target.name)
    for (endpoint, model), warm in sorted(table.warm.items()):
        row(model)["warm"][endpoint] = warm.model_dump(
            mode="json",
            include={
                "phase", "policy", "fits", "detail", "last_error", "next_retry_at", "failures", "load_time_s",
                "method", "updated_at",
            },
        )  # fmt: skip
    return {model: out[model] for model in sorted(out)}
