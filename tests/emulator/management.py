"""DMR's non-inference routes: `/`, model listings, pulls and deletes, `/engines/ps|status|unload|_configure`,
`/version`, `/metrics`."""

from __future__ import annotations

import asyncio
import html
import json
import shlex
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.emulator import content
from tests.emulator.catalog import model_id, normalise, pullable
from tests.emulator.config import VALID_ENGINES
from tests.emulator.content import text_error
from tests.emulator.errors import DmrError, model_not_found
from tests.emulator.inference import MAX_BODY_BYTES
from tests.emulator.keys import EMULATOR
from tests.emulator.runners import Runner
from tests.emulator.streaming import ClientGone

ENGINE_SHA = "a1b2c3d"


async def root(request: web.Request) -> web.Response:
    return web.Response(text="Docker Model Runner is running", content_type="text/plain")


async def openai_models(request: web.Request) -> web.Response:
    """GET /engines/v1/models (and aliases): every pulled model, or only the loaded ones (old DMR)."""
    em = request.app[EMULATOR]
    engine = request.match_info.get("engine")
    if engine is not None and engine not in VALID_ENGINES:
        raise DmrError(404, "backend not found")
    models = list(em.catalog.models.values())
    if em.config.list_mode == "loaded":
        loaded = em.runners.loaded_tags()
        models = [m for m in models if m.tag in loaded]
    name = request.match_info.get("name")
    if name is not None:
        found = em.catalog.get(name)
        if found is None or found not in models:
            raise model_not_found(name)
        return content.json_response(found.openai_json())
    return content.json_response({"object": "list", "data": [m.openai_json() for m in models]})


async def management_models(request: web.Request) -> web.Response:
    """GET /models: the management listing."""
    em = request.app[EMULATOR]
    return content.json_response([m.management_json() for m in em.catalog.models.values()])


async def management_model(request: web.Request) -> web.Response:
    em = request.app[EMULATOR]
    name = request.match_info["name"]
    model = em.catalog.get(name)
    if model is None:
        raise model_not_found(name)
    return content.json_response(model.management_json())


async def delete_model(request: web.Request) -> web.Response:
    em = request.app[EMULATOR]
    name = request.match_info["name"]
    model = em.catalog.get(name)
    if model is None:
        raise model_not_found(name)
    if em.runners.busy(model.tag):
        raise DmrError(409, f"model {name} is in use by a runner")
    em.runners.unload(all_=False, tags={model.tag})
    em.catalog.remove(name)
    return content.json_response([{"Untagged": model.tag}, {"Deleted": model.id}])


async def create_model(request: web.Request) -> web.StreamResponse:
    """POST /models/create {"from": ...}: a pull, streamed as one JSON object per line."""
    em = request.app[EMULATOR]
    body = await _json_body(request)
    source = body.get("from")
    if not isinstance(source, str) or not source.strip():
        raise DmrError(400, "invalid reference")
    if not pullable(source, em.config.pullable):
        raise DmrError(404, "Model not found")
    as_json = "application/json" in request.headers.get("Accept", "")
    resp = web.StreamResponse(status=200)
    resp.content_type = "application/json" if as_json else "text/plain"
    tag = normalise(source)
    total = 4 * 1024 * 1024
    layer: dict[str, Any] = {"id": model_id(tag + "#layer"), "size": total, "current": 0}
    steps = 4
    try:
        await resp.prepare(request)
        for step in range(1, steps + 1):
            await asyncio.sleep(em.config.pull_time_ms / 1000.0 / steps)
            current = total * step // steps
            layer["current"] = current
            message = f"Downloaded: {current / 1048576:.2f} MB"
            await _line(resp, {"type": "progress", "message": message, "total": total, "layer": layer}, as_json)
        if em.config.pull_error:
            await _line(resp, {"type": "error", "message": em.config.pull_error}, as_json)
        else:
            em.catalog.add(tag)
            em.counters["pulls"] += 1
            await _line(resp, {"type": "success", "message": f"Model pulled successfully: {tag}"}, as_json)
        await resp.write_eof()
    except ConnectionError:
        raise ClientGone from None
    return resp


async def _line(resp: web.StreamResponse, obj: dict[str, Any], as_json: bool) -> None:
    text = json.dumps(obj, separators=(",", ":"))
    # Without `Accept: application/json`, DMR writes through an HTML-escaping text writer.
    await resp.write(((text if as_json else html.escape(text).replace("&quot;", "&#34;")) + "\n").encode())


async def ps(request: web.Request) -> web.Response:
    em = request.app[EMULATOR]
    if em.config.no_ps:
        return text_error(404, "not found")
    return content.json_response([r.ps_json() for r in em.runners.runners.values()])


async def status(request: web.Request) -> web.Response:
    em = request.app[EMULATOR]
    out = {
        engine: (f"Running: {engine} {ENGINE_SHA}" if engine in em.config.engines else "Not Installed")
        for engine in VALID_ENGINES
    }
    return content.json_response(out)


async def version(request: web.Request) -> web.Response:
    em = request.app[EMULATOR]
    if em.config.no_ps:
        return text_error(404, "not found")
    return content.json_response({"version": em.config.version})


