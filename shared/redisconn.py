"""The one place that turns settings into a Redis client: a plain URL or a Sentinel master, with a password, an
ACL user and TLS. Every service connects through `connect(target)`; nothing else spells a Redis client.

`verify` runs once at start: a refusal Redis cannot take back (a wrong password, an ACL that forbids Pier's
keys, a TLS certificate that does not verify, a master name the Sentinels do not know) is a configuration
error naming the setting; an unreachable Redis is not (it may come up later, and the services retry).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError

from shared import keys
from shared.errors import ConfigError

if TYPE_CHECKING:
    from shared.settings import CommonSettings

log = logging.getLogger(__name__)

DEFAULT_SENTINEL_PORT = 26379
VERIFY_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where Redis is and how to log in. Secrets are kept out of `repr` (and so out of logs and tracebacks)."""

    url: str = "redis://localhost:6379/0"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    db: int = 0

    @property
    def tls(self) -> bool:
        """TLS when the URL says `rediss://`, or (with Sentinels, which have no URL) when a CA file is given."""
        if self.sentinels:
            return self.ca_file is not None
        return urlsplit(self.url).scheme == "rediss"

    def describe(self) -> str:
        """Where this connects, for logs: never a password."""
        if self.sentinels:
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel master {self.sentinel_master!r} via {hosts}"
        return mask_url(self.url)


