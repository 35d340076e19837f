"""The warm-up worker's settings: `CommonSettings` plus which models to keep loaded, and how often to look."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from shared.durations import Seconds
from shared.names import normalise_model
from shared.settings import CommonSettings


class WarmupSettings(CommonSettings):
    """Settings of `python -m services.warmup`. Built once in `__main__`, passed down."""

    # PIER_WARMUP_MODELS: comma-separated models to keep loaded on every routable endpoint that has them pulled.
    warmup_models: Annotated[tuple[str, ...], NoDecode] = ()
    # PIER_WARMUP_INTERVAL_S: how often the worker compares what is loaded with what should be (seconds).
    warmup_interval_s: Seconds = Field(default=15.0, ge=1.0)
    # PIER_WARMUP_TIMEOUT_S: how long one preload (a lazy model load) may take (seconds).
    warmup_timeout_s: Seconds = Field(default=300.0, gt=0)
    # PIER_WARMUP_ID_FILE: where the running worker records its instance id for `--check`.
    warmup_id_file: Path = Path("/tmp/pier-warmup.id")

    @field_validator("warmup_models", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        # From the environment it is one comma-separated string; in code, any sequence of names.
        parts = value.split(",") if isinstance(value, str) else value
        if isinstance(parts, list | tuple):
            return tuple(normalise_model(str(part)) for part in parts if str(part).strip())
        return value
