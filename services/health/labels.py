"""Docker containers -> endpoints: a pure function of the container list (Docker's list-API summaries).

Two kinds of container become endpoints:
- DMR's own controller (Docker CE): label `com.docker.model-runner.role=controller`, port 12434.
- Any container labelled `pier.endpoint=true`, shaped by optional labels:
  `pier.name` (default: the container name), `pier.type` (default docker-model-runner), `pier.port`
  (default: the type's port), `pier.priority`, `pier.network` (which network's address to use),
  `pier.url` (the whole base URL, overriding address and port), `pier.check_interval`, `pier.check_timeout`.
Static endpoints are merged in by `merge_endpoints`: on a name clash the static one wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from shared.config import Endpoint, resolve_endpoint
from shared.endpoints import EndpointConfig
from shared.errors import ConfigError
from shared.profiles import ProfileSet

LABEL_ENDPOINT = "pier.endpoint"
DMR_ROLE_LABEL = "com.docker.model-runner.role"
DMR_ROLE_CONTROLLER = "controller"
DMR_TYPE = "docker-model-runner"
DMR_PORT = 12434
_TRUE = frozenset({"true", "1", "yes", "on"})


@dataclass(frozen=True, slots=True)
class Discovery:
    """Endpoints found, and one line per container that looked like an endpoint but could not be used."""

    endpoints: tuple[Endpoint, ...]
    problems: tuple[str, ...] = ()


def container_name(container: Mapping[str, Any]) -> str:
    names = container.get("Names") or []
    if names and isinstance(names[0], str):
        return names[0].lstrip("/")
    return str(container.get("Id", ""))[:12]


def _address(container: Mapping[str, Any], network: str | None) -> str | None:
    networks = (container.get("NetworkSettings") or {}).get("Networks") or {}
    if network is not None:
        ip = (networks.get(network) or {}).get("IPAddress")
        return str(ip) if ip else None
    for net_name in sorted(networks):
        ip = (networks[net_name] or {}).get("IPAddress")
        if ip:
            return str(ip)
    return None


def _endpoint_config(container: Mapping[str, Any], profiles: ProfileSet) -> dict[str, Any] | None:
    """The raw endpoint mapping a container declares, or None when it declares none."""
    labels: Mapping[str, str] = container.get("Labels") or {}
    is_controller = labels.get(DMR_ROLE_LABEL) == DMR_ROLE_CONTROLLER
    is_marked = labels.get(LABEL_ENDPOINT, "").strip().lower() in _TRUE
    if not (is_controller or is_marked):
        return None
    name = labels.get("pier.name") or container_name(container)
    type_name = labels.get("pier.type") or DMR_TYPE
    raw: dict[str, Any] = {"name": name, "type": type_name}
    if "pier.url" in labels:
        raw["url"] = labels["pier.url"]
    else:
        profile = profiles.get(type_name)
        default_port = DMR_PORT if is_controller or profile is None else profile.default_port
        port = labels.get("pier.port") or str(default_port)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"pier.port={port!r} is not a port number")
        address = _address(container, labels.get("pier.network"))
        if address is None:
            where = f"on network {labels['pier.network']!r}" if "pier.network" in labels else ""
            raise ValueError(f"has no IP address {where}".strip() + " (set pier.url or pier.network)")
        raw["url"] = f"http://{address}:{port}"
    if "pier.priority" in labels:
        raw["priority"] = labels["pier.priority"]
    for label, key in (("pier.check_interval", "check_interval"), ("pier.check_timeout", "check_timeout")):
        if label in labels:
            raw[key] = labels[label]
    return raw


def endpoints_from_containers(
    containers: Sequence[Mapping[str, Any]], profiles: ProfileSet, required: Mapping[str, str] | None = None
) -> Discovery:
    """Map running containers to endpoints (source `docker`), in a stable order (by container name).

    Only containers carrying every `required` label (key = value) are considered. A container with bad
    labels is skipped with a problem line; two containers claiming one name: the first (by container name)
    keeps it.
    """
    endpoints: dict[str, Endpoint] = {}
    problems: list[str] = []
    for container in sorted(containers, key=container_name):
        if str(container.get("State", "running")).lower() != "running":
            continue
        labels = container.get("Labels") or {}
        if required and any(labels.get(key) != value for key, value in required.items()):
            continue
        cname = container_name(container)
        try:
            raw = _endpoint_config(container, profiles)
            if raw is None:
                continue
            cfg = EndpointConfig.model_validate(raw)
            endpoint = resolve_endpoint(cfg, profiles, f"container {cname}", source="docker")
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "labels"
            problems.append(f"container {cname}: {where}: {err['msg'].removeprefix('Value error, ')}")
            continue
        except (ValueError, ConfigError) as exc:
            problems.append(f"container {cname}: {exc}")
            continue
        if endpoint.name in endpoints:
            problems.append(f"container {cname}: endpoint name {endpoint.name!r} already taken by another container")
            continue
        endpoints[endpoint.name] = endpoint
    return Discovery(tuple(endpoints.values()), tuple(problems))


def merge_endpoints(
    static: Sequence[Endpoint], *others: Sequence[Endpoint]
) -> tuple[tuple[Endpoint, ...], tuple[str, ...]]:
    """Static endpoints first; each later list adds the names not yet taken. Returns (merged, clashes)."""
    merged: dict[str, Endpoint] = {e.name: e for e in static}
    clashes: list[str] = []
    for group in others:
        for endpoint in group:
            if endpoint.name in merged:
                kept = merged[endpoint.name]
                clashes.append(
                    f"endpoint {endpoint.name!r} from {endpoint.source} ({endpoint.url}) clashes with the "
                    f"{kept.source} one ({kept.url}); keeping the {kept.source} one"
                )
                continue
            merged[endpoint.name] = endpoint
    return tuple(merged.values()), tuple(clashes)
