"""Client access control as pure functions: who is asking (key, address) and may they use this route.

Nothing here does I/O or keeps state: `authorize(headers, peer, path, table)` is the whole decision, and the
middleware in `services.router.gate` only calls it and acts on the `Verdict`. Keys are compared as SHA-256
digests with `hmac.compare_digest`, against every configured key (no early exit), so the time taken says
nothing about which key, or how much of one, was right. A key's name is what logs and telemetry see; the key
itself never leaves this module.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from multidict import MultiMapping

from services.router.ratelimit import Limit
from shared import jsontext
from shared.endpoints import read_secret
from shared.names import normalise_model

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Loopback and private ranges: the compose network, the host, the container's own healthcheck.
DEFAULT_INTERNAL_CIDRS = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"

INTERNAL_PREFIX = "/internal/"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class Family(StrEnum):
    """Route families, for rate-limit accounting and error shapes."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    DMR = "dmr"
    OLLA = "olla"
    INTERNAL = "internal"


def family_of(path: str) -> Family:
    if path.startswith(INTERNAL_PREFIX):
        return Family.INTERNAL
    if path.startswith(("/anthropic/", "/olla/anthropic/", "/v1/messages")):
        return Family.ANTHROPIC
    if path.startswith("/olla/"):
        return Family.OLLA
    if path.startswith("/v1/"):
        return Family.OPENAI
    return Family.DMR


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True, slots=True)
class ClientKey:
    """One client key: its name (what logs see), the models it may use, and its own limits (0: the defaults)."""

    name: str
    digest: bytes = field(repr=False)
    models: tuple[str, ...] = ()  # globs on model names; empty: every model
    rate_per_s: float = 0.0
    burst: int = 0
    max_concurrent: int = 0
    limit: Limit | None = None  # Limit.of(rate_per_s, burst), built once

    def allows_model(self, model: str) -> bool:
        if not self.models:
            return True
        normal = normalise_model(model)
        return any(fnmatch.fnmatchcase(normal, glob) or fnmatch.fnmatchcase(model, glob) for glob in self.models)


