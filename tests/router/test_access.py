"""Access control and rate limits as pure functions, in tables: (headers, client address, key table, clock) in,
a verdict out. No I/O; the process tests (test_access_control.py, test_rate_limits.py) prove the wiring."""

from __future__ import annotations

from pathlib import Path

import pytest
from multidict import CIMultiDict

from services.router.access import (
    DEFAULT_INTERNAL_CIDRS,
    Family,
    KeyTable,
    Outcome,
    authorize,
    build_keys,
    client_address,
    family_of,
    parse_inline_keys,
    parse_networks,
    presented_key,
)
from services.router.ratelimit import Bucket, Limit, Limiter, take
from services.router.settings import RouterSettings
from shared.errors import ConfigError

KEY_A = "sk-team-a-0123456789"
KEY_B = "sk-team-b-0123456789"
ADMIN = "sk-admin-0123456789"

KEYS, ADMIN_DIGEST = build_keys(
    [
        ({"name": "team-a", "key": KEY_A}, "a"),
        ({"name": "team-b", "key": KEY_B, "models": ["ai/gemma3*"], "rate_per_s": 2, "max_concurrent": 1}, "b"),
    ],
    ADMIN,
)
TABLE = KeyTable(
    keys=KEYS,
    admin_digest=ADMIN_DIGEST,
    internal_nets=parse_networks(DEFAULT_INTERNAL_CIDRS, "t"),
    trusted_proxies=parse_networks("10.9.0.0/16", "t"),
)


def h(**headers: str) -> CIMultiDict[str]:
    return CIMultiDict((k.replace("_", "-"), v) for k, v in headers.items())


@pytest.mark.parametrize(
    ("headers", "peer", "path", "outcome", "client"),
    [
        (h(Authorization=f"Bearer {KEY_A}"), "203.0.113.1", "/v1/chat/completions", Outcome.ALLOW, "team-a"),
        (h(x_api_key=KEY_B), "203.0.113.1", "/v1/messages", Outcome.ALLOW, "team-b"),
        (h(Authorization=f"bearer  {KEY_A} "), "203.0.113.1", "/engines/v1/models", Outcome.ALLOW, "team-a"),
        (h(), "203.0.113.1", "/v1/chat/completions", Outcome.MISSING_KEY, None),
        (h(), "127.0.0.1", "/models", Outcome.MISSING_KEY, None),  # loopback is no client key
        (h(Authorization="Basic abc"), "203.0.113.1", "/olla/models", Outcome.MISSING_KEY, None),
        (h(Authorization="Bearer sk-wrong-0123456789"), "203.0.113.1", "/v1/models", Outcome.INVALID_KEY, None),
        (h(x_api_key=KEY_A[:-1]), "203.0.113.1", "/v1/messages", Outcome.INVALID_KEY, None),
        (h(x_api_key=ADMIN), "203.0.113.1", "/v1/messages", Outcome.INVALID_KEY, None),  # admin is not a client
        # /internal: by address (after trusted proxies) or the admin key; client keys never open it
        (h(), "127.0.0.1", "/internal/health", Outcome.ALLOW, None),
        (h(), "172.18.0.5", "/internal/status", Outcome.ALLOW, None),
        (h(), "::ffff:192.168.1.4", "/internal/status", Outcome.ALLOW, None),
        (h(), "203.0.113.1", "/internal/status", Outcome.INTERNAL_DENIED, None),
        (h(Authorization=f"Bearer {KEY_A}"), "203.0.113.1", "/internal/status", Outcome.INTERNAL_DENIED, None),
        (h(Authorization="Bearer sk-wrong-0123456789"), "203.0.113.1", "/internal/status", Outcome.INVALID_KEY, None),
        (h(x_api_key=ADMIN), "203.0.113.1", "/internal/status", Outcome.ALLOW, None),
        (h(X_Forwarded_For="203.0.113.7"), "10.9.0.2", "/internal/status", Outcome.INTERNAL_DENIED, None),
        (h(X_Forwarded_For="203.0.113.7"), "127.0.0.1", "/internal/status", Outcome.ALLOW, None),  # untrusted XFF
        (h(X_Forwarded_For="10.0.0.8, 203.0.113.7"), "10.9.0.2", "/internal/x", Outcome.INTERNAL_DENIED, None),
    ],
)
def test_authorize(headers: CIMultiDict[str], peer: str, path: str, outcome: Outcome, client: str | None) -> None:
    verdict = authorize(headers, peer, path, TABLE)
    assert verdict.outcome is outcome
    assert (verdict.client.name if verdict.client else None) == client


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.1", ["198.51.100.2"], "203.0.113.1"),  # peer not trusted: its XFF is ignored
        ("10.9.0.2", ["198.51.100.2"], "198.51.100.2"),
        ("10.9.0.2", ["1.1.1.1, 198.51.100.2, 10.9.0.3"], "198.51.100.2"),  # right-most untrusted hop
        ("10.9.0.2", ["1.1.1.1", "198.51.100.2"], "198.51.100.2"),  # several header lines read in order
        ("10.9.0.2", ["not-an-ip"], "10.9.0.2"),  # garbage never becomes an identity
        ("10.9.0.2", ["1.1.1.1, junk, 10.9.0.3"], "10.9.0.3"),
        ("10.9.0.2", [], "10.9.0.2"),
        ("::ffff:10.9.0.2", ["198.51.100.2"], "198.51.100.2"),
        (None, ["198.51.100.2"], None),
    ],
)
def test_client_address(peer: str | None, xff: list[str], expected: str | None) -> None:
    address = client_address(peer, xff, TABLE.trusted_proxies)
    assert (str(address) if address is not None else None) == expected


