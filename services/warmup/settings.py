"""The warm-up worker's settings: `CommonSettings` plus which models to keep loaded, and how often to look."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from services.warmup.wanted import WarmupConfig, build_warmup_config
from shared.config import read_config_file
from shared.durations import Seconds
from shared.names import normalise_model
from shared.settings import CommonSettings


class WarmupSettings(CommonSettings):
    """Settings of `python -m services.warmup`. Built once in `__main__`, passed down."""

    # PIER_WARMUP_MODELS: comma-separated models to keep warm (policy `keep`) on every routable endpoint that
    # has them; the config file's `warmup:` section adds models with policies (pin, keep, preload).
    warmup_models: Annotated[tuple[str, ...], NoDecode] = ()
    # PIER_WARMUP_INTERVAL_S: full re-read of the endpoint states besides the event stream (a safety net:
    # warm-up is driven by events and by each model's own refresh time).
    warmup_interval_s: Seconds = Field(default=60.0, ge=1.0)
    # PIER_WARMUP_TIMEOUT_S: how long one preload (a lazy model load) may take (seconds).
    warmup_timeout_s: Seconds = Field(default=300.0, gt=0)
    # PIER_WARMUP_ID_FILE: where the running worker records its instance id for `--check`.
    warmup_id_file: Path = Path("/tmp/pier-warmup.id")
    # PIER_WARMUP_RUNNER_LIMIT: models DMR holds at once (its min(CPUs, 8)) where `warmup.runner_limits` in the
    # config file does not name the endpoint; warm-up never wants more than this loaded on one endpoint.
    warmup_runner_limit: int = Field(default=8, ge=1)
    # PIER_WARMUP_KEEP_ALIVE_S: DMR's idle eviction time assumed when /engines/ps shows no keep_alive (DMR: 5m).
    warmup_keep_alive_s: Seconds = Field(default=300.0, gt=0)
    # PIER_WARMUP_KEEP_MARGIN_S: a `keep` model is refreshed this long before keep_alive would evict it
    # (at most a third of its keep_alive).
    warmup_keep_margin_s: Seconds = Field(default=30.0, gt=0)
    # PIER_WARMUP_BACKOFF_INITIAL_S / _MAX_S: after a failed pull or load, wait this long before the next try,
    # doubling up to the maximum.
    warmup_backoff_initial_s: Seconds = Field(default=5.0, gt=0)
    warmup_backoff_max_s: Seconds = Field(default=300.0, gt=0)
    # PIER_WARMUP_PULL: pull a wanted model an endpoint lacks (`/models/create`). Off: only pulled models warm.
    warmup_pull: bool = False
    # PIER_WARMUP_DRAIN_S: on SIGTERM, a preload in flight may finish this long (DMR aborts a load whose
    # client goes away); Compose's stop_grace_period is longer.
    warmup_drain_s: Seconds = Field(default=45.0, ge=0)

    @field_validator("warmup_models", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        # From the environment it is one comma-separated string; in code, any sequence of names.
        parts = value.split(",") if isinstance(value, str) else value
        if isinstance(parts, list | tuple):
            return tuple(normalise_model(str(part)) for part in parts if str(part).strip())
        return value

    def warmup_config(self) -> WarmupConfig:
        """The wanted models: the config file's `warmup:` section, then `PIER_WARMUP_MODELS`."""
        data = read_config_file(self.config_file) if self.config_file is not None else {}
        return build_warmup_config(data.get("warmup"), self.warmup_models)