@dataclass(frozen=True, slots=True)
class KeyTable:
    """Everything `authorize` needs to know, built once at start-up."""

    keys: tuple[ClientKey, ...] = ()
    admin_digest: bytes | None = field(default=None, repr=False)
    internal_nets: tuple[Network, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()


class Outcome(StrEnum):
    ALLOW = "allow"
    MISSING_KEY = "missing_key"  # 401
    INVALID_KEY = "invalid_key"  # 401
    INTERNAL_DENIED = "internal_denied"  # 403


@dataclass(slots=True)  # not frozen: built once per request, and frozen dataclasses are slow to build
class Verdict:
    outcome: Outcome
    client: ClientKey | None = None  # the key that matched (None: admitted by address, or refused)
    address: str = ""  # the client's address as trusted proxies resolve it
    admin: bool = False

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOW


# --- parsing ----------------------------------------------------------------------------------------------------


def parse_networks(text: str, what: str) -> tuple[Network, ...]:
    """Comma-separated CIDRs (a bare address is a /32 or /128); ValueError naming the bad one."""
    nets: list[Network] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{what}: {part!r} is not an IP network (CIDR)") from None
    return tuple(nets)


def _entry_key(entry: Mapping[str, Any], where: str) -> str:
    key = entry.get("key")
    key_file = entry.get("key_file")
    if key_file and not key:
        key = read_secret(str(key_file))
    if not isinstance(key, str) or not key:
        raise ValueError(f"{where}: needs key or key_file")
    if len(key) < 8 or any(c.isspace() for c in key):
        raise ValueError(f"{where}: a key must be at least 8 characters with no whitespace")
    return key


def _number(entry: Mapping[str, Any], name: str, where: str, *, integer: bool) -> Any:
    value = entry.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{where}: {name} must be a number >= 0")
    if integer and not isinstance(value, int):
        raise ValueError(f"{where}: {name} must be a whole number")
    return value


_ENTRY_FIELDS = frozenset({"name", "key", "key_file", "models", "rate_per_s", "burst", "max_concurrent"})


def parse_entry(entry: object, where: str) -> tuple[ClientKey, str]:
    """One key entry (a mapping) as a `ClientKey` and its secret (to check for duplicates)."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: each key must be a mapping with name and key (or key_file)")
    unknown = sorted(set(entry) - _ENTRY_FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(_ENTRY_FIELDS))})")
    name = entry.get("name")
    if not isinstance(name, str) or not name or not set(name) <= _NAME_CHARS or len(name) > 64:
        raise ValueError(f"{where}: name must be 1-64 characters of letters, digits, '.', '_' or '-'")
    where = f"{where} ({name})"
    key = _entry_key(entry, where)
    models = entry.get("models", [])
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise ValueError(f"{where}: models must be a list of globs")
    rate_per_s = float(_number(entry, "rate_per_s", where, integer=False))
    burst = _number(entry, "burst", where, integer=True)
    client = ClientKey(
        name=name,
        digest=_digest(key),
        models=tuple(models),
        rate_per_s=rate_per_s,
        burst=burst,
        max_concurrent=_number(entry, "max_concurrent", where, integer=True),
        limit=Limit.of(rate_per_s, burst),
    )
    return client, key


def parse_inline_keys(text: str) -> list[dict[str, Any]]:
    """`PIER_API_KEYS`: a JSON list of entries, or the short form `name=key,name=key` (every model)."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            data = jsontext.loads(text)
        except ValueError as exc:
            raise ValueError(f"not a valid JSON list: {exc}") from None
        if not isinstance(data, list):
            raise ValueError("must be a JSON list of key entries")
        return data
    entries: list[dict[str, Any]] = []
    for part in text.split(","):
        name, sep, key = part.strip().partition("=")
        if not sep:
            raise ValueError("the short form is name=key,name=key (a key is never logged; its name is)")
        entries.append({"name": name.strip(), "key": key.strip()})
    return entries


def read_key_file(path_text: str) -> list[Any]:
    """`PIER_API_KEYS_FILE`: YAML (or JSON) `keys: [...]` or a bare list; a bare name is read from /run/secrets."""
    path = Path(path_text)
    if not path.is_absolute() and not path.exists():
        path = Path("/run/secrets") / path_text
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if isinstance(data, Mapping):
        data = data.get("keys")
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a list of key entries (or `keys:` with one)")
    return data


def build_keys(
    entries: Iterable[tuple[object, str]], admin_key: str | None
) -> tuple[tuple[ClientKey, ...], bytes | None]:
    """Parse `(entry, where)` pairs; names and keys must be unique (the admin key is none of them)."""
    keys: list[ClientKey] = []
    names: set[str] = set()
    secrets: set[str] = set()
    for entry, where in entries:
        client, secret = parse_entry(entry, where)
        if client.name in names:
            raise ValueError(f"{where}: the name {client.name!r} is used twice")
        if secret in secrets:
            raise ValueError(f"{where} ({client.name}): the same key is given twice")
        names.add(client.name)
        secrets.add(secret)
        keys.append(client)
    admin_digest = None
    if admin_key:
        if len(admin_key) < 8 or any(c.isspace() for c in admin_key):
            raise ValueError("the admin key must be at least 8 characters with no whitespace")
        if admin_key in secrets:
            raise ValueError("the admin key must differ from every client key")
        admin_digest = _digest(admin_key)
    return tuple(keys), admin_digest


# --- the decision ---------------------------------------------------------------------------------------------


def presented_key(headers: MultiMapping[str]) -> str | None:
    """The key a client sent: `Authorization: Bearer <key>` (OpenAI SDK) or `x-api-key` (Anthropic SDK)."""
    auth = headers.get("Authorization")
    if auth:
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = headers.get("x-api-key")
    if key and key.strip():
        return key.strip()
    return None


def _in(address: Address | None, nets: Sequence[Network]) -> bool:
    return address is not None and any(address in net for net in nets)


def _address(text: str | None) -> Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> Address | None:
    """The client's address: the peer, unless the peer is a trusted proxy; then the right-most address in
    `X-Forwarded-For` that is not itself a trusted proxy (entries left of it are the client's to invent).
    A malformed entry ends the walk at the last trusted hop: nothing unparsable becomes an identity."""
    address = _address(peer)
    if not _in(address, trusted):
        return address
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        parsed = _address(hop)
        if parsed is None:
            return address
        address = parsed
        if not _in(parsed, trusted):
            return parsed
    return address


def _match(secret: str, table: KeyTable) -> tuple[ClientKey | None, bool]:
    digest = _digest(secret)
    found: ClientKey | None = None
    for client in table.keys:  # every key, no early exit: constant time in which key matched
        if hmac.compare_digest(digest, client.digest):
            found = client
    admin = table.admin_digest is not None and hmac.compare_digest(digest, table.admin_digest)
    return found, admin


def authorize(headers: MultiMapping[str], peer: str | None, path: str, table: KeyTable) -> Verdict:
    """May this request go on? Client keys open every route but `/internal/*`; `/internal/*` is open to the
    internal CIDRs (after trusted proxies are resolved) and to the admin key. `path` is the matched route's
    pattern, so no spelling of a path (encoded, dotted) reaches a route under another family's rule.

    The client's address is resolved only where it decides something (/internal, or a refusal to log): a
    request with a good key pays for one digest and the comparisons, nothing more."""
    secret = presented_key(headers)
    client, admin = _match(secret, table) if secret is not None else (None, False)
    if path.startswith(INTERNAL_PREFIX):
        address = _resolved(headers, peer, table)
        shown = str(address) if address is not None else ""
        if admin or _in(address, table.internal_nets):
            return Verdict(Outcome.ALLOW, None, shown, admin)
        if secret is not None and client is None:
            return Verdict(Outcome.INVALID_KEY, None, shown)
        return Verdict(Outcome.INTERNAL_DENIED, None, shown)
    if client is not None:
        return Verdict(Outcome.ALLOW, client)
    address = _resolved(headers, peer, table)
    shown = str(address) if address is not None else ""
    return Verdict(Outcome.MISSING_KEY if secret is None else Outcome.INVALID_KEY, None, shown)


def _resolved(headers: MultiMapping[str], peer: str | None, table: KeyTable) -> Address | None:
    return client_address(peer, headers.getall("X-Forwarded-For", ()), table.trusted_proxies)
