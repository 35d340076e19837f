"""Pier's Grafana dashboards, written from one panel list so the two copies cannot drift.

- `grafana/dashboards/pier.json`: for the `observability` profile's grafana/otel-lgtm container (metrics in its
  Prometheus from OTLP, traces in Tempo): every panel, plus the health/warm-up panels and two Tempo trace tables.
- `prometheus/pier-dashboard.json`: for a plain Prometheus that scrapes the router's `/internal/metrics`
  (PIER_PROMETHEUS_METRICS=true): the same router panels, no Tempo (and no health/warm-up metrics, which only
  travel over OTLP).

    python -m observability.dashboards          # rewrite both files (a test checks they are up to date)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LGTM_FILE = HERE / "grafana" / "dashboards" / "pier.json"
PROMETHEUS_FILE = HERE / "prometheus" / "pier-dashboard.json"

RATE = "$__rate_interval"
MODEL = 'gen_ai_request_model=~"$model"'
ENDPOINT = 'pier_endpoint=~"$endpoint"'
SEL = "{" + MODEL + "," + ENDPOINT + "}"


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[tuple[str, str], ...]  # (legend, PromQL)
    unit: str = "short"
    kind: str = "timeseries"
    otlp_only: bool = False  # health/warm-up metrics: they reach Prometheus through OTLP only
    description: str = ""


def _q(quantile: float, metric: str, by: str) -> str:
    return f"histogram_quantile({quantile}, sum by (le, {by}) (rate({metric}_bucket{SEL}[{RATE}])))"


PANELS: tuple[Panel, ...] = (
    Panel(
        "Requests/s by model",
        (
            (
                "{{gen_ai_request_model}}",
                f"sum by (gen_ai_request_model) (rate(gen_ai_client_operation_duration_seconds_count{SEL}[{RATE}]))",
            ),
        ),
        "reqps",
    ),
    Panel(
        "Requests/s by endpoint",
        (
            (
                "{{pier_endpoint}}",
                f"sum by (pier_endpoint) (rate(gen_ai_client_operation_duration_seconds_count{SEL}[{RATE}]))",
            ),
        ),
        "reqps",
    ),
    Panel(
        "Latency p50 / p95 by model",
        (
            (
                "p50 {{gen_ai_request_model}}",
                _q(0.5, "gen_ai_client_operation_duration_seconds", "gen_ai_request_model"),
            ),
            (
                "p95 {{gen_ai_request_model}}",
                _q(0.95, "gen_ai_client_operation_duration_seconds", "gen_ai_request_model"),
            ),
        ),
        "s",
    ),
    Panel(
        "Latency p50 / p95 by endpoint",
        (
            ("p50 {{pier_endpoint}}", _q(0.5, "gen_ai_client_operation_duration_seconds", "pier_endpoint")),
            ("p95 {{pier_endpoint}}", _q(0.95, "gen_ai_client_operation_duration_seconds", "pier_endpoint")),
        ),
        "s",
    ),
    Panel(
        "Time to first token p95",
        (
            (
                "{{gen_ai_request_model}}",
                _q(0.95, "gen_ai_client_operation_time_to_first_chunk_seconds", "gen_ai_request_model"),
            ),
        ),
        "s",
    ),
    Panel(
        "Output tokens/s",
        (
            (
                "{{gen_ai_request_model}}",
                "sum by (gen_ai_request_model) "
                f'(rate(gen_ai_client_token_usage_sum{{gen_ai_token_type="output",{MODEL},{ENDPOINT}}}[{RATE}]))',
            ),
        ),
        "short",
    ),
    Panel(
        "Errors/s by error.type",
        (
            (
                "{{error_type}}",
                f'sum by (error_type) (rate(pier_router_attempts_total{{error_type!="",{MODEL},{ENDPOINT}}}[{RATE}]))',
            ),
        ),
        "reqps",
    ),
    Panel(
        "Error ratio",
        (
            (
                "errors / attempts",
                f'sum(rate(pier_router_attempts_total{{error_type!="",{MODEL},{ENDPOINT}}}[{RATE}])) '
                f"/ sum(rate(pier_router_attempts_total{SEL}[{RATE}]))",
            ),
        ),
        "percentunit",
    ),
    Panel(
        "Failovers",
        (
            (
                "{{pier_endpoint}} {{error_type}}",
                f"sum by (pier_endpoint, error_type) (increase(pier_router_failovers_total{{{ENDPOINT}}}[{RATE}]))",
            ),
        ),
    ),
    Panel(
        "Routing reasons",
        (
            (
                "{{pier_route}} -> {{pier_endpoint}}",
                f"sum by (pier_route, pier_endpoint) (rate(pier_router_attempts_total{SEL}[{RATE}]))",
            ),
        ),
        "reqps",
    ),
    Panel(
        "Endpoint status (1 healthy, 0.75 busy, 0.5 degraded, 0.25 unknown, 0 down)",
        (("{{pier_endpoint}}", f"max by (pier_endpoint) (pier_endpoint_status{{{ENDPOINT}}})"),),
    ),
    Panel(
        "Warm models (1 loaded, 0 cold)",
        (
            (
                "{{pier_endpoint}} {{gen_ai_request_model}}",
                f"max by (pier_endpoint, gen_ai_request_model) (pier_endpoint_model_loaded{SEL})",
            ),
        ),
    ),
    Panel(
        "In flight per endpoint",
        (("{{pier_endpoint}}", f"sum by (pier_endpoint) (pier_router_inflight{{{ENDPOINT}}})"),),
    ),
    Panel(
        "Circuit-breaker openings",
        (
            (
                "{{pier_endpoint}}",
                f"sum by (pier_endpoint) (increase(pier_router_circuit_openings_total{{{ENDPOINT}}}[{RATE}]))",
            ),
        ),
    ),
    Panel(
        "HTTP requests/s by route and status",
        (
            (
                "{{http_route}} {{http_response_status_code}}",
                "sum by (http_route, http_response_status_code) "
                f"(rate(http_server_request_duration_seconds_count[{RATE}]))",
            ),
        ),
        "reqps",
    ),
    Panel(
        "Health probe duration p95",
        (
            (
                "{{pier_endpoint}}",
                "histogram_quantile(0.95, sum by (le, pier_endpoint) "
                f"(rate(pier_health_probe_duration_seconds_bucket{{{ENDPOINT}}}[{RATE}])))",
            ),
        ),
        "s",
        otlp_only=True,
    ),
    Panel(
        "Warm-up load duration p95",
        (
            (
                "{{gen_ai_request_model}}",
                "histogram_quantile(0.95, sum by (le, gen_ai_request_model) "
                f"(rate(pier_warmup_load_duration_seconds_bucket{{{MODEL}}}[{RATE}])))",
            ),
        ),
        "s",
        otlp_only=True,
        description="From the warm-up worker (metric pier.warmup.load.duration).",
    ),
)

# TraceQL for the Tempo tables (lgtm copy only). Checked against captured spans by the OTLP receiver test.
TRACE_TABLES: tuple[tuple[str, str], ...] = (
    (
        "Slowest requests (open a row for the trace)",
        '{resource.service.name="pier-router" && kind=server '
        '&& span.http.route=~".*/(chat/completions|completions|embeddings|messages)"} '
        "| select(span.http.route, span.http.response.status_code) ",
    ),
    (
        "Failed attempts",
        '{resource.service.name="pier-router" && kind=client && span.error.type!=""} '
        "| select(span.gen_ai.request.model, span.pier.endpoint, span.error.type)",
    ),
)


def promql_queries(*, otlp: bool) -> list[str]:
    """Every PromQL expression of one copy (the Prometheus test runs each of them)."""
    return [expr for panel in PANELS if otlp or not panel.otlp_only for _, expr in panel.targets]


def _panel(index: int, panel: Panel, datasource: dict[str, str]) -> dict[str, Any]:
    return {
        "id": index + 1,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": datasource,
        "gridPos": {"h": 8, "w": 12, "x": (index % 2) * 12, "y": (index // 2) * 8},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": datasource, "expr": expr, "legendFormat": legend}
            for i, (legend, expr) in enumerate(panel.targets)
        ],
    }


def _trace_table(index: int, title: str, query: str, y: int) -> dict[str, Any]:
    tempo = {"type": "tempo", "uid": "tempo"}
    return {
        "id": 100 + index,
        "type": "table",
        "title": title,
        "datasource": tempo,
        "gridPos": {"h": 10, "w": 24, "x": 0, "y": y},
        "targets": [{"refId": "A", "datasource": tempo, "queryType": "traceql", "query": query, "limit": 20}],
    }


def _variable(name: str, label: str, datasource: dict[str, str]) -> dict[str, Any]:
    query = f"label_values(gen_ai_client_operation_duration_seconds_count, {label})"
    return {
        "name": name,
        "type": "query",
        "datasource": datasource,
        "query": {"query": query, "refId": name},
        "definition": query,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "refresh": 2,
    }


def dashboard(*, otlp: bool) -> dict[str, Any]:
    """The dashboard JSON: `otlp` for the lgtm copy (Prometheus uid `prometheus` + Tempo), else a plain Prometheus
    picked with a datasource variable."""
    if otlp:
        datasource = {"type": "prometheus", "uid": "prometheus"}
        variables: list[dict[str, Any]] = []
    else:
        datasource = {"type": "prometheus", "uid": "${datasource}"}
        variables = [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]
    variables += [
        _variable("model", "gen_ai_request_model", datasource),
        _variable("endpoint", "pier_endpoint", datasource),
    ]
    panels = [_panel(i, p, datasource) for i, p in enumerate(p for p in PANELS if otlp or not p.otlp_only)]
    if otlp:
        y = ((len(panels) + 1) // 2) * 8
        panels += [_trace_table(i, title, query, y + 10 * i) for i, (title, query) in enumerate(TRACE_TABLES)]
    return {
        "uid": "pier-overview" if otlp else "pier-overview-prometheus",
        "title": "Pier" if otlp else "Pier (Prometheus)",
        "tags": ["pier", "genai"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables},
        "panels": panels,
    }


def render(*, otlp: bool) -> str:
    return json.dumps(dashboard(otlp=otlp), indent=2) + "\n"


def main() -> None:
    LGTM_FILE.parent.mkdir(parents=True, exist_ok=True)
    PROMETHEUS_FILE.parent.mkdir(parents=True, exist_ok=True)
    LGTM_FILE.write_text(render(otlp=True), encoding="utf-8")
    PROMETHEUS_FILE.write_text(render(otlp=False), encoding="utf-8")


if __name__ == "__main__":
    main()
