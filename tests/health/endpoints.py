"""Real resolved endpoints for the pure tests (built by the same config code the services use)."""

from __future__ import annotations

from typing import Any

from shared.config import Endpoint, build_config
from shared.profiles import load_profiles

PROFILES = load_profiles()


def endpoint(name: str = "dmr", url: str = "http://127.0.0.1:1", **extra: Any) -> Endpoint:
    config = build_config({"endpoints": [{"name": name, "url": url, **extra}]}, PROFILES)
    return config.endpoints[0]