async def configure(request: web.Request) -> web.Response:
    """POST /engines/_configure: 202, then a background preload; 409 when the model's runner is busy."""
    em = request.app[EMULATOR]
    engine = request.match_info.get("engine")
    if engine is not None and engine not in VALID_ENGINES:
        raise DmrError(404, "backend not found")
    body = await _json_body(request)
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise DmrError(400, "model is required")
    model = em.catalog.get(name)
    if model is None:
        raise model_not_found(name)
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    parallel = parse_parallel(body.get("runtime-flags"), body.get("raw-runtime-flags"))
    if em.runners.busy(model.tag):
        raise DmrError(409, "runner already active")
    mode = body.get("mode") if body.get("mode") in ("completion", "embedding") else "completion"
    backend = engine or "llama.cpp"
    key = (backend, model.tag, str(mode))
    if keep_alive is not None:
        em.runners.keep_alive_by_tag[model.tag] = keep_alive
    # A configuration replaces the runner's previous one: without --parallel it is back to the default.
    if parallel is None:
        em.runners.parallel_by_key.pop(key, None)
    else:
        em.runners.parallel_by_key[key] = parallel
    # A reconfigure replaces the idle runner, as DMR restarts it with the new settings.
    em.runners.unload(all_=False, tags={model.tag})
    em.start_background(em.runners.preload(key, name))
    return web.Response(status=202)


def parse_parallel(flags: Any, raw_flags: Any = None) -> int | None:
    """llama.cpp's slot count from `_configure` runtime flags: `["--parallel", "4"]`, `["--parallel=4"]`
    (also `-np`), or the same in `raw-runtime-flags` as one string. None when absent; the last one wins."""
    if flags is None:
        flags = []
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise DmrError(400, "invalid runtime-flags: expected a list of strings")
    if raw_flags is not None:
        if not isinstance(raw_flags, str):
            raise DmrError(400, "invalid raw-runtime-flags: expected a string")
        try:
            flags = [*flags, *shlex.split(raw_flags)]
        except ValueError as exc:
            raise DmrError(400, f"invalid raw-runtime-flags: {exc}") from None
    found: str | None = None
    i = 0
    while i < len(flags):
        name, eq, value = flags[i].partition("=")
        i += 1
        if name not in ("--parallel", "-np"):
            continue
        if not eq:
            if i >= len(flags):
                raise DmrError(400, f"invalid runtime-flags: {name} needs a value")
            value = flags[i]
            i += 1
        found = value
    if found is None:
        return None
    try:
        parallel = int(found)
    except ValueError:
        parallel = 0
    if parallel < 1:
        raise DmrError(400, f"invalid runtime-flags: --parallel expects a whole number >= 1, got {found!r}")
    return parallel


def parse_keep_alive(value: Any) -> float | None:
    """`"10m"`, `"1h30m"`, `"90s"`, `"0"`, `"-1"` or a number of seconds; None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise DmrError(400, "invalid keep_alive")
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        raise DmrError(400, "invalid keep_alive")
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    total, number = 0.0, ""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = "ms" if text.startswith("ms", i) else ch
        if unit not in units or not number:
            raise DmrError(400, f"invalid keep_alive: {value!r}")
        total += float(number) * units[unit]
        number = ""
        i += len(unit)
    if number:
        raise DmrError(400, f"invalid keep_alive: {value!r}")
    return total


async def unload(request: web.Request) -> web.Response:
    em = request.app[EMULATOR]
    body = await _json_body(request)
    names = body.get("models") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DmrError(400, "invalid request")
    backend = body.get("backend")
    count = em.runners.unload(
        all_=body.get("all") is True,
        tags={normalise(n) for n in names},
        backend=backend if isinstance(backend, str) else None,
    )
    return content.json_response({"unloaded_runners": count})


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: llama.cpp's Prometheus series per runner, labelled as DMR aggregates them."""
    em = request.app[EMULATOR]
    runners = [r for r in em.runners.runners.values() if not r.loading]
    if not runners:
        return web.Response(text="# No active runners\n", content_type="text/plain")
    series: tuple[tuple[str, str, str, Callable[[Runner], int]], ...] = (
        ("llamacpp:prompt_tokens_total", "counter", "Number of prompt tokens processed.", lambda r: r.prompt_tokens),
        (
            "llamacpp:tokens_predicted_total",
            "counter",
            "Number of generation tokens processed.",
            lambda r: r.predicted_tokens,
        ),
        ("llamacpp:n_decode_total", "counter", "Total number of llama_decode() calls", lambda r: r.requests),
        ("llamacpp:requests_processing", "gauge", "Number of requests processing.", lambda r: r.slots.in_use),
        ("llamacpp:requests_deferred", "gauge", "Number of requests deferred.", lambda r: r.slots.waiting),
    )
    lines: list[str] = []
    for metric, kind, help_text, value in series:
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
        for r in runners:
            labels = f'backend="{r.backend}",model="{r.model_name}",mode="{r.mode}"'
            lines.append(f"{metric}{{{labels}}} {value(r)}")
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8")


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if len(raw) > MAX_BODY_BYTES:
        raise DmrError(400, "request too large")
    try:
        body = json.loads(raw) if raw else {}
    except (ValueError, RecursionError):  # too deep is refused like malformed, as Go's decoder does
        raise DmrError(400, "invalid request") from None
    if not isinstance(body, dict):
        raise DmrError(400, "invalid request")
    return body
