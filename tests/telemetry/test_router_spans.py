"""The router's spans and metrics, read from an in-memory exporter on an injected TracerProvider.

Real emulators, a real redis-server and the health worker as processes; the router in this process so its
providers can be injected. Each test checks span names, kinds, parents and the attributes of issue 10.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
from anthropic import AsyncAnthropic
from anthropic.types import MessageParam
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode

from tests.harness import ProcessFactory, wait_for
from tests.router.support import MODEL, EmuSpec, build_stack, chat
from tests.telemetry.support import Traced, traced_router

CHAT = "/engines/v1/chat/completions"
CHAT_ROUTE = "POST /engines/v1/chat/completions"
EMBED = "/engines/v1/embeddings"
INBOUND_TRACE = "0af7651916cd43dd8448eb211c80319c"
INBOUND_PARENT = "b7ad6b7169203331"
INBOUND = f"00-{INBOUND_TRACE}-{INBOUND_PARENT}-01"


def is_context_of(traceparent: str, span: ReadableSpan) -> bool:
    """`traceparent` names `span` and says sampled (the other flag bits are the SDK's business)."""
    assert span.context is not None
    version, trace_id, span_id, flags = traceparent.split("-")
    ids = (int(trace_id, 16), int(span_id, 16))
    return version == "00" and ids == (span.context.trace_id, span.context.span_id) and int(flags, 16) & 1 == 1


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def children_of(parent: ReadableSpan, spans: list[ReadableSpan]) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def check_server(span: ReadableSpan, route: str, status: int, path: str | None = None) -> None:
    assert span.name == route
    assert span.kind is SpanKind.SERVER
    a = attrs(span)
    method, template = route.split(" ", 1)
    assert a["http.request.method"] == method
    assert a["http.route"] == template
    assert a["url.path"] == (path or template)
    assert a["url.scheme"] == "http"
    assert a["http.response.status_code"] == status
    assert span.status.status_code is (StatusCode.ERROR if status >= 500 else StatusCode.UNSET)


def check_client(span: ReadableSpan, traced: Traced, endpoint: str, operation: str) -> dict[str, Any]:
    assert span.name == f"{operation} {MODEL}"
    assert span.kind is SpanKind.CLIENT
    a = attrs(span)
    emu_url = traced.emus[endpoint].url
    assert a["gen_ai.operation.name"] == operation
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == MODEL
    assert a["server.address"] == "127.0.0.1"
    assert a["server.port"] == int(emu_url.rsplit(":", 1)[1])
    assert a["pier.endpoint"] == endpoint
    assert str(a["pier.route.reason"]).split(";", 1)[0] in ("priority", "optimistic", "strict", "round-robin")
    assert isinstance(a["pier.route.warm"], bool)
    return a


async def sent_traceparent(traced: Traced, endpoint: str, path: str) -> str:
    records = [r for r in await traced.emus[endpoint].requests() if r["path"] == path]
    headers = {k.lower(): v for k, v in records[-1]["headers"].items()}
    return str(headers["traceparent"])


async def test_streaming_chat_asks_for_usage_and_strips_it(
    procs: ProcessFactory, tmp_path: Path, redis_url: str
) -> None:
    async with traced_router(procs, tmp_path, redis_url, [("e1", 100, ())]) as traced:
        async with aiohttp.ClientSession() as http:
            body = chat(MODEL, stream=True, max_tokens=50, temperature=0.5, top_p=0.9, stop=["\n\n"])
            async with http.post(traced.url + CHAT, json=body, headers={"traceparent": INBOUND}) as resp:
                assert resp.status == 200
                raw = await resp.read()
        events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        # The client did not ask for usage: no usage-only chunk and no usage anywhere.
        assert chunks
        assert all(c["choices"] for c in chunks)
        assert all(c.get("usage") is None for c in chunks)
        # ... but the endpoint was asked for it.
        (record,) = [r for r in await traced.emus["e1"].requests() if r["path"] == CHAT]
        assert record["body"]["stream_options"] == {"include_usage": True}

        (server,) = traced.server_spans()
        (client,) = traced.client_spans()
        check_server(server, CHAT_ROUTE, 200)
        # The app's trace continues through Pier.
        assert server.context is not None
        assert client.context is not None
        assert server.context.trace_id == int(INBOUND_TRACE, 16)
        assert server.parent is not None
        assert server.parent.span_id == int(INBOUND_PARENT, 16)
        assert client.parent is not None
        assert client.parent.span_id == server.context.span_id
        a = check_client(client, traced, "e1", "chat")
        assert a["gen_ai.request.max_tokens"] == 50
        assert a["gen_ai.request.temperature"] == 0.5
        assert a["gen_ai.request.top_p"] == 0.9
        assert a["gen_ai.request.stop_sequences"] == ("\n\n",)
        assert a["gen_ai.request.stream"] is True
        assert a["gen_ai.response.id"] == chunks[0]["id"]
        assert a["gen_ai.response.model"] == chunks[0]["model"]
        assert a["gen_ai.response.finish_reasons"] == ("stop",)
        assert a["gen_ai.usage.input_tokens"] > 0
        pieces = [c for c in chunks if c["choices"][0]["delta"].get("content")]
        assert a["gen_ai.usage.output_tokens"] == len(pieces)  # the emulator counts one token per piece
        assert 0 < a["gen_ai.response.time_to_first_chunk"] < (client.end_time - client.start_time) / 1e9  # type: ignore[operator]
        assert a["http.response.status_code"] == 200
        assert "error.type" not in a
        assert not any(k.startswith("gen_ai.input") for k in a)  # content only when opted in
        # The endpoint got the CLIENT span's context.
        assert (
            await sent_traceparent(traced, "e1", CHAT)
            == f"00-{client.context.trace_id:032x}-{client.context.span_id:016x}-01"
        )
        # The CLIENT span ended after the last byte: it ends inside the SERVER span, which ends last.
        assert client.end_time is not None
        assert server.end_time is not None
        assert client.end_time <= server.end_time

        durations = traced.metric_points("gen_ai.client.operation.duration")
        assert durations
        assert durations[0].attributes["gen_ai.request.model"] == MODEL
        assert durations[0].attributes["pier.endpoint"] == "e1"
        tokens = {p.attributes["gen_ai.token.type"]: p for p in traced.metric_points("gen_ai.client.token.usage")}
        assert tokens["output"].sum == a["gen_ai.usage.output_tokens"]
        assert tokens["input"].sum == a["gen_ai.usage.input_tokens"]
        assert traced.metric_points("gen_ai.client.operation.time_to_first_chunk")[0].count == 1
        (status,) = [p for p in traced.metric_points("pier.endpoint.status") if p.attributes["pier.endpoint"] == "e1"]
        assert status.value == 1.0
        assert status.attributes["pier.status"] == "healthy"
        loaded = traced.metric_points("pier.endpoint.model.loaded")
        assert {p.attributes["gen_ai.request.model"] for p in loaded} >= {MODEL}
        assert [p.value for p in traced.metric_points("pier.router.inflight")] == [0]
        http_points = traced.metric_points("http.server.request.duration")
        assert any(p.attributes["http.route"] == "/engines/v1/chat/completions" for p in http_points)


async def test_streaming_chat_where_the_client_asked_for_usage(
    procs: ProcessFactory, tmp_path: Path, redis_url: str
) -> None:
    async with traced_router(procs, tmp_path, redis_url, [("e1", 100, ())]) as traced:
        client = openai.AsyncOpenAI(base_url=traced.url + "/engines/v1", api_key="none", max_retries=0)
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        await client.close()
        usage_chunks = [c for c in chunks if not c.choices]
        assert len(usage_chunks) == 1
        assert usage_chunks[0].usage is not None
        (server,) = traced.server_spans()
        (span,) = traced.client_spans()
        check_server(server, CHAT_ROUTE, 200)
        a = check_client(span, traced, "e1", "chat")
        assert a["gen_ai.usage.output_tokens"] == usage_chunks[0].usage.completion_tokens
        assert a["gen_ai.usage.input_tokens"] == usage_chunks[0].usage.prompt_tokens
        assert a["gen_ai.response.finish_reasons"] == ("stop",)
        assert a["gen_ai.response.time_to_first_chunk"] > 0


async def test_non_streaming_embedding(procs: ProcessFactory, tmp_path: Path, redis_url: str) -> None:
    async with traced_router(procs, tmp_path, redis_url, [("e1", 100, ())]) as traced:
        client = openai.AsyncOpenAI(base_url=traced.url + "/engines/v1", api_key="none", max_retries=0)
        result = await client.embeddings.create(model=MODEL, input=["one", "two"])
        await client.close()
        assert len(result.data) == 2
        (server,) = traced.server_spans()
        (span,) = traced.client_spans()
        check_server(server, "POST /engines/v1/embeddings", 200)
        assert server.parent is None  # no inbound traceparent: Pier starts the trace
        assert span.parent is not None
        assert server.context is not None
        assert span.parent.span_id == server.context.span_id
        a = check_client(span, traced, "e1", "embeddings")
        assert a["gen_ai.usage.input_tokens"] == result.usage.prompt_tokens
        assert a["gen_ai.response.model"] == result.model
        assert "gen_ai.response.time_to_first_chunk" not in a  # not a stream
        assert "gen_ai.request.stream" not in a
        assert span.context is not None
        assert is_context_of(await sent_traceparent(traced, "e1", EMBED), span)


async def test_failover_attempts_are_siblings(procs: ProcessFactory, tmp_path: Path, redis_url: str) -> None:
    async with traced_router(procs, tmp_path, redis_url, [("e1", 100, ()), ("e2", 50, ())]) as traced:
        await traced.emus["e1"].fault(mode="refuse")
        async with aiohttp.ClientSession() as http, http.post(traced.url + CHAT, json=chat(MODEL)) as resp:
            assert resp.status == 200
            assert resp.headers["X-Pier-Endpoint"] == "e2"
            await resp.read()
        (server,) = traced.server_spans()
        check_server(server, CHAT_ROUTE, 200)
        first, second = sorted(children_of(server, traced.client_spans()), key=lambda s: s.start_time or 0)
        failed = check_client(first, traced, "e1", "chat")
        assert failed["error.type"] == "upstream_unreachable"
        assert first.status.status_code is StatusCode.ERROR
        assert failed["pier.attempt"] == 1
        ok = check_client(second, traced, "e2", "chat")
        assert "error.type" not in ok
        assert ok["pier.attempt"] == 2
        assert ok["gen_ai.usage.output_tokens"] > 0
        (failover,) = traced.metric_points("pier.router.failovers")
        assert failover.value == 1
        assert failover.attributes == {"pier.endpoint": "e1", "error.type": "upstream_unreachable"}


async def test_client_disconnect_is_not_an_error(procs: ProcessFactory, tmp_path: Path, redis_url: str) -> None:
    args = ("--chunks", "40", "--chunk-interval-ms", "250")
    async with traced_router(procs, tmp_path, redis_url, [("e1", 100, args)]) as traced:
        async with aiohttp.ClientSession() as http:
            resp = await http.post(traced.url + CHAT, json=chat(MODEL, stream=True))
            assert resp.status == 200
            seen = 0
            async for line in resp.content:
                seen += line.startswith(b"data: ")
                if seen >= 2:
                    break
            resp.close()  # the client goes away mid-stream
        (span,) = await wait_for(traced.client_spans, timeout_s=10, what="the attempt's span to end")
        (server,) = await wait_for(traced.server_spans, timeout_s=10, what="the request's span to end")
        a = check_client(span, traced, "e1", "chat")
        assert a["pier.client.cancelled"] is True
        assert "error.type" not in a
        assert span.status.status_code is StatusCode.UNSET
        assert server.status.status_code is StatusCode.UNSET
        assert a["gen_ai.response.time_to_first_chunk"] > 0
        assert "gen_ai.usage.output_tokens" not in a  # the stream never reached its usage chunk


async def test_no_telemetry_means_no_spans_and_metrics_route_says_how(
    procs: ProcessFactory, tmp_path: Path, redis_url: str
) -> None:
    """The default process: no OTEL endpoint, no Prometheus: /internal/metrics is a JSON 404 naming the switch."""
    stack = build_stack(procs, tmp_path, redis_url, [EmuSpec("e1")])
    async with aiohttp.ClientSession() as http:
        async with http.get(stack.url + "/internal/metrics") as resp:
            assert resp.status == 404
            body = await resp.json()
            assert "PIER_PROMETHEUS_METRICS" in body["error"]["message"]
        async with http.post(stack.url + CHAT, json=chat(MODEL, stream=True)) as resp:
            raw = await resp.read()
    (record,) = [r for r in await stack.emu("e1").requests() if r["path"] == CHAT]
    assert "stream_options" not in record["body"]  # nothing injected when nothing is traced
    assert b'"usage"' not in raw


async def test_unsampled_requests_make_no_spans_but_propagate_and_count(
    procs: ProcessFactory, tmp_path: Path, redis_url: str
) -> None:
    async with traced_router(procs, tmp_path, redis_url, [("e1", 100, ())], sampler=ALWAYS_OFF) as traced:
        async with (
            aiohttp.ClientSession() as http,
            http.post(traced.url + CHAT, json=chat(MODEL, stream=True)) as resp,
        ):
            raw = await resp.read()
        assert b'"usage"' not in raw  # usage still asked for (the metrics need it) and still stripped
        assert traced.finished() == []
        traceparent = await sent_traceparent(traced, "e1", CHAT)
        assert int(traceparent.split("-")[3], 16) & 1 == 0  # the endpoint learns the trace is not sampled
        tokens = {p.attributes["gen_ai.token.type"]: p for p in traced.metric_points("gen_ai.client.token.usage")}
        assert tokens["output"].sum > 0


async def test_without_metrics_an_unsampled_request_only_passes_its_trace_on(
    procs: ProcessFactory, tmp_path: Path, redis_url: str
) -> None:
    # No metric reader: nothing reads an unsampled answer, so usage is not asked for; a sampled one still is.
    sampler = TraceIdRatioBased(0.5)
    async with traced_router(
        procs, tmp_path, redis_url, [("e1", 100, ())], sampler=ParentBased(sampler), metrics=False
    ) as traced:
        async with aiohttp.ClientSession() as http:
            for sampled in (False, True):
                # The caller's sampled flag decides (parent-based), so both paths are taken on purpose.
                caller = f"00-{INBOUND_TRACE}-{INBOUND_PARENT}-{'01' if sampled else '00'}"
                async with http.post(
                    traced.url + CHAT, json=chat(MODEL, stream=True), headers={"traceparent": caller}
                ) as resp:
                    assert resp.status == 200
                    raw = await resp.read()
                assert b'"usage"' not in raw  # the client did not ask for usage and does not get it
                records = [r for r in await traced.emus["e1"].requests() if r["path"] == CHAT]
                sent = records[-1]["body"]
                headers = {k.lower(): v for k, v in records[-1]["headers"].items()}
                assert headers["traceparent"].split("-")[1] == INBOUND_TRACE
                assert int(headers["traceparent"].split("-")[3], 16) & 1 == int(sampled)
                assert ("stream_options" in sent) is sampled  # asked for only when a span will carry it
        clients = traced.client_spans()
        assert len(clients) == 1
        assert attrs(clients[0])["gen_ai.usage.output_tokens"] > 0
        assert traced.metric_points("gen_ai.client.token.usage") == []


async def test_prompt_content_only_when_opted_in_and_other_routes_are_traced(
    procs: ProcessFactory, tmp_path: Path, redis_url: str
) -> None:
    async with traced_router(procs, tmp_path, redis_url, [("e1", 100, ())], capture_content=True) as traced:
        async with aiohttp.ClientSession() as http:
            async with http.post(traced.url + CHAT, json=chat(MODEL)) as resp:
                assert resp.status == 200
            async with http.get(traced.url + "/internal/health") as resp:
                assert resp.status == 200
            async with http.get(traced.url + "/v1/models/nope") as resp:
                assert resp.status == 404
        (span,) = traced.client_spans()
        assert json.loads(attrs(span)["gen_ai.input.messages"]) == chat(MODEL)["messages"]
        names = sorted(s.name for s in traced.server_spans())
        assert names == ["GET /internal/health", "GET /v1/models/{model}", CHAT_ROUTE]
        (missing,) = [s for s in traced.server_spans() if s.name == "GET /v1/models/{model}"]
        check_server(missing, "GET /v1/models/{model}", 404, "/v1/models/nope")  # the span name never has raw paths


async def test_translated_anthropic_answers_carry_usage_and_finish_reasons(
    procs: ProcessFactory, tmp_path: Path, redis_url: str
) -> None:
    """An `openai-compatible` endpoint without Anthropic's route: Pier translates, and the attempt's span still
    reads the endpoint's answer (whole and streamed)."""
    emus = [("e1", 100, ("--no-anthropic",))]
    async with traced_router(procs, tmp_path, redis_url, emus, entry={"type": "openai-compatible"}) as traced:
        ask: list[MessageParam] = [{"role": "user", "content": "hello there"}]
        async with AsyncAnthropic(base_url=traced.url, api_key="not-forwarded", max_retries=0, timeout=30) as client:
            message = await client.messages.create(model=MODEL, max_tokens=32, messages=ask)
            stream = await client.messages.create(model=MODEL, max_tokens=32, messages=ask, stream=True)
            kinds = [event.type async for event in stream]
        assert kinds[-1] == "message_stop"
        spans = sorted(traced.client_spans(), key=lambda s: s.start_time or 0)
        assert len(spans) == 2
        whole, streamed = attrs(spans[0]), attrs(spans[1])
        for span in (whole, streamed):
            assert span["gen_ai.provider.name"] == "anthropic"
            assert span["gen_ai.operation.name"] == "chat"
            assert span["gen_ai.usage.input_tokens"] > 0
            assert span["gen_ai.usage.output_tokens"] > 0
            assert span["gen_ai.response.finish_reasons"]
            assert span["gen_ai.response.id"]
            assert "error.type" not in span
        assert whole["gen_ai.usage.output_tokens"] == message.usage.output_tokens
        assert whole["gen_ai.usage.input_tokens"] == message.usage.input_tokens
        assert streamed["gen_ai.response.time_to_first_chunk"] > 0
        assert "gen_ai.response.time_to_first_chunk" not in whole
