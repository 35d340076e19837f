"""The Anthropic benchmark's own pieces: the bodies it posts are valid Messages bodies, and its report."""

from __future__ import annotations

import json
from typing import Any

from services.router.anthropic_check import check_messages
from tests.benchmarks import anthropic


def test_bodies_are_valid_messages_bodies() -> None:
    for model in (*anthropic.MODELS.values(), *anthropic.SSE_MODELS.values()):
        for stream in (False, True):
            data = json.loads(anthropic.body(model, stream=stream))
            check_messages(data)
            assert data["model"] == model
            assert data.get("stream", False) is stream


def row(cpu: float, share: float = 0.01) -> dict[str, Any]:
    return {
        "rps": 1000.0,
        "cpu_us_per_req": cpu,
        "p50_us": 2500.0,
        "foreign_cpu_share": share,
        "errors": 0,
        "sse_cpu_us_per_stream": 10 * cpu,
        "sse_events_min": 20,
        "sse_coalesced_pct": 0.0,
        "sse_errors": 0,
    }


def test_report_gives_the_added_cost_and_flags_noise() -> None:
    quiet: dict[str, Any] = {"stamp": "s", "modes": {"passthrough": row(200.0), "translation": row(260.0)}}
    quiet |= {"added_cpu_us": 60.0, "ratio": 1.3, "sse_added_cpu_us": 600.0, "sse_ratio": 1.3}
    text = anthropic.markdown(quiet)
    assert "| passthrough | 1,000 | 200 | 2.50 ms | 2,000 | 20 | 0.0 % | 1 % | 0 |" in text
    assert "Translation costs 60 µs of router CPU per request more than passthrough (1.30x)." in text
    assert "A translated stream costs 600 µs of router CPU more than a passthrough one (1.30x)." in text
    assert "Noisy" not in text
    noisy = quiet | {"modes": {"passthrough": row(200.0, 0.9), "translation": row(260.0)}}
    assert "**Noisy run:** other work used up to 90 %" in anthropic.markdown(noisy)
