"""The health worker's settings: `CommonSettings` plus probing, lease, discovery and zero-config knobs.

Every field reads the environment variable `PIER_<FIELD NAME>`; durations accept `500ms`, `10s`, `5m`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from shared.durations import Seconds
from shared.settings import CommonSettings

DEFAULT_ID_FILE = Path("/tmp/pier-health.id")


class HealthSettings(CommonSettings):
    """Settings of `python -m services.health`. Built once in `__main__`, passed down."""

    # PIER_BUSY_THRESHOLD_S: a probe that answers slower than this marks the endpoint `busy` (seconds).
    busy_threshold_s: Seconds = Field(default=10.0, gt=0)
    # PIER_HEALTH_ID_FILE: where the running worker records its instance id, so that `--check` (a separate
    # process in the same container) knows whose heartbeat to look at.
    health_id_file: Path = DEFAULT_ID_FILE
    # PIER_DOCKER_DISCOVERY: auto = use the Docker socket when it answers; on = insist (retry, warn); off.
    docker_discovery: Literal["auto", "on", "off"] = "auto"
    # PIER_DOCKER_HOST: Docker API address (e.g. unix:///var/run/docker.sock); unset = DOCKER_HOST or the socket.
    docker_host: str | None = None
    # PIER_DOCKER_LABEL_FILTER: comma-separated `key=value` labels a container must also carry to be discovered
    # (e.g. `com.docker.compose.project=mystack`), for several Pier stacks sharing one Docker engine.
    docker_label_filter: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # PIER_DISCOVERY_RESYNC_INTERVAL_S: full resync of discovered containers, on top of following events (seconds).
    discovery_resync_interval_s: Seconds = Field(default=30.0, ge=1.0)
    # PIER_AUTODETECT_CANDIDATES: comma-separated base URLs tried, in order, when no endpoint is configured.
    # Unset = the usual DMR addresses (see services.health.autodetect.default_candidates).
    autodetect_candidates: Annotated[tuple[str, ...], NoDecode] = ()
    # PIER_AUTODETECT_TIMEOUT_S: how long each zero-config candidate may take to answer (seconds).
    autodetect_timeout_s: Seconds = Field(default=2.0, gt=0)
    # PIER_MAX_BACKOFF_S: the longest wait between probes of a failing endpoint (seconds).
    max_backoff_s: Seconds = Field(default=60.0, ge=1.0)

    @field_validator("autodetect_candidates", mode="before")
    @classmethod
    def _split_candidates(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip().rstrip("/") for part in value.split(",") if part.strip())
        return value

    @field_validator("autodetect_candidates")
    @classmethod
    def _valid_candidates(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return value

    @field_validator("docker_label_filter", mode="before")
    @classmethod
    def _split_labels(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        labels: dict[str, str] = {}
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            key, sep, label_value = part.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"{part!r} is not key=value")
            labels[key.strip()] = label_value.strip()
        return labels

    @field_validator("docker_discovery", mode="before")
    @classmethod
    def _lower_mode(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value
