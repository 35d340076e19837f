"""`shared.redisconn.build_target` and the masking of secrets in config errors: pure, no Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from shared.errors import ConfigError
from shared.redisconn import RedisTarget, _tls_kwargs, mask_url
from shared.settings import CommonSettings
from shared.startup import config_error_line

SECRET = "Pw-with:odd@chars"


def settings(**values: Any) -> CommonSettings:
    return CommonSettings(**values)


def error_line(**values: Any) -> str:
    try:
        settings(**values)
    except (ConfigError, ValidationError) as exc:
        return config_error_line(exc)
    raise AssertionError(f"{values} was accepted")


def test_a_plain_url_is_the_default() -> None:
    target = settings().redis_target()
    assert target == RedisTarget()
    assert not target.tls
    assert _tls_kwargs(target) == {}


def test_password_from_a_file_and_out_of_repr(tmp_path: Path) -> None:
    secret_file = tmp_path / "redis_password"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    built = settings(redis_password_file=secret_file, redis_username="pier")
    target = built.redis_target()
    assert target.password == SECRET  # the newline an editor adds is not part of it
    assert target.username == "pier"
    assert SECRET not in repr(target)
    assert SECRET not in repr(built)


def test_tls_files_need_rediss_and_both_halves(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("x", encoding="utf-8")
    assert "PIER_REDIS_URL" in error_line(redis_ca_file=ca)
    line = error_line(redis_url="rediss://h:6380/0", redis_ca_file=ca, redis_cert_file=ca)
    assert line.startswith("config error: PIER_REDIS_KEY_FILE")
    assert "PIER_REDIS_CA_FILE" in error_line(redis_url="rediss://h:6380/0", redis_ca_file=tmp_path / "missing.crt")
    mutual = settings(redis_url="rediss://h:6380/0", redis_ca_file=ca, redis_cert_file=ca, redis_key_file=ca)
    target = mutual.redis_target()
    assert target.tls
    assert _tls_kwargs(target) == {"ssl_ca_certs": str(ca), "ssl_certfile": str(ca), "ssl_keyfile": str(ca)}


def test_sentinel_settings(tmp_path: Path) -> None:
    target = settings(redis_sentinels="s1:26379, s2 ,[::1]:26380", redis_sentinel_master="pier").redis_target()
    assert target.sentinels == (("s1", 26379), ("s2", 26379), ("::1", 26380))
    assert "PIER_REDIS_SENTINEL_MASTER" in error_line(redis_sentinels="s1:26379")
    assert "PIER_REDIS_SENTINELS" in error_line(redis_sentinels="s1:port", redis_sentinel_master="pier")
    assert "PIER_REDIS_URL" in error_line(redis_sentinels="s1:1", redis_sentinel_master="p", redis_url="redis://x/0")
    assert "PIER_REDIS_SENTINEL_MASTER" in error_line(redis_sentinel_master="pier")  # without Sentinels
    ca = tmp_path / "ca.crt"
    ca.write_text("x", encoding="utf-8")
    tls = settings(redis_sentinels="s1:1", redis_sentinel_master="p", redis_ca_file=ca).redis_target()
    assert _tls_kwargs(tls) == {"ssl": True, "ssl_ca_certs": str(ca)}


@pytest.mark.parametrize(
    "values",
    [
        {"redis_url": f"http://user:{SECRET}@host:1/0"},
        {"redis_url": f"redis://:{SECRET}@host:1/0", "redis_password": SECRET},
        {"redis_sentinel_password": SECRET},
        {"redis_url": f"redis://u:{SECRET}@h/0", "redis_sentinels": "s:1", "redis_sentinel_master": "m"},
    ],
)
def test_no_config_error_shows_a_password(values: dict[str, Any]) -> None:
    line = error_line(**values)
    assert SECRET not in line
    assert "Pw-with" not in line
    assert line.startswith("config error: PIER_REDIS_")


def test_mask_url() -> None:
    assert mask_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert mask_url("rediss://pier:pw@h/1") == "rediss://pier:***@h/1"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"
