"""Config loading: Pier's layout, Olla's layout unchanged, profiles, secrets, durations and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import Balancer, RoutingStrategy, build_config
from shared.durations import parse_duration_s
from shared.errors import ConfigError
from shared.names import normalise_model
from shared.profiles import load_profiles
from shared.settings import CommonSettings

HERE = Path(__file__).parent


def settings_for(path: Path, **env: str) -> CommonSettings:
    return CommonSettings(config_file=path, **env)  # type: ignore[arg-type]


def test_olla_config_file_loads_unchanged() -> None:
    config = settings_for(HERE / "olla-config.yaml").pier_config()
    assert [e.name for e in config.endpoints] == ["local-dmr", "gpu-dmr", "local-ollama"]
    assert config.load_balancer is Balancer.LEAST_CONNECTIONS
    assert config.routing_strategy is RoutingStrategy.OPTIMISTIC
    assert config.model_aliases["ai/fast:latest"] == ("ai/smollm2", "llama3.2:1b")
    dmr, gpu, ollama = config.endpoints
    assert dmr.priority == 100
    assert dmr.check_interval_s == 5.0
    assert dmr.check_timeout_s == 2.0
    assert dmr.profile.name == "docker-model-runner"
    assert dmr.request_timeout_s == 300.0  # DMR profile: 5 min for lazy loads
    assert gpu.headers == {"X-Team": "ml", "Authorization": "Bearer s3cret"}
    assert gpu.allows_model("ai/smollm2:latest")
    assert not gpu.allows_model("ai/mxbai-embed-large:latest")
    assert not gpu.allows_model("huggingface.co/x/y:latest")
    assert ollama.type == "ollama"
    assert ollama.model_path == "/api/tags"  # the file's own path wins over the profile's
    assert ollama.priority < dmr.priority
    assert config.ignored_keys == ()  # Olla's other sections are known, not "unknown"


def test_unknown_top_level_keys_are_kept_for_a_warning_and_near_misses_are_errors() -> None:
    profiles = load_profiles()
    config = build_config({"endpoints": [], "x_team_notes": "hi", "metrics": {}}, profiles)
    assert config.ignored_keys == ("x_team_notes", "metrics")
    for typo, meant in [
        ("endpoint", "endpoints"),
        ("model_alias", "model_aliases"),
        ("load_balancing", "load_balancer"),
    ]:
        with pytest.raises(ConfigError, match=f"^config error: {typo}=.*did you mean '{meant}'"):
            build_config({typo: []}, profiles)


def test_pier_layout_with_profile_defaults(tmp_path: Path) -> None:
    path = tmp_path / "pier.yaml"
    path.write_text(
        "endpoints:\n"
        "  - {url: 'http://a:12434', name: a}\n"
        "  - {url: 'http://b:8000/', name: b, type: vllm, check_interval: 1m, check_timeout: 500ms}\n"
        "load_balancer: round-robin\n"
    )
    config = settings_for(path).pier_config()
    a, b = config.endpoints
    assert (a.type, a.priority, a.health_check_path) == ("docker-model-runner", 95, "/engines/v1/models")
    assert (b.type, b.priority, b.url, b.model_path) == ("openai-compatible", 50, "http://b:8000", "/v1/models")
    assert (b.check_interval_s, b.check_timeout_s) == (60.0, 0.5)
    assert config.load_balancer is Balancer.ROUND_ROBIN
    assert config.routing_strategy is RoutingStrategy.STRICT


def test_env_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pier.yaml"
    path.write_text("endpoints: [{url: 'http://a:1', name: a}]\nload_balancer: priority\n")
    config = settings_for(path, load_balancer="least_conn", routing_strategy="optimistic").pier_config()
    assert config.load_balancer is Balancer.LEAST_CONNECTIONS
    assert config.routing_strategy is RoutingStrategy.OPTIMISTIC


def test_dmr_url_is_the_single_default_endpoint() -> None:
    config = CommonSettings(dmr_url="http://localhost:12434/").pier_config()
    assert [(e.name, e.url, e.type) for e in config.endpoints] == [
        ("dmr", "http://localhost:12434", "docker-model-runner")
    ]
    assert CommonSettings().pier_config().endpoints == ()  # unset: the health worker auto-detects


def test_secret_files(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    path = tmp_path / "pier.yaml"
    path.write_text(
        "endpoints:\n"
        f"  - url: http://a:1\n    name: a\n    auth: {{type: bearer, token_file: '{secret}'}}\n"
        f"  - url: http://b:1\n    name: b\n    auth: {{type: basic, username: u, password_file: '{secret}'}}\n"
    )
    a, b = settings_for(path).pier_config().endpoints
    assert a.headers == {"Authorization": "Bearer from-file"}
    assert b.headers == {"Authorization": "Basic dTpmcm9tLWZpbGU="}


def test_custom_profile_overrides_shipped_keys(tmp_path: Path) -> None:
    (tmp_path / "docker-model-runner-custom.yaml").write_text(
        "timeouts: {request: 10m}\nconcurrency: {max_concurrent_requests: 2}\n"
    )
    profiles = load_profiles(tmp_path)
    dmr = profiles.get("dmr")
    assert dmr is not None
    assert dmr.timeouts.request == 600.0
    assert dmr.concurrency.max_concurrent_requests == 2
    assert dmr.health_check_path == "/engines/v1/models"  # keys not overridden stay


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10.0), ("5m", 300.0), ("1h", 3600.0), ("500ms", 0.5), ("1h30m", 5400.0), ("2.5", 2.5), (7, 7.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "s", "5 m", "abc", "1h-2m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration_s(text)


@pytest.mark.parametrize(
    ("name", "normalised"),
    [
        ("smollm2", "ai/smollm2:latest"),
        ("ai/smollm2", "ai/smollm2:latest"),
        ("ai/smollm2:latest", "ai/smollm2:latest"),
        ("AI/SmolLM2:360M-Q4_K_M", "ai/smollm2:360m-q4_k_m"),
        ("hf.co/bartowski/Llama-3.2-1B-GGUF", "huggingface.co/bartowski/llama-3.2-1b-gguf:latest"),
        ("localhost:5000/team/model", "localhost:5000/team/model:latest"),
        ("ai/smollm2@sha256:abc", "ai/smollm2@sha256:abc"),
    ],
)
def test_model_names_normalise_like_dmr(name: str, normalised: str) -> None:
    assert normalise_model(name) == normalised


BAD_ENDPOINTS = [
    ("type: nosuch", "endpoints[0].type", "nosuch"),
    ("check_interval: -5s", "endpoints[0].check_interval", "-5"),
    ("{check_interval: 2s, check_timeout: 2s}", "endpoints[0]", "check_timeout"),
    ("url: 'ftp://x'", "endpoints[0].url", "ftp://x"),
    ("url: 'http://'", "endpoints[0].url", "http://"),
    ("priority: -1", "endpoints[0].priority", "-1"),
    ("auth: {type: bearer}", "endpoints[0].auth", "token"),
    ("auth: {type: bearer, token_file: /nonexistent/secret}", "endpoints[0].auth", "secret"),
    ("nonsense_key: 1", "endpoints[0].nonsense_key", "1"),
]


@pytest.mark.parametrize(("extra", "key", "value"), BAD_ENDPOINTS)
def test_bad_endpoint_values_name_the_key(extra: str, key: str, value: str) -> None:
    base = {"url": "http://a:1", "name": "a"}
    import yaml

    parsed = yaml.safe_load(extra)
    endpoint = {**base, **(parsed if isinstance(parsed, dict) else {})}
    with pytest.raises(ConfigError) as caught:
        build_config({"endpoints": [endpoint]}, load_profiles())
    line = str(caught.value)
    assert key in line
    assert value in line
    assert "\n" not in line


def test_duplicate_names_and_bad_balancer() -> None:
    endpoints = [{"url": "http://a:1", "name": "x"}, {"url": "http://b:1", "name": "x"}]
    with pytest.raises(ConfigError, match=r"endpoints\[1\]\.name=x: duplicate"):
        build_config({"endpoints": endpoints}, load_profiles())
    with pytest.raises(ConfigError, match=r"proxy\.load_balancer=fastest"):
        build_config({"proxy": {"load_balancer": "fastest"}}, load_profiles())
    with pytest.raises(ConfigError, match="routing_strategy=lenient"):
        build_config({"routing_strategy": "lenient"}, load_profiles())
