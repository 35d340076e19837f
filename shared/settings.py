"""Settings every service shares (env prefix `PIER_`). Each service subclasses `CommonSettings` once."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config import PierConfig, build_config, read_config_file
from shared.durations import Seconds
from shared.endpoints import SECRETS_DIR
from shared.profiles import load_profiles
from shared.redisconn import RedisTarget, build_target

DEFAULT_DMR_URL = "http://model-runner.docker.internal"


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class CommonSettings(BaseSettings):
    """What all three services read. Built once in `__main__` with `Settings.load()` and passed down."""

    model_config = SettingsConfigDict(env_prefix="PIER_", extra="ignore", frozen=True)

    redis_url: str = "redis://localhost:6379/0"
    # Logging in and TLS (docs/security.md#redis). Secrets are SecretStr: never printed, logged or exported.
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_password_file: Path | None = None  # e.g. a Compose secret in /run/secrets
    redis_ca_file: Path | None = None
    redis_cert_file: Path | None = None  # with redis_key_file: mutual TLS
    redis_key_file: Path | None = None
    # High availability: Sentinels (host:port, comma-separated) and the master's name replace PIER_REDIS_URL.
    redis_sentinels: str | None = None
    redis_sentinel_master: str | None = None
    redis_sentinel_password: SecretStr | None = None
    config_file: Path | None = None
    host: str = "0.0.0.0"
    # The single endpoint used when the config file lists none. Unset: the health worker probes the
    # usual DMR addresses (model-runner.docker.internal first) and adopts the first that answers.
    dmr_url: str | None = None
    profiles_dir: Path | None = None
    load_balancer: str | None = None
    routing_strategy: str | None = None
    log_level: str = "info"
    log_format: str = "text"
    instance_id: str = Field(default_factory=_default_instance_id)
    # `--check` fails once this service has not beaten its heartbeat for this long (workers beat every second).
    heartbeat_ttl_s: Seconds = Field(default=5.0, ge=2.0)
    # PIER_LEASE_TTL_S: a leader lease (health, warm-up) lives this long without renewal; a standby takes over
    # within 2x this.
    lease_ttl_s: Seconds = Field(default=5.0, ge=1.0)

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Build from the environment; Docker/Swarm secrets in /run/secrets are read when present."""
        if SECRETS_DIR.is_dir():
            overrides.setdefault("_secrets_dir", SECRETS_DIR)
        return cls(**overrides)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @model_validator(mode="after")
    def _redis_combination(self) -> Self:
        build_target(self)  # a ConfigError naming the setting when the Redis settings do not fit together
        return self

    def redis_target(self) -> RedisTarget:
        """Where Redis is and how to log in (`shared.redisconn.connect` takes it)."""
        return build_target(self)

    @field_validator("dmr_url")
    @classmethod
    def _dmr_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value.rstrip("/")

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("must be debug, info, warning or error")
        return value.lower()

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        if value.lower() not in ("text", "json"):
            raise ValueError("must be text or json")
        return value.lower()

    def pier_config(self) -> PierConfig:
        """Read and resolve the config file (if any); `PIER_DMR_URL` fills in when it lists no endpoint."""
        profiles = load_profiles(self.profiles_dir)
        data = read_config_file(self.config_file) if self.config_file is not None else {}
        source = str(self.config_file) if self.config_file else "environment"
        if self.dmr_url is not None and not _lists_endpoints(data):
            data = {**data, "endpoints": [{"url": self.dmr_url, "name": "dmr", "type": "docker-model-runner"}]}
            source = "PIER_DMR_URL"
        return build_config(
            data,
            profiles,
            load_balancer=self.load_balancer,
            routing_strategy=self.routing_strategy,
            source=source,
        )


def _lists_endpoints(data: dict[str, Any]) -> bool:
    if data.get("endpoints"):
        return True
    discovery = data.get("discovery")
    static = discovery.get("static") if isinstance(discovery, dict) else None
    return isinstance(static, dict) and bool(static.get("endpoints"))