@pytest.mark.parametrize(
    ("model", "allowed"),
    [("ai/gemma3", True), ("gemma3", True), ("ai/gemma3:4b", True), ("ai/smollm2", False), ("smollm2", False)],
)
def test_model_globs(model: str, allowed: bool) -> None:
    team_b = KEYS[1]
    assert team_b.allows_model(model) is allowed
    assert KEYS[0].allows_model(model)  # no globs: every model


@pytest.mark.parametrize(
    ("path", "family"),
    [
        ("/v1/chat/completions", Family.OPENAI),
        ("/v1/messages", Family.ANTHROPIC),
        ("/anthropic/v1/messages", Family.ANTHROPIC),
        ("/olla/anthropic/v1/messages", Family.ANTHROPIC),
        ("/olla/models", Family.OLLA),
        ("/olla/dmr/engines/v1/chat/completions", Family.OLLA),
        ("/engines/v1/chat/completions", Family.DMR),
        ("/models", Family.DMR),
        ("/internal/status", Family.INTERNAL),
    ],
)
def test_family(path: str, family: Family) -> None:
    assert family_of(path) is family


def test_presented_key_prefers_bearer_and_ignores_other_schemes() -> None:
    assert presented_key(h(Authorization="Bearer one-key", x_api_key="other")) == "one-key"
    assert presented_key(h(Authorization="Basic xyz", x_api_key="other")) == "other"
    assert presented_key(h(Authorization="Bearer ")) is None


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"name": "a", "key": "short"}], "at least 8"),
        ([{"name": "a b", "key": KEY_A}], "name must be"),
        ([{"name": "a", "key": KEY_A}, {"name": "a", "key": KEY_B}], "used twice"),
        ([{"name": "a", "key": KEY_A}, {"name": "b", "key": KEY_A}], "same key"),
        ([{"name": "a", "key": KEY_A, "modles": ["x"]}], "unknown field 'modles'"),
        ([{"name": "a", "key": KEY_A, "rate_per_s": -1}], "rate_per_s"),
        ([{"name": "a"}], "key or key_file"),
        (["a=b"], "mapping"),
    ],
)
def test_bad_key_entries_are_refused(entries: list[object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        build_keys([(e, "here") for e in entries], None)
    assert KEY_A not in str(caught.value)  # a key never appears in an error


def test_inline_keys_short_and_json_forms() -> None:
    assert parse_inline_keys(f"a={KEY_A}, b={KEY_B}") == [{"name": "a", "key": KEY_A}, {"name": "b", "key": KEY_B}]
    assert parse_inline_keys('[{"name": "a", "key": "k", "models": ["x*"]}]')[0]["models"] == ["x*"]
    with pytest.raises(ValueError, match="short form"):
        parse_inline_keys("no-equals-sign")


def test_settings_read_keys_from_a_file_and_a_secret_file_and_hide_them(tmp_path: Path) -> None:
    secret = tmp_path / "team_b_key"
    secret.write_text(KEY_B + "\n")
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys:\n  - name: team-b\n    key_file: {secret}\n    models: [ai/gemma3*]\n")
    settings = RouterSettings(access_control=True, api_keys=f"team-a={KEY_A}", api_keys_file=str(keys))  # type: ignore[arg-type]
    table = settings.key_table()
    assert [k.name for k in table.keys] == ["team-a", "team-b"]
    assert authorize(h(x_api_key=KEY_B), "1.2.3.4", "/v1/messages", table).client == table.keys[1]
    assert KEY_A not in repr(settings)
    assert KEY_A not in repr(table)


def test_settings_refuse_access_control_without_keys_naming_the_setting() -> None:
    with pytest.raises(ConfigError) as caught:
        RouterSettings(access_control=True)
    assert caught.value.key == "PIER_ACCESS_CONTROL"
    with pytest.raises(ConfigError) as bad:
        RouterSettings(access_control=True, api_keys="a=tiny")  # type: ignore[arg-type]
    assert bad.value.key == "PIER_API_KEYS"
    assert "tiny" not in str(bad.value)


# --- token buckets ----------------------------------------------------------------------------------------------

LIMIT = Limit(rate_per_s=2.0, burst=3)


@pytest.mark.parametrize(
    ("bucket", "now", "allowed", "tokens_after", "retry_after_s"),
    [
        (None, 0.0, True, 2.0, 0.0),  # a new client starts full
        (Bucket(0.0, 0.0), 0.0, False, 0.0, 0.5),
        (Bucket(0.0, 0.0), 0.25, False, 0.5, 0.25),
        (Bucket(0.0, 0.0), 0.5, True, 0.0, 0.0),
        (Bucket(1.0, 0.0), 100.0, True, 2.0, 0.0),  # capped at the burst
        (Bucket(0.5, 10.0), 9.0, False, 0.5, 0.25),  # a clock going back refills nothing
    ],
)
def test_take(bucket: Bucket | None, now: float, allowed: bool, tokens_after: float, retry_after_s: float) -> None:
    taken = take(bucket, now, LIMIT)
    assert taken.allowed is allowed
    assert taken.bucket.tokens == pytest.approx(tokens_after)
    assert taken.retry_after_s == pytest.approx(retry_after_s)


def test_limiter_per_client_then_global() -> None:
    limiter = Limiter(Limit(1.0, 3), Limit(1.0, 2), max_concurrent=0)
    assert [limiter.admit("ip:a", 0.0)[0].allowed for _ in range(3)] == [True, True, False]  # type: ignore[union-attr]
    mine, shared = limiter.admit("ip:b", 0.0)
    assert mine is not None
    assert mine.allowed
    assert shared is not None
    assert shared.allowed
    mine, shared = limiter.admit("ip:c", 0.0)  # c has tokens, the global bucket (3) is spent
    assert mine is not None
    assert mine.allowed
    assert shared is not None
    assert not shared.allowed
    assert limiter.admit("ip:c", 0.0)[0].allowed  # type: ignore[union-attr]  # c kept the token it was refused
    own = Limit(100.0, 100)
    assert limiter.admit("key:x", 0.0, own)[0].limit is own  # type: ignore[union-attr]


def test_limiter_concurrency_and_pruning() -> None:
    limiter = Limiter(None, Limit(1.0, 1), max_concurrent=2)
    assert limiter.enter("k")
    assert limiter.enter("k")
    assert not limiter.enter("k")
    assert limiter.enter("k2", own_max=1)
    assert not limiter.enter("k2", own_max=1)
    limiter.leave("k")
    assert limiter.enter("k")
    for i in range(10_001):
        limiter.admit(f"ip:{i}", 0.0)
    limiter.admit("key:kept", 0.0)
    limiter.admit("ip:last", 5.0)  # past the bound: every refilled address bucket goes
    assert limiter.clients <= 2


def test_with_everything_off_no_middleware_is_installed() -> None:
    from services.router.app import build_app

    settings = RouterSettings()
    app = build_app(settings, settings.pier_config())
    assert list(app.middlewares) == []  # the request path is exactly what it was before the gate existed
    assert list(app.on_response_prepare) == []
    on = RouterSettings(rate_limit_per_s=1.0)
    assert len(build_app(on, on.pier_config()).middlewares) == 1


def test_visibility_of_listings() -> None:
    from services.router.visibility import HIDDEN, visible

    def allows(model: str) -> bool:
        return model.startswith("ai/gemma3")

    openai_list = {"object": "list", "data": [{"id": "ai/gemma3", "object": "model"}, {"id": "x", "object": "model"}]}
    assert [e["id"] for e in visible(openai_list, allows)["data"]] == ["ai/gemma3"]
    anthropic_list = {"data": [{"id": "x", "type": "model"}], "has_more": False, "first_id": "x", "last_id": "x"}
    assert visible(anthropic_list, allows) == {"data": [], "has_more": False, "first_id": None, "last_id": None}
    inventory = [{"id": "sha256:1", "tags": ["ai/gemma3:latest"]}, {"id": "sha256:2", "tags": ["ai/smollm2"]}]
    assert visible(inventory, allows) == inventory[:1]
    assert visible([{"model_name": "ai/smollm2", "backend_name": "llama.cpp"}], allows) == []
    assert visible({"id": "x", "object": "model"}, allows) is HIDDEN
    assert visible({"version": "1", "service": "pier-router"}, allows) == {"version": "1", "service": "pier-router"}
