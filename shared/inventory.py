"""Parsing what an endpoint lists into `shared.state` models (health: every probe; warm-up: `/engines/ps`).

Each parser raises `InventoryError` for a body that does not have the route's shape ("garbage"); fields DMR
added over time (the `dmr` object, `loading`, `keep_alive`) are optional.
"""

from __future__ import annotations

from typing import Any

from shared.names import normalise_model
from shared.state import LoadedModel, PulledModel


class InventoryError(ValueError):
    """A route answered 2xx with a body that is not what that route returns."""


def parse_model_list(body: object) -> tuple[str, ...]:
    """`GET /engines/v1/models` (OpenAI list): normalised, de-duplicated ids in listing order."""
    data: object
    if isinstance(body, dict) and "data" in body:
        data = body["data"]
    elif isinstance(body, dict) and "models" in body:  # Ollama's /api/tags shape, for custom model paths
        data = body["models"]
    else:
        raise InventoryError("expected an object with a `data` list")
    if data is None:  # some servers send `"data": null` for an empty list
        return ()
    if not isinstance(data, list):
        raise InventoryError("`data` is not a list")
    names: dict[str, None] = {}
    for item in data:
        raw = _first_str(item, "id", "name", "model") if isinstance(item, dict) else None
        if raw is None:
            raise InventoryError("a model entry has no id")
        name = normalise_model(raw)
        if name:
            names[name] = None
    return tuple(names)


def parse_pulled(body: object) -> tuple[PulledModel, ...]:
    """`GET /models` (DMR management listing): one entry per stored model, named by its first tag."""
    if body is None:
        return ()
    if not isinstance(body, list):
        raise InventoryError("expected a list of models")
    out: dict[str, PulledModel] = {}
    for item in body:
        if not isinstance(item, dict):
            raise InventoryError("a model entry is not an object")
        tags = tuple(normalise_model(t) for t in item.get("tags") or () if isinstance(t, str) and t.strip())
        model_id = item.get("id") if isinstance(item.get("id"), str) else None
        name = tags[0] if tags else model_id
        if not name:
            continue  # untagged and without id: nothing a request could name
        raw_config = item.get("config")
        config: dict[str, Any] = raw_config if isinstance(raw_config, dict) else {}
        out[name] = PulledModel(
            name=name,
            tags=tags,
            id=model_id,
            format=_opt_str(config.get("format")),
            size=_opt_str(config.get("size")),
            context_size=_opt_int(config.get("context_size")),
            created=_opt_int(item.get("created")),
            architecture=_opt_str(config.get("architecture")),
            parameters=_opt_str(config.get("parameters")),
            quantization=_opt_str(config.get("quantization")),
        )
    return tuple(out.values())


def parse_loaded(body: object) -> tuple[LoadedModel, ...]:
    """`GET /engines/ps`: what is in memory now, with the `loading` flag (absent = false)."""
    if body is None:
        return ()
    if not isinstance(body, list):
        raise InventoryError("expected a list of runners")
    out: list[LoadedModel] = []
    for item in body:
        if not isinstance(item, dict):
            raise InventoryError("a runner entry is not an object")
        raw = _first_str(item, "model_name", "model", "name")
        if raw is None:
            raise InventoryError("a runner entry has no model_name")
        out.append(
            LoadedModel(
                name=normalise_model(raw),
                backend=_opt_str(item.get("backend_name")),
                mode=_opt_str(item.get("mode")),
                loading=item.get("loading") is True,
                in_use=item.get("in_use") is True,
                keep_alive=_opt_str(item.get("keep_alive")),
                last_used=_opt_str(item.get("last_used")),
            )
        )
    out.sort(key=lambda m: (m.name, m.backend or "", m.mode or ""))
    return tuple(out)


def parse_engines(body: object) -> dict[str, str]:
    """`GET /engines/status`: engine name -> status text."""
    if not isinstance(body, dict):
        raise InventoryError("expected an object of engine statuses")
    return {str(k): str(v) for k, v in sorted(body.items())}


def parse_version(body: object) -> str | None:
    """`GET /version` (DMR) or `/api/version` (Ollama): `{"version": "vX"}`."""
    if not isinstance(body, dict):
        raise InventoryError("expected an object with `version`")
    return _opt_str(body.get("version"))


def loaded_signature(loaded: tuple[LoadedModel, ...]) -> frozenset[tuple[str, str | None, bool]]:
    """What counts as a change of the loaded set: a model in or out, or its loading flag flipping.

    `in_use` and `last_used` change with every request; they are kept in the state but are not events.
    """
    return frozenset((m.name, m.backend, m.loading) for m in loaded)


def _first_str(item: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = item.get(name)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _opt_str(value: object) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _opt_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
