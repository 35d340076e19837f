"""What a key restricted to some models may see of the model listings: only those models.

A pure function over the JSON a listing route answers (OpenAI, Anthropic and Olla lists, DMR's inventory and
`/engines/ps`, and single-model entries); the gate applies it to GET answers for keys with model globs. A
single model outside the globs is HIDDEN: the gate answers 404, as for a model that does not exist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

Allows = Callable[[str], bool]


class _Hidden:
    pass


HIDDEN: Final = _Hidden()


def _entry_allowed(entry: Any, allows: Allows) -> bool | None:
    """True/False for an entry that names a model; None for anything else (left as it is)."""
    if not isinstance(entry, dict):
        return None
    tags = entry.get("tags")
    if isinstance(tags, list):  # DMR inventory: a model under several tags
        return any(isinstance(tag, str) and allows(tag) for tag in tags)
    name = entry.get("model_name")  # DMR /engines/ps
    if isinstance(name, str):
        return allows(name)
    model_id = entry.get("id")
    if isinstance(model_id, str) and (entry.get("object") == "model" or entry.get("type") == "model"):
        return allows(model_id)
    return None


def visible(data: Any, allows: Allows) -> Any:
    """`data` with the models `allows` refuses left out (HIDDEN for a single refused model)."""
    if isinstance(data, list):
        return [entry for entry in data if _entry_allowed(entry, allows) is not False]
    if not isinstance(data, dict):
        return data
    listed = data.get("data")
    if isinstance(listed, list):
        kept = [entry for entry in listed if _entry_allowed(entry, allows) is not False]
        out = {**data, "data": kept}
        if "first_id" in data:  # Anthropic's page markers follow what is shown
            out["first_id"] = kept[0].get("id") if kept else None
            out["last_id"] = kept[-1].get("id") if kept else None
        return out
    if _entry_allowed(data, allows) is False:
        return HIDDEN
    return data