def mask_url(url: str) -> str:
    """The URL with any password in it replaced by `***`."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def build_target(settings: CommonSettings) -> RedisTarget:
    """Check the Redis settings together and build the target; a bad combination raises ConfigError."""
    password = _secret(settings.redis_password)
    if settings.redis_password_file is not None:
        if password is not None:
            raise ConfigError("PIER_REDIS_PASSWORD_FILE", settings.redis_password_file, "set it or PIER_REDIS_PASSWORD")
        password = _read_secret_file("PIER_REDIS_PASSWORD_FILE", settings.redis_password_file)
    for key, path in (
        ("PIER_REDIS_CA_FILE", settings.redis_ca_file),
        ("PIER_REDIS_CERT_FILE", settings.redis_cert_file),
        ("PIER_REDIS_KEY_FILE", settings.redis_key_file),
    ):
        if path is not None and not path.is_file():
            raise ConfigError(key, path, "no such file")
    if (settings.redis_cert_file is None) != (settings.redis_key_file is None):
        missing = "PIER_REDIS_KEY_FILE" if settings.redis_key_file is None else "PIER_REDIS_CERT_FILE"
        raise ConfigError(missing, None, "mutual TLS needs both PIER_REDIS_CERT_FILE and PIER_REDIS_KEY_FILE")
    sentinels = _parse_sentinels(settings.redis_sentinels)
    sentinel_password = _secret(settings.redis_sentinel_password)
    url = settings.redis_url
    if sentinels:
        if "redis_url" in settings.model_fields_set:
            raise ConfigError("PIER_REDIS_URL", mask_url(url), "set either PIER_REDIS_URL or PIER_REDIS_SENTINELS")
        if not settings.redis_sentinel_master:
            raise ConfigError("PIER_REDIS_SENTINEL_MASTER", None, "PIER_REDIS_SENTINELS needs the master's name")
        if settings.redis_cert_file is not None and settings.redis_ca_file is None:
            raise ConfigError("PIER_REDIS_CA_FILE", None, "TLS to Sentinels needs a CA file")
    else:
        for key, value in (
            ("PIER_REDIS_SENTINEL_MASTER", settings.redis_sentinel_master),
            ("PIER_REDIS_SENTINEL_PASSWORD", sentinel_password),
        ):
            if value:
                raise ConfigError(key, _shown(key, value), "only used with PIER_REDIS_SENTINELS")
        parts = urlsplit(url)
        if password is not None and parts.password is not None:
            raise ConfigError("PIER_REDIS_PASSWORD", "***", "PIER_REDIS_URL holds a password already")
        if settings.redis_username and parts.username:
            raise ConfigError("PIER_REDIS_USERNAME", settings.redis_username, "PIER_REDIS_URL holds a user already")
        tls_files = settings.redis_ca_file or settings.redis_cert_file
        if tls_files is not None and parts.scheme != "rediss":
            raise ConfigError("PIER_REDIS_URL", mask_url(url), "TLS files are set: use a rediss:// URL")
    return RedisTarget(
        url=url,
        username=settings.redis_username or None,
        password=password,
        ca_file=settings.redis_ca_file,
        cert_file=settings.redis_cert_file,
        key_file=settings.redis_key_file,
        sentinels=sentinels,
        sentinel_master=settings.redis_sentinel_master or None,
        sentinel_password=sentinel_password,
    )


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    raw = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    return raw or None


def _shown(key: str, value: str) -> str:
    return "***" if "PASSWORD" in key else value


def _read_secret_file(key: str, path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(key, path, f"cannot read it ({exc.strerror})") from None
    secret = text.strip()  # editors and `echo` add a newline; a password never ends in one
    if not secret:
        raise ConfigError(key, path, "the file is empty")
    return secret


def _parse_sentinels(text: str | None) -> tuple[tuple[str, int], ...]:
    if not text:
        return ()
    out: list[tuple[str, int]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, sep, port_text = item.rpartition(":")
        if not sep:
            host, port_text = item, str(DEFAULT_SENTINEL_PORT)
        host = host.strip("[]")  # [::1]:26379
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError("PIER_REDIS_SENTINELS", text, f"{item!r} is not host:port")
        out.append((host, int(port_text)))
    return tuple(out)


def _tls_kwargs(target: RedisTarget) -> dict[str, Any]:
    if not target.tls:
        return {}
    kwargs: dict[str, Any] = {}
    if target.sentinels:
        kwargs["ssl"] = True  # chooses the TLS connection class; a rediss:// URL does this for the plain case
    if target.ca_file is not None:
        kwargs["ssl_ca_certs"] = str(target.ca_file)
    if target.cert_file is not None:
        kwargs["ssl_certfile"] = str(target.cert_file)
        kwargs["ssl_keyfile"] = str(target.key_file)
    return kwargs


def connect(
    target: RedisTarget | str,
    *,
    timeout_s: float = 5.0,
    socket_timeout_s: float | None = None,
    decode_responses: bool = True,
    health_check_interval: int = 15,
) -> Redis:
    """A client for the target (the Sentinel master's, which follows fail-overs); no I/O until first use.

    A bare string is a URL (tests, and callers that only ever had one).
    """
    if isinstance(target, str):
        target = RedisTarget(url=target)
    common: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_connect_timeout": timeout_s,
        "socket_timeout": socket_timeout_s,
        "health_check_interval": health_check_interval,
        "retry_on_timeout": False,
        **_tls_kwargs(target),
    }
    if target.username is not None:
        common["username"] = target.username
    if target.password is not None:
        common["password"] = target.password
    if not target.sentinels:
        return Redis.from_url(target.url, **common)
    assert target.sentinel_master is not None  # build_target checked it
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(target, timeout_s), db=target.db, **common
    )
    master: Redis = sentinel.master_for(target.sentinel_master)
    return master


def _sentinel_kwargs(target: RedisTarget, timeout_s: float) -> dict[str, Any]:
    # Given explicitly, redis-py copies nothing from the data connection's options: timeouts and TLS go here too.
    kwargs: dict[str, Any] = {"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s, **_tls_kwargs(target)}
    if target.sentinel_password is not None:
        kwargs["password"] = target.sentinel_password
    return kwargs


class RedisRefused(Exception):
    """Redis answered, and said no in a way that will not change by waiting: `key` names the setting to fix."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"config error: {key}: {reason}")
        self.key = key
        self.reason = reason


async def verify(target: RedisTarget, *, timeout_s: float = VERIFY_TIMEOUT_S) -> bool:
    """PING (and read one of Pier's keys, which an ACL may forbid). True when Redis answered; False when it is
    unreachable (the caller carries on as it always did); RedisRefused when it refuses for good."""
    if target.sentinels:
        await _verify_master_known(target, timeout_s)
    resets = 0
    while True:
        try:
            return await _verify_once(target, timeout_s)
        except ConnectionResetError:
            # A TLS server that wants a client certificate sends an alert and closes; the reset can overtake
            # the alert. Retried, one attempt nearly always shows the alert; resets on every one say the same.
            resets += 1
            if resets >= _TLS_RESET_TRIES:
                reason = "the server closed every TLS connection at once: does it require a client certificate?"
                raise RedisRefused("PIER_REDIS_CERT_FILE", reason) from None


_TLS_RESET_TRIES = 5


async def _verify_once(target: RedisTarget, timeout_s: float) -> bool:
    redis = connect(target, timeout_s=timeout_s, socket_timeout_s=timeout_s)
    try:
        async with asyncio.timeout(timeout_s * 2):
            await redis.ping()
            await redis.exists(keys.ENDPOINT_INDEX)
    except AuthenticationError as exc:
        who = f"user {target.username!r}" if target.username else "the URL's user or the default user"
        raise RedisRefused("PIER_REDIS_PASSWORD", f"Redis refused the login of {who} ({_first_line(exc)})") from None
    except NoPermissionError as exc:
        raise RedisRefused(
            "PIER_REDIS_USERNAME", f"the ACL user may not use Pier's keys ({_first_line(exc)})"
        ) from None
    except ResponseError as exc:
        if "NOAUTH" in str(exc):
            raise RedisRefused("PIER_REDIS_PASSWORD", f"Redis wants a password ({_first_line(exc)})") from None
        # e.g. LOADING or MASTERDOWN: Redis is there but not ready; the services wait for it as always.
        log.warning("Redis at %s is not ready yet (%s); carrying on", target.describe(), _first_line(exc))
        return False
    except (RedisError, OSError, TimeoutError) as exc:
        tls_failure = _tls_failure(exc)
        if tls_failure is not None:
            raise RedisRefused(_tls_setting(target, tls_failure), f"TLS failed ({tls_failure})") from None
        if target.tls and target.cert_file is None and "reset by peer" in str(exc):
            raise ConnectionResetError from None
        log.warning("Redis at %s is not reachable yet (%s); carrying on", target.describe(), _first_line(exc))
        return False
    finally:
        await redis.aclose()
    return True


async def _verify_master_known(target: RedisTarget, timeout_s: float) -> None:
    """When some Sentinel answers and none knows the master's name, the name is wrong (not a passing outage)."""
    answered = False
    for host, port in target.sentinels:
        client = Redis(host=host, port=port, decode_responses=True, **_sentinel_kwargs(target, timeout_s))
        try:
            async with asyncio.timeout(timeout_s * 2):
                masters: Any = await client.sentinel_masters()
        except AuthenticationError as exc:
            raise RedisRefused(
                "PIER_REDIS_SENTINEL_PASSWORD", f"a Sentinel refused the login ({_first_line(exc)})"
            ) from None
        except ResponseError as exc:
            if "NOAUTH" in str(exc):
                raise RedisRefused("PIER_REDIS_SENTINEL_PASSWORD", "the Sentinels want a password") from None
            continue  # not a Sentinel's answer we can judge the name by
        except (RedisError, OSError, TimeoutError) as exc:
            tls_failure = _tls_failure(exc)
            if tls_failure is not None:
                reason = f"TLS to a Sentinel failed ({tls_failure})"
                raise RedisRefused(_tls_setting(target, tls_failure), reason) from None
            continue
        finally:
            await client.aclose()
        answered = True
        if target.sentinel_master in masters:
            return
    if answered:
        raise RedisRefused("PIER_REDIS_SENTINEL_MASTER", f"no Sentinel knows a master named {target.sentinel_master!r}")


def _tls_failure(exc: BaseException) -> str | None:
    """The TLS reason when `exc` (or what caused it) is a TLS handshake failure, else None."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLError):
            return seen.reason or type(seen).__name__
        text = str(seen)
        if "SSL" in text or "CERTIFICATE" in text.upper():
            return _first_line(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def _tls_setting(target: RedisTarget, reason: str) -> str:
    said = reason.lower().replace("_", " ")
    if "certificate required" in said or (target.cert_file is not None and "verify" not in said):
        return "PIER_REDIS_CERT_FILE"  # the server wants (or refused) our client certificate
    return "PIER_REDIS_CA_FILE" if target.ca_file is not None else "PIER_REDIS_URL"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def check_at_start(target: RedisTarget) -> None:
    """Run `verify` from synchronous start-up code; a refusal ends the process with exit 2 and one line."""
    from shared.startup import fail

    try:
        asyncio.run(verify(target))
    except RedisRefused as exc:
        fail(str(exc))
