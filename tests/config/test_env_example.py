"""`.env.example` lists every setting of every service, and nothing that is not one."""

from __future__ import annotations

import re

from pydantic_settings import BaseSettings

from services.health.settings import HealthSettings
from services.router.settings import RouterSettings
from services.warmup.settings import WarmupSettings
from shared.settings import CommonSettings
from tests.harness import ROOT

# Variables compose.yaml / stack.yaml read themselves (not service settings).
COMPOSE_ONLY = {
    "PIER_IMAGE",
    "PIER_NETWORK",
    "PIER_HEALTH_REPLICAS",
    "PIER_ROUTER_REPLICAS",
}


def env_names(cls: type[BaseSettings]) -> set[str]:
    prefix = str(cls.model_config.get("env_prefix", ""))
    return {f"{prefix}{name}".upper() for name in cls.model_fields}


def listed() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    # Lines are `NAME=value` or commented-out `# NAME=value` (optional settings with no default).
    return set(re.findall(r"^#?\s*(PIER_[A-Z0-9_]+)=", text, flags=re.MULTILINE))


def test_every_setting_is_listed() -> None:
    settings = set().union(*(env_names(c) for c in (CommonSettings, RouterSettings, HealthSettings, WarmupSettings)))
    missing = settings - listed()
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_nothing_listed_is_unknown() -> None:
    settings = set().union(*(env_names(c) for c in (CommonSettings, RouterSettings, HealthSettings, WarmupSettings)))
    unknown = listed() - settings - COMPOSE_ONLY
    assert not unknown, f".env.example lists {sorted(unknown)}, which no service reads"
