"""The emulator's own control routes under `/_emulator/` (served on the main port and on `--admin-port`)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from tests.emulator.config import ConfigError
from tests.emulator.faults import Fault, FaultError
from tests.emulator.keys import EMULATOR
from tests.emulator.state import Emulator


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "emulator_error"}}, status=status)


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else {}
    except (ValueError, RecursionError):
        return _error(400, "body: invalid JSON")
    if not isinstance(body, dict):
        return _error(400, "body: expected a JSON object")
    return body


async def get_state(request: web.Request) -> web.Response:
    return web.json_response(request.app[EMULATOR].state_json())


async def get_requests(request: web.Request) -> web.Response:
    return web.json_response([r.to_json() for r in request.app[EMULATOR].log])


async def post_reset(request: web.Request) -> web.Response:
    em = request.app[EMULATOR]
    em.reset()
    await set_fault(em, Fault())
    return web.json_response(em.state_json())


async def post_config(request: web.Request) -> web.Response:
    """Any subset of the switches, plus `fault` (an object as for /_emulator/fault)."""
    em = request.app[EMULATOR]
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    fault_body = body.pop("fault", None)
    try:
        fault = Fault.parse(fault_body) if isinstance(fault_body, dict) else None
        if fault_body is not None and fault is None:
            raise FaultError("fault: expected an object")
        if fault is not None:
            _check_refuse(em, fault)
        em.config.update(body)
    except (ConfigError, FaultError) as exc:
        return _error(400, str(exc))
    if "models" in body:
        em.catalog.set_pulled(em.config.models)
    if fault is not None:
        await set_fault(em, fault)
    return web.json_response(em.state_json())


async def post_fault(request: web.Request) -> web.Response:
    em = request.app[EMULATOR]
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    try:
        fault = Fault.parse(body)
        _check_refuse(em, fault)
    except FaultError as exc:
        return _error(400, str(exc))
    await set_fault(em, fault)
    return web.json_response(em.state_json())


def _check_refuse(em: Emulator, fault: Fault) -> None:
    if fault.mode == "refuse" and em.listener is None:
        raise FaultError("mode: refuse needs the emulator's own server (python -m tests.emulator / EmulatorServer)")


async def set_fault(em: Emulator, fault: Fault) -> None:
    """Install a fault; `refuse` closes the main listener, anything else re-opens it."""
    if em.fault_timer is not None and em.fault_timer is not asyncio.current_task():
        em.fault_timer.cancel()
        em.fault_timer = None
    em.fault.__dict__.update(fault.__dict__)
    if em.listener is not None:
        if fault.mode == "refuse" and em.listener.listening:
            await em.listener.close()
            em.listener.listening = False
        elif fault.mode != "refuse" and not em.listener.listening:
            await em.listener.open()
            em.listener.listening = True
    if fault.duration_ms is not None and fault.mode != "none":
        em.fault_timer = asyncio.get_running_loop().create_task(_clear_after(em, fault.duration_ms / 1000.0))


async def _clear_after(em: Emulator, delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    await set_fault(em, Fault())
    em.fault_timer = None


def add_routes(app: web.Application) -> None:
    app.router.add_get("/_emulator/state", get_state)
    app.router.add_get("/_emulator/requests", get_requests)
    app.router.add_post("/_emulator/reset", post_reset)
    app.router.add_post("/_emulator/config", post_config)
    app.router.add_post("/_emulator/fault", post_fault)


def build_admin_app(em: Emulator) -> web.Application:
    """The admin-only application for `--admin-port` (it keeps answering while the main port refuses)."""
    app = web.Application()
    app[EMULATOR] = em
    add_routes(app)
    return app
