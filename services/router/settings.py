"""The router's settings: `CommonSettings` plus the proxy's limits, timeouts and process model (env prefix PIER_)."""

from __future__ import annotations

from typing import Annotated, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import NoDecode

from services.router.access import (
    DEFAULT_INTERNAL_CIDRS,
    KeyTable,
    build_keys,
    parse_inline_keys,
    parse_networks,
    read_key_file,
)
from services.router.sessions import DEFAULT_SOURCES, Source
from shared.durations import Seconds
from shared.endpoints import read_secret
from shared.errors import ConfigError
from shared.settings import CommonSettings

MIB = 1024 * 1024


class RouterSettings(CommonSettings):
    """Settings of `python -m services.router`. Built once in `__main__`, passed down."""

    # PIER_PORT: where the router listens (Olla's port, so Olla users change nothing).
    port: int = Field(default=40114, ge=1, le=65535)
    # PIER_WORKERS: router processes sharing the port (SO_REUSEPORT); each keeps its own routing table.
    workers: int = Field(default=1, ge=1, le=64)
    # PIER_DRAIN_TIMEOUT_S: on SIGTERM, how long running requests and streams may finish before they are cut.
    drain_timeout_s: Seconds = Field(default=30.0, ge=0)
    # PIER_MAX_BODY_BYTES: larger request bodies get 413 (Content-Length or chunked). Olla's default: 100 MiB.
    max_body_bytes: int = Field(default=100 * MIB, ge=1)
    # PIER_MAX_HEADER_BYTES: larger request headers (all of them together) get 431. Olla's default: 1 MiB.
    max_header_bytes: int = Field(default=1 * MIB, ge=1024)
    # PIER_MAX_HEADERS: more request header lines than this get 431.
    max_headers: int = Field(default=256, ge=16)
    # PIER_CIRCUIT_THRESHOLD: consecutive request failures that open an endpoint's circuit.
    circuit_threshold: int = Field(default=5, ge=1)
    # PIER_CIRCUIT_OPEN_S: how long an open circuit refuses requests before one half-open trial.
    circuit_open_s: Seconds = Field(default=30.0, gt=0)
    # PIER_CAPACITY_WAIT_S: when every candidate is at its concurrency limit, wait this long for a slot, then 503.
    capacity_wait_s: Seconds = Field(default=10.0, ge=0)
    # PIER_LOADING_RETRY_INITIAL_S / PIER_LOADING_RETRY_MAX_S: backoff between retries of a 503 "Loading model".
    loading_retry_initial_s: Seconds = Field(default=0.5, gt=0)
    loading_retry_max_s: Seconds = Field(default=5.0, gt=0)
    # PIER_RESYNC_INTERVAL_S: full state re-read from Redis (catches expired state) besides the event stream.
    resync_interval_s: Seconds = Field(default=5.0, gt=0)
    # PIER_RETRY_AFTER_S: Retry-After on a 503 when nothing tells a better value.
    retry_after_s: int = Field(default=5, ge=1)
    # PIER_TRUST_REQUEST_ID: echo a well-formed inbound X-Request-ID as X-Pier-Request-ID (else always generate).
    trust_request_id: bool = True
    # PIER_KEEPALIVE_S: how long an idle client connection stays open.
    keepalive_s: Seconds = Field(default=75.0, gt=0)
    # PIER_UPSTREAM_KEEPALIVE_S: how long an idle pooled connection to an endpoint stays open.
    upstream_keepalive_s: Seconds = Field(default=30.0, gt=0)
    # PIER_UPSTREAM_POOL_SIZE: open connections to all endpoints together (0 = no limit; endpoint limits apply).
    upstream_pool_size: int = Field(default=0, ge=0)
    # PIER_ANTHROPIC_PING_INTERVAL_S: a translated Anthropic stream sends a `ping` event after this long without
    # a chunk from the endpoint (a slow first token), so clients' and proxies' read timeouts do not fire.
    anthropic_ping_interval_s: Seconds = Field(default=10.0, gt=0)
    # PIER_PROMETHEUS_METRICS: serve the router's OpenTelemetry metrics at GET /internal/metrics (Prometheus text).
    prometheus_metrics: bool = False
    # PIER_GRAFANA_URL: the status page at `/` links here (the `observability` profile's Grafana, e.g.
    # http://localhost:3000); empty: no link. An http(s) URL only.
    grafana_url: str = ""
    # PIER_CHECK_TIMEOUT_S: how long `--check` waits for /internal/health.
    check_timeout_s: Seconds = Field(default=3.0, gt=0)
    # PIER_ROUTE_WARM_ACROSS_TIERS: prefer an endpoint of a lower priority where the model is loaded over a
    # higher one where it is cold, for models whose load (as the warm-up worker measured it) takes longer than
    # PIER_ROUTE_WARM_ACROSS_TIERS_S. Off: priority first, warm first only within a priority.
    route_warm_across_tiers: bool = False
    route_warm_across_tiers_s: Seconds = Field(default=10.0, ge=0)
    # PIER_AFFINITY: send a conversation's next turn to the endpoint that served its last one (its prompt cache),
    # by rendezvous hashing of a session key; requests without a key are routed as without it.
    affinity: bool = True
    # PIER_AFFINITY_SOURCES: where the session key comes from, first match wins (comma-separated):
    # header (session headers agents send), prompt_cache_key, user, prefix (system prompt + first user turn).
    affinity_sources: Annotated[tuple[Source, ...], NoDecode] = DEFAULT_SOURCES
    # PIER_AFFINITY_LOAD_FACTOR: bounded loads: an endpoint above (1 + this) x the tier's mean in-flight passes
    # a session on to its next choice.
    affinity_load_factor: float = Field(default=0.25, gt=0, le=10)

    @property
    def warm_across_tiers_s(self) -> float | None:
        """The load-time threshold of the cross-priority preference, None when it is off."""
        return self.route_warm_across_tiers_s if self.route_warm_across_tiers else None

    @field_validator("affinity_sources", mode="before")
    @classmethod
    def _split_sources(cls, value: object) -> object:
        if isinstance(value, str):
            names = [part.strip().lower() for part in value.split(",") if part.strip()]
            known = ", ".join(s.value for s in Source)
            for name in names:
                if name not in Source.__members__.values():
                    raise ValueError(f"unknown source {name!r}; the sources are {known}")
            return tuple(Source(name) for name in dict.fromkeys(names))
        return value

    # --- client access control and limits (services.router.gate); all off by default -------------------------
    # PIER_ACCESS_CONTROL: require a client key on every route (401/403 otherwise); /internal/* by address or
    # admin key.
    access_control: bool = False
    # PIER_API_KEYS: client keys, `name=key,name=key` (every model, default limits) or a JSON list of entries
    # {name, key, models, rate_per_s, burst, max_concurrent}. Also read from /run/secrets/PIER_API_KEYS.
    api_keys: SecretStr = SecretStr("")
    # PIER_API_KEYS_FILE: a YAML file `keys: [{name, key | key_file, models, ...}]`; a bare name is looked up in
    # /run/secrets. Its keys add to PIER_API_KEYS.
    api_keys_file: str | None = None
    # PIER_ADMIN_KEY / PIER_ADMIN_KEY_FILE: opens /internal/* from anywhere (client keys never do).
    admin_key: SecretStr = SecretStr("")
    admin_key_file: str | None = None
    # PIER_INTERNAL_CIDRS: with access control on, /internal/* answers these networks without a key.
    internal_cidrs: str = DEFAULT_INTERNAL_CIDRS
    # PIER_TRUSTED_PROXIES: peers (CIDRs) whose X-Forwarded-For names the client; from anyone else it is ignored.
    trusted_proxies: str = ""
    # PIER_RATE_LIMIT_PER_S / PIER_RATE_LIMIT_BURST: each client's token bucket (a key's name, else its address;
    # 0 = off; burst 0 = one second's worth). Per router process, on every route but /internal/health.
    rate_limit_per_s: float = Field(default=0.0, ge=0)
    rate_limit_burst: int = Field(default=0, ge=0)
    # PIER_RATE_LIMIT_GLOBAL_PER_S / PIER_RATE_LIMIT_GLOBAL_BURST: one bucket for all clients together (0 = off).
    rate_limit_global_per_s: float = Field(default=0.0, ge=0)
    rate_limit_global_burst: int = Field(default=0, ge=0)
    # PIER_MAX_CONCURRENT_PER_CLIENT: requests (streams included, to their end) one client may have in flight
    # (0 = no limit); a key's own max_concurrent overrides it.
    max_concurrent_per_client: int = Field(default=0, ge=0)
    # PIER_RATE_LIMIT_SHARED: keep the token buckets in Redis, shared by every router replica and worker (one
    # round trip per request; limited locally while Redis fails). In-flight counts stay per process.
    rate_limit_shared: bool = False
    # PIER_RATE_LIMIT_REDIS_TIMEOUT_S: a shared-bucket answer slower than this counts as Redis failing.
    rate_limit_redis_timeout_s: Seconds = Field(default=0.25, gt=0)
    # --- input limits on JSON bodies (services.router.inputs); 0 = off ---------------------------------------
    # PIER_MAX_JSON_DEPTH: a body nested deeper gets 400 `json_too_deep` (past ~900 levels the parser's own 400).
    max_json_depth: int = Field(default=0, ge=0)
    # PIER_MAX_MESSAGES: more `messages` than this get 422 `too_many_messages`.
    max_messages: int = Field(default=0, ge=0)
    # PIER_MAX_STRING_CHARS: any longer string (value or key) in the body gets 413 `string_too_long`.
    max_string_chars: int = Field(default=0, ge=0)

    @field_validator("internal_cidrs", "trusted_proxies")
    @classmethod
    def _cidrs(cls, value: str) -> str:
        parse_networks(value, "CIDR list")
        return value

    @model_validator(mode="after")
    def _access_table(self) -> Self:
        if self.access_control:
            self.key_table()  # a bad key, file or duplicate ends start-up with one line (ConfigError)
        return self

    @property
    def limits_on(self) -> bool:
        return self.rate_limit_per_s > 0 or self.rate_limit_global_per_s > 0 or self.max_concurrent_per_client > 0

    def key_table(self) -> KeyTable:
        """The client keys, admin key and networks (ConfigError naming the setting when one is wrong)."""
        entries: list[tuple[object, str]] = []
        inline = self.api_keys.get_secret_value()
        try:
            entries += [(e, f"PIER_API_KEYS entry {i + 1}") for i, e in enumerate(parse_inline_keys(inline))]
        except ValueError as exc:
            raise ConfigError("PIER_API_KEYS", "(hidden)", str(exc)) from None
        if self.api_keys_file:
            try:
                data = read_key_file(self.api_keys_file)
            except ValueError as exc:
                raise ConfigError("PIER_API_KEYS_FILE", self.api_keys_file, str(exc)) from None
            entries += [(e, f"{self.api_keys_file} entry {i + 1}") for i, e in enumerate(data)]
        admin = self.admin_key.get_secret_value()
        if self.admin_key_file and not admin:
            try:
                admin = read_secret(self.admin_key_file)
            except ValueError as exc:
                raise ConfigError("PIER_ADMIN_KEY_FILE", self.admin_key_file, str(exc)) from None
        try:
            keys, admin_digest = build_keys(entries, admin or None)
        except ValueError as exc:
            where = (
                "PIER_API_KEYS_FILE"
                if self.api_keys_file and str(exc).startswith(self.api_keys_file)
                else ("PIER_ADMIN_KEY" if "admin key" in str(exc) else "PIER_API_KEYS")
            )
            raise ConfigError(where, "(hidden)", str(exc)) from None
        if self.access_control and not keys:
            raise ConfigError(
                "PIER_ACCESS_CONTROL", "true", "no client key is configured (PIER_API_KEYS or PIER_API_KEYS_FILE)"
            )
        return KeyTable(
            keys=keys,
            admin_digest=admin_digest,
            internal_nets=parse_networks(self.internal_cidrs, "PIER_INTERNAL_CIDRS"),
            trusted_proxies=parse_networks(self.trusted_proxies, "PIER_TRUSTED_PROXIES"),
        )

    @field_validator("grafana_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return ""
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in value):
            raise ValueError("must be an http:// or https:// URL (or empty for no link)")
        return value

    @field_validator("loading_retry_max_s")
    @classmethod
    def _backoff_order(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("loading_retry_initial_s")
        if isinstance(initial, float) and value < initial:
            raise ValueError(f"must be at least PIER_LOADING_RETRY_INITIAL_S ({initial:g}s)")
        return value
