"""The emulator's switches: one dataclass, filled from the command line and updated through the admin route."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

VALID_ENGINES = ("llama.cpp", "vllm", "mlx", "sglang", "diffusers")
LIST_MODES = ("pulled", "loaded")


class ConfigError(ValueError):
    """A switch has a bad value; the message names the key."""


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@dataclass
class EmulatorConfig:
    """Every behaviour switch. Times are in milliseconds/seconds as their names say."""

    host: str = "127.0.0.1"
    port: int = 0
    admin_port: int | None = None
    name: str = "dmr"
    models: list[str] = field(default_factory=lambda: ["ai/smollm2"])
    pullable: list[str] = field(default_factory=lambda: ["ai/*"])
    list_mode: str = "pulled"
    no_ps: bool = False
    version: str = "v1.2.6"
    load_time_ms: float = 200.0
    model_load_time_ms: dict[str, float] = field(default_factory=dict)
    keep_alive_s: float = 300.0
    max_runners: int = field(default_factory=lambda: min(os.cpu_count() or 1, 8))
    chunks: int = 5
    chunk_interval_ms: float = 10.0
    first_byte_delay_ms: float = 0.0
    # Prefill cost of each prompt token not already in the slot's prompt cache (0: prefill is free).
    prefill_ms_per_token: float = 0.0
    pull_time_ms: float = 50.0
    pull_error: str | None = None
    engines: list[str] = field(default_factory=lambda: ["llama.cpp"])
    allowed_origins: list[str] = field(default_factory=list)
    # Old DMR (<= v1.0.10): requests for a model still loading get llama.cpp's 503 `Loading model`.
    loading_503: bool = False
    # The request log keeps the newest this many records (counters count them all).
    log_limit: int = 20000
    # Models whose load fails (500 `unable to load runner: …`), e.g. too large for the machine.
    fail_models: list[str] = field(default_factory=list)
    # Generation slots per runner (llama.cpp's --parallel; DMR's default 1: one request generates at a time).
    # A model's `_configure` runtime-flags override it; a change applies to runners started afterwards.
    parallel: int = 1
    # False: no Anthropic Messages routes (404), like llama-server before it had them, vLLM or LM Studio.
    anthropic: bool = True
    # llama-server's `POST /tokenize` ({"content": ...} -> {"tokens": [...]}); DMR does not expose it.
    tokenize: bool = False
    # Chat replies start with `reasoning_content` (a thinking model behind llama.cpp's reasoning parser).
    reasoning: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a subset of switches (admin route); raises ConfigError naming the first bad key."""
        known = {f.name: f for f in fields(self)}
        staged = EmulatorConfig(**asdict(self))
        for key, value in changes.items():
            if key in ("host", "port", "admin_port"):
                raise ConfigError(f"{key}: fixed at start")
            if key not in known:
                raise ConfigError(f"{key}: unknown switch")
            setattr(staged, key, _coerce(key, value, getattr(self, key)))
        staged.validate()
        for key in changes:
            setattr(self, key, getattr(staged, key))

    def validate(self) -> None:
        if self.list_mode not in LIST_MODES:
            raise ConfigError(f"list_mode: must be one of {', '.join(LIST_MODES)}")
        for engine in self.engines:
            if engine not in VALID_ENGINES:
                raise ConfigError(f"engines: unknown engine {engine!r}")
        if self.max_runners < 1:
            raise ConfigError("max_runners: must be >= 1")
        if self.parallel < 1:
            raise ConfigError("parallel: must be >= 1")
        if self.chunks < 1:
            raise ConfigError("chunks: must be >= 1")
        if self.log_limit < 0:
            raise ConfigError("log_limit: must be >= 0")
        delays = ("load_time_ms", "chunk_interval_ms", "first_byte_delay_ms", "prefill_ms_per_token", "pull_time_ms")
        for key in delays:
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be >= 0")


_INT_KEYS = {"max_runners", "chunks", "log_limit", "parallel"}
_OPTIONAL_STR_KEYS = {"pull_error"}


