"""One configured endpoint, with Olla's per-endpoint keys, resolved against its profile."""

from __future__ import annotations

import base64
import fnmatch
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.durations import Seconds

SECRETS_DIR = Path("/run/secrets")


def read_secret(path_text: str) -> str:
    """Read a secret file; a bare name is looked up in /run/secrets (Docker and Swarm secrets)."""
    path = Path(path_text)
    if not path.is_absolute() and not path.exists():
        path = SECRETS_DIR / path_text
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from exc


class Auth(BaseModel):
    """Credentials Pier adds to every request it sends the endpoint (the client's own are never forwarded)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["basic", "bearer", "api_key"]
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    token: str | None = None
    token_file: str | None = None
    key: str | None = None
    key_file: str | None = None
    header: str = "X-API-Key"

    @model_validator(mode="before")
    @classmethod
    def _resolve_files(cls, data: object) -> object:
        # `*_file` keys (Olla's, and Docker secrets) are read once, at load time.
        if isinstance(data, dict):
            data = dict(data)
            for field in ("password", "token", "key"):
                file_value = data.get(f"{field}_file")
                if file_value and not data.get(field):
                    data[field] = read_secret(str(file_value))
        return data

    @model_validator(mode="after")
    def _complete(self) -> Auth:
        if self.type == "basic" and (self.username is None or self.password is None):
            raise ValueError("basic auth needs username and password (or password_file)")
        if self.type == "bearer" and not self.token:
            raise ValueError("bearer auth needs token (or token_file)")
        if self.type == "api_key" and not self.key:
            raise ValueError("api_key auth needs key (or key_file)")
        return self

    def headers(self) -> dict[str, str]:
        if self.type == "basic":
            raw = f"{self.username}:{self.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        if self.type == "bearer":
            return {"Authorization": f"Bearer {self.token}"}
        return {self.header: self.key or ""}


class ModelFilter(BaseModel):
    """Glob patterns on normalised model names; exclude wins over include."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def allows(self, name: str) -> bool:
        if any(fnmatch.fnmatchcase(name, pat) for pat in self.exclude):
            return False
        return not self.include or any(fnmatch.fnmatchcase(name, pat) for pat in self.include)


class EndpointConfig(BaseModel):
    """An endpoint as written in the config file (Olla's keys plus Pier's optional overrides)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    url: str
    name: str = Field(min_length=1)
    type: str = "docker-model-runner"
    priority: int | None = Field(default=None, ge=0)
    model_url: str | None = None
    health_check_url: str | None = None
    check_interval: Seconds = Field(default=5.0, ge=1.0)
    check_timeout: Seconds = Field(default=2.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)
    auth: Auth | None = None
    model_filter: ModelFilter = ModelFilter()
    # Pier's additions (Olla has them only in profiles, and ignores them there).
    max_concurrent_requests: int | None = Field(default=None, ge=0)
    request_timeout: Seconds | None = Field(default=None, gt=0)
    response_header_timeout: Seconds | None = Field(default=None, gt=0)
    # Olla keys Pier accepts and does not need: kept so an Olla file loads unchanged.
    preserve_path: bool | None = None

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError("has an invalid port") from exc
        return value.rstrip("/")

    @field_validator("check_interval", "check_timeout", mode="after")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @model_validator(mode="after")
    def _timeout_below_interval(self) -> EndpointConfig:
        if self.check_timeout >= self.check_interval:
            raise ValueError(
                f"check_timeout ({self.check_timeout:g}s) must be less than check_interval ({self.check_interval:g}s)"
            )
        return self

    def request_headers(self) -> dict[str, str]:
        """Headers Pier adds to every request to this endpoint: configured headers, then auth."""
        merged = dict(self.headers)
        if self.auth is not None:
            merged.update(self.auth.headers())
        return merged
