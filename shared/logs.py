"""Logging set-up shared by the services: one line per record, text or JSON (`PIER_LOG_FORMAT`).

JSON lines carry `trace_id` and `span_id` when a span is active, so logs and traces join in Grafana."""

from __future__ import annotations

import json
import logging
import sys

from opentelemetry import trace

from shared.tracecontext import ACTIVE


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # Loki and Tempo join on these: the active span's ids, when a sampled span is active.
        lean = ACTIVE.get()  # the router's request span (Pier's own record, `shared.leanspan`)
        if lean is not None:
            payload["trace_id"] = f"{lean.trace_id:032x}"
            payload["span_id"] = f"{lean.span_id:016x}"
        else:
            context = trace.get_current_span().get_span_context()
            if context.is_valid:
                payload["trace_id"] = f"{context.trace_id:032x}"
                payload["span_id"] = f"{context.span_id:016x}"
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def setup_logging(service: str, level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