def _coerce(key: str, value: Any, current: Any) -> Any:
    """Check one admin value against the switch's type; lists also accept the CLI's comma strings."""
    if key in _OPTIONAL_STR_KEYS:
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string or null")
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false")
        return value
    if key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer")
        return value
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number")
        return float(value)
    if isinstance(current, str):
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string")
        return value
    if isinstance(current, list):
        if isinstance(value, str):
            return _split(value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"{key}: expected a list of strings or a comma-separated string")
    if isinstance(current, dict):
        ok = isinstance(value, dict) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()
        )
        if not ok:
            raise ConfigError(f"{key}: expected an object of numbers")
        return {str(k): float(v) for k, v in value.items()}
    raise ConfigError(f"{key}: cannot be set")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.emulator", description="Docker Model Runner emulator")
    d = EmulatorConfig()
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--admin-port", type=int, default=None)
    p.add_argument("--name", default=d.name)
    p.add_argument("--models", default=",".join(d.models), help="pulled models, comma-separated ('' for none)")
    p.add_argument("--pullable", default=",".join(d.pullable), help="glob patterns /models/create accepts")
    p.add_argument("--list-mode", choices=LIST_MODES, default=d.list_mode)
    p.add_argument("--no-ps", action="store_true", help="old DMR: /engines/ps and /version answer 404")
    p.add_argument("--version", default=d.version)
    p.add_argument("--load-time-ms", type=float, default=d.load_time_ms)
    p.add_argument("--keep-alive-s", type=float, default=d.keep_alive_s)
    p.add_argument("--max-runners", type=int, default=d.max_runners)
    p.add_argument("--chunks", type=int, default=d.chunks)
    p.add_argument("--chunk-interval-ms", type=float, default=d.chunk_interval_ms)
    p.add_argument("--first-byte-delay-ms", type=float, default=d.first_byte_delay_ms)
    p.add_argument(
        "--prefill-ms-per-token", type=float, default=d.prefill_ms_per_token,
        help="prefill time per prompt token not in the slot's prompt cache",
    )  # fmt: skip
    p.add_argument("--pull-time-ms", type=float, default=d.pull_time_ms)
    p.add_argument("--engines", default=",".join(d.engines))
    p.add_argument("--allowed-origins", default="", help="extra CORS origins ('*' allows any)")
    p.add_argument("--loading-503", action="store_true", help="old DMR: 503 `Loading model` while loading")
    p.add_argument("--log-limit", type=int, default=d.log_limit, help="request log records kept")
    p.add_argument("--fail-models", default="", help="models whose load fails with 500")
    p.add_argument("--parallel", type=int, default=d.parallel, help="generation slots per runner (default 1)")
    p.add_argument("--no-anthropic", action="store_true", help="no Anthropic Messages routes (404)")
    p.add_argument("--tokenize", action="store_true", help="llama-server's POST /tokenize")
    p.add_argument("--reasoning", action="store_true", help="chat replies carry reasoning_content first")
    return p


def from_args(argv: list[str] | None = None) -> EmulatorConfig:
    """Parse the command line; a bad value exits 2 with one line (argparse)."""
    p = parser()
    ns = p.parse_args(argv)
    config = EmulatorConfig(
        host=ns.host,
        port=ns.port,
        admin_port=ns.admin_port,
        name=ns.name,
        models=_split(ns.models),
        pullable=_split(ns.pullable),
        list_mode=ns.list_mode,
        no_ps=ns.no_ps,
        version=ns.version,
        load_time_ms=ns.load_time_ms,
        keep_alive_s=ns.keep_alive_s,
        max_runners=ns.max_runners,
        chunks=ns.chunks,
        chunk_interval_ms=ns.chunk_interval_ms,
        first_byte_delay_ms=ns.first_byte_delay_ms,
        prefill_ms_per_token=ns.prefill_ms_per_token,
        pull_time_ms=ns.pull_time_ms,
        engines=_split(ns.engines),
        allowed_origins=_split(ns.allowed_origins),
        loading_503=ns.loading_503,
        fail_models=_split(ns.fail_models),
        log_limit=ns.log_limit,
        parallel=ns.parallel,
        anthropic=not ns.no_anthropic,
        tokenize=ns.tokenize,
        reasoning=ns.reasoning,
    )
    try:
        config.validate()
    except ConfigError as exc:
        p.error(str(exc))
    return config
