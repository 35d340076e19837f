"""Endpoint profiles: what each kind of model server looks like (paths, timeouts, concurrency).

Profiles ship as YAML beside this module. A user overrides one the way Olla allows: a file
`<name>-custom.yaml` (or `<name>.yaml`) in the profiles directory replaces the shipped keys it names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.durations import Seconds
from shared.errors import ConfigError

SHIPPED_DIR = Path(__file__).parent / "profiles"


class AnthropicSupport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    native: bool = False
    messages_path: str = "/anthropic/v1/messages"
    count_tokens_path: str = "/anthropic/v1/messages/count_tokens"


class ProfileTimeouts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    connect: Seconds = Field(default=5.0, gt=0)
    response_header: Seconds = Field(default=300.0, gt=0)
    request: Seconds = Field(default=300.0, gt=0)


class ProfileConcurrency(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_concurrent_requests: int = Field(default=0, ge=0)  # 0 = no limit


class Profile(BaseModel):
    """One kind of endpoint. Paths are relative to the endpoint's base URL; `None` means the route does not exist."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    aliases: tuple[str, ...] = ()
    default_port: int = 80
    default_priority: int = 100
    api_prefix: str = "/v1"
    health_check_path: str = "/v1/models"
    model_path: str = "/v1/models"
    inventory_path: str | None = None
    loaded_path: str | None = None
    engines_path: str | None = None
    version_path: str | None = None
    engine_paths: bool = False
    # DMR (v1.0.15+) loads a model and answers 200 with no body for a request carrying `X-Preload-Only: true`.
    preload_only_header: bool = False
    anthropic: AnthropicSupport = AnthropicSupport()
    timeouts: ProfileTimeouts = ProfileTimeouts()
    concurrency: ProfileConcurrency = ProfileConcurrency()


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("PIER_PROFILES_DIR", str(path), f"cannot read profile: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError("PIER_PROFILES_DIR", str(path), f"invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("PIER_PROFILES_DIR", str(path), "a profile must be a mapping")
    return data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class ProfileSet:
    """The profiles in force, looked up by name or alias (`dmr`, `vllm`, …)."""

    def __init__(self, profiles: dict[str, Profile]) -> None:
        self._by_name: dict[str, Profile] = {}
        for profile in profiles.values():
            for key in (profile.name, *profile.aliases):
                self._by_name[key.lower()] = profile

    def get(self, type_name: str) -> Profile | None:
        return self._by_name.get(type_name.lower())

    def names(self) -> list[str]:
        return sorted(self._by_name)


def load_profiles(custom_dir: Path | None = None) -> ProfileSet:
    """Load the shipped profiles, then apply `*-custom.yaml` / same-name overrides from `custom_dir`."""
    raw: dict[str, dict[str, Any]] = {}
    for path in sorted(SHIPPED_DIR.glob("*.yaml")):
        data = _read_yaml(path)
        raw[str(data.get("name", path.stem))] = data
    if custom_dir is not None:
        if not custom_dir.is_dir():
            raise ConfigError("PIER_PROFILES_DIR", str(custom_dir), "not a readable directory")
        for path in sorted(custom_dir.glob("*.yaml")):
            data = _read_yaml(path)
            name = str(data.get("name", path.stem.removesuffix("-custom")))
            data["name"] = name
            raw[name] = _merge(raw.get(name, {}), data)
    profiles: dict[str, Profile] = {}
    for name, data in raw.items():
        try:
            profiles[name] = Profile.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"profile {name}: {loc}", err.get("input"), err["msg"]) from exc
    return ProfileSet(profiles)
