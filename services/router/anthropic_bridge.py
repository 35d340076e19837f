"""Which way an Anthropic request goes to one endpoint: the proxy's one call for the Anthropic routes.

Per endpoint, in order (`legs`, a pure function of the target, the request and what was learned):
- messages: the native route when the profile says it exists and the endpoint never answered 404 there
  (passthrough), else `/v1/chat/completions` with translation both ways;
- count_tokens: the native route, else llama-server's `/tokenize` (the endpoint's own tokenizer) unless the
  endpoint answered 404 there, else an estimate marked `X-Pier-Token-Count: estimated`.
A 404 meaning "no such route" is remembered per endpoint (in this process, for `RELEARN_S`: an upgraded DMR
gains the route) and the next leg is tried at once on the same endpoint; everything else (failover,
circuits, streaming, disconnects) is the exchanger's, as for any request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from services.router.anthropic_relay import MODE_HEADER, Leg, Mode, RouteMissing
from services.router.anthropic_request import Untranslatable, estimate_tokens, expect, to_chat, tokenize_body
from services.router.errors import InvalidRequest
from services.router.exchange import Call, Exchanger
from services.router.headers import pier_headers
from services.router.table import Target
from shared.h1client import origin_of

ESTIMATE_HEADER = "X-Pier-Token-Count"
# The client's Anthropic credential is for Anthropic; a translated request carries the endpoint's own auth.
_TRANSLATED_DROP = ("x-api-key", "anthropic-version", "anthropic-beta")


RELEARN_S = 600.0  # how long a 404 on a route is believed before the route is tried again


class AnthropicBridge:
    """What this router process learned about endpoints' Anthropic routes, and the legs it derives."""

    def __init__(self, *, relearn_s: float = RELEARN_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._relearn_s = relearn_s
        self._clock = clock
        # Endpoint name -> when it answered 404 on the native route, on /tokenize.
        self.no_native: dict[str, float] = {}
        self.no_tokenize: dict[str, float] = {}

    def _missing(self, learned: dict[str, float], name: str) -> bool:
        at = learned.get(name)
        if at is None:
            return False
        if self._clock() - at < self._relearn_s:
            return True
        del learned[name]  # long ago: try the route again
        return False

    def legs(
        self, target: Target, count: bool, data: dict[str, Any], body: bytes, send_model: str, query: str
    ) -> Iterator[Leg]:
        """The ways to try, in order, on `target`. `body` is what passthrough sends (alias already applied).

        Lazy: a leg's body is built only when the leg before it did not answer, so passthrough pays nothing for
        translation. `InvalidRequest` when the request reaches a leg that cannot carry it.
        """
        wanted = expect(data, data["model"])
        if target.anthropic_native and not self._missing(self.no_native, target.name):
            path = target.anthropic_count_tokens_path if count else target.anthropic_messages_path
            yield Leg(Mode.PASSTHROUGH, f"{path}?{query}" if query else path, body, wanted, probe=True)
        if not count:
            try:
                chat = json.dumps(to_chat(data, send_model), separators=(",", ":"), ensure_ascii=False).encode()
            except Untranslatable as exc:
                raise InvalidRequest(f"messages: {exc}", param="messages") from None
            yield Leg(Mode.TRANSLATION, f"{target.api_prefix}/chat/completions", chat, wanted)
            return
        if not self._missing(self.no_tokenize, target.name):
            yield Leg(Mode.TOKENIZE, "/tokenize", json.dumps(tokenize_body(data)).encode(), wanted, probe=True)
        estimate = json.dumps({"input_tokens": estimate_tokens(data)}).encode()
        yield Leg(Mode.ESTIMATE, "", estimate, wanted)

    def remember(self, target: Target, leg: Leg) -> None:
        (self.no_tokenize if leg.mode is Mode.TOKENIZE else self.no_native)[target.name] = self._clock()

    async def exchange(
        self,
        exchanger: Exchanger,
        call: Call,
        target: Target,
        headers: CIMultiDict[str],
        legs: Iterator[Leg],
        model: str,
        *,
        shield_load: bool,
    ) -> web.StreamResponse:
        """Try `legs` on `target` in order; `Failover` (from the exchanger) when the endpoint failed."""
        origin = origin_of(target.url)
        translated: CIMultiDict[str] | None = None
        for leg in legs:
            if leg.mode is Mode.ESTIMATE:
                return _estimate(call, target, leg, model)
            call.leg = leg
            send = headers
            if leg.translates:
                if translated is None:
                    translated = headers.copy()
                    for name in _TRANSLATED_DROP:
                        translated.popall(name, None)
                    translated["Content-Type"] = "application/json"
                    translated["Accept-Encoding"] = "identity"  # the answer is read, so it must be plain
                send = translated
            try:
                return await exchanger.exchange(
                    call, target, origin, leg.path, send, leg.body, model, shield_load=shield_load
                )
            except RouteMissing:
                self.remember(target, leg)
        raise RuntimeError("an Anthropic request ran out of legs")  # translation and estimate never raise it


def _estimate(call: Call, target: Target, leg: Leg, model: str) -> web.Response:
    """count_tokens without any tokenizer in reach: the estimate, answered by the router and marked as one."""
    response = web.Response(body=leg.body, content_type="application/json")
    for name, value in pier_headers(call.request_id, target.name, model, call.route, call.attempts):
        response.headers[name] = value
    response.headers[MODE_HEADER] = Mode.ESTIMATE.value
    response.headers[ESTIMATE_HEADER] = "estimated"
    return response
