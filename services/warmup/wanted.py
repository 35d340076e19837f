"""What to keep warm: `PIER_WARMUP_MODELS` and the config file's `warmup:` section, in priority order.

```yaml
warmup:
  models:
    - ai/smollm2                                       # keep, on every endpoint that has it
    - {model: ai/qwen3, policy: pin, endpoints: [dmr-a]}
    - {model: ai/gemma3, policy: preload}
  runner_limits: {dmr-a: 2}                            # else PIER_WARMUP_RUNNER_LIMIT
```
The file's entries come first, then the environment's (policy `keep`); a model listed twice keeps its first
entry. The order is the priority when the wanted set does not fit an endpoint's runner limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.errors import ConfigError
from shared.names import normalise_model
from shared.state import WarmPolicy


@dataclass(frozen=True, slots=True)
class Wanted:
    model: str  # normalised
    policy: WarmPolicy = WarmPolicy.KEEP
    endpoints: frozenset[str] | None = None  # None: every endpoint that has it

    def applies_to(self, endpoint: str) -> bool:
        return self.endpoints is None or endpoint in self.endpoints


@dataclass(frozen=True, slots=True)
class WarmupConfig:
    wanted: tuple[Wanted, ...] = ()
    runner_limits: Mapping[str, int] | None = None  # endpoint name -> runner limit

    def for_endpoint(self, endpoint: str) -> tuple[Wanted, ...]:
        return tuple(w for w in self.wanted if w.applies_to(endpoint))


def _entry(key: str, raw: object) -> Wanted:
    if isinstance(raw, str):
        if not raw.strip():
            raise ConfigError(key, raw, "must name a model")
        return Wanted(normalise_model(raw))
    if not isinstance(raw, dict):
        raise ConfigError(key, raw, "must be a model name or a mapping with `model`")
    unknown = set(raw) - {"model", "policy", "endpoints"}
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}", raw, "unknown key (model, policy, endpoints)")
    model = raw.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"{key}.model", model, "must name a model")
    policy_raw = raw.get("policy", WarmPolicy.KEEP.value)
    try:
        policy = WarmPolicy(str(policy_raw).strip().lower())
    except ValueError:
        raise ConfigError(f"{key}.policy", policy_raw, "must be pin, keep or preload") from None
    endpoints_raw = raw.get("endpoints")
    endpoints: frozenset[str] | None = None
    if endpoints_raw is not None:
        names = [endpoints_raw] if isinstance(endpoints_raw, str) else endpoints_raw
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"{key}.endpoints", endpoints_raw, "must be an endpoint name or a list of them")
        endpoints = frozenset(names)
    return Wanted(normalise_model(model), policy, endpoints)


def _limits(raw: object) -> dict[str, int] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("warmup.runner_limits", raw, "must map an endpoint name to a number of runners")
    out: dict[str, int] = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"warmup.runner_limits.{name}", value, "must be a whole number >= 1")
        out[str(name)] = value
    return out


def build_warmup_config(section: object, env_models: Iterable[str]) -> WarmupConfig:
    """The `warmup:` section (None when absent) plus `PIER_WARMUP_MODELS`; raises ConfigError naming the key."""
    data: dict[str, Any]
    if section is None:
        data = {}
    elif isinstance(section, dict):
        data = section
    else:
        raise ConfigError("warmup", section, "must be a mapping with `models`")
    unknown = set(data) - {"models", "runner_limits"}
    if unknown:
        raise ConfigError(f"warmup.{sorted(unknown)[0]}", data, "unknown key (models, runner_limits)")
    raw_models = data.get("models") or []
    if not isinstance(raw_models, list):
        raise ConfigError("warmup.models", raw_models, "must be a list")
    wanted: list[Wanted] = []
    seen: set[str] = set()
    entries = [_entry(f"warmup.models[{i}]", raw) for i, raw in enumerate(raw_models)]
    entries += [Wanted(normalise_model(name)) for name in env_models]
    for entry in entries:
        if entry.model not in seen:
            seen.add(entry.model)
            wanted.append(entry)
    return WarmupConfig(tuple(wanted), _limits(data.get("runner_limits")))
