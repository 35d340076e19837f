"""A real OTLP/HTTP receiver for tests: decodes the protobuf exports and shows them as JSON.

POST /v1/traces and /v1/metrics take `application/x-protobuf` exports (as a collector would) and answer an empty
export response. GET /spans lists every span received (service, name, kind, ids, parent, attributes, links);
GET /metrics lists the metric names per service.

    python -m tests.telemetry.otlp_receiver --port 4318
"""

from __future__ import annotations

import argparse
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

SPANS = web.AppKey("spans", list[dict[str, Any]])
METRICS = web.AppKey("metrics", dict[str, set[str]])
KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, which) if which else None


def _attributes(items: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    item: KeyValue
    for item in items:
        out[item.key] = _value(item.value)
    return out


async def traces(request: web.Request) -> web.Response:
    if request.content_type != "application/x-protobuf":
        return web.Response(status=415, text="expected application/x-protobuf")
    export = ExportTraceServiceRequest()
    export.ParseFromString(await request.read())
    for resource_spans in export.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                request.app[SPANS].append(
                    {
                        "service": resource.get("service.name"),
                        "resource": resource,
                        "scope": scope_spans.scope.name,
                        "name": span.name,
                        "kind": KINDS.get(span.kind, str(span.kind)),
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "start_ns": span.start_time_unix_nano,
                        "end_ns": span.end_time_unix_nano,
                        "status": span.status.code,
                        "attributes": _attributes(span.attributes),
                        "links": [
                            {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()} for link in span.links
                        ],
                    }
                )
    return web.Response(body=b"", content_type="application/x-protobuf")


async def metrics(request: web.Request) -> web.Response:
    export = ExportMetricsServiceRequest()
    export.ParseFromString(await request.read())
    for resource_metrics in export.resource_metrics:
        service = str(_attributes(resource_metrics.resource.attributes).get("service.name"))
        names = request.app[METRICS].setdefault(service, set())
        for scope_metrics in resource_metrics.scope_metrics:
            names.update(metric.name for metric in scope_metrics.metrics)
    return web.Response(body=b"", content_type="application/x-protobuf")


async def list_spans(request: web.Request) -> web.Response:
    return web.json_response(request.app[SPANS])


async def list_metrics(request: web.Request) -> web.Response:
    return web.json_response({service: sorted(names) for service, names in request.app[METRICS].items()})


def build_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SPANS] = []
    app[METRICS] = {}
    app.router.add_post("/v1/traces", traces)
    app.router.add_post("/v1/metrics", metrics)
    app.router.add_get("/spans", list_spans)
    app.router.add_get("/metrics", list_metrics)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    web.run_app(build_app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
