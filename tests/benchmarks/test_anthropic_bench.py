"""The Anthropic benchmark's own pieces: the body it posts is a valid Messages body, and its report."""

from __future__ import annotations

import json
from typing import Any

from services.router.anthropic_check import check_messages
from tests.benchmarks import anthropic


def test_body_is_a_valid_messages_body() -> None:
    for model in anthropic.MODELS.values():
        data = json.loads(anthropic.body(model))
        check_messages(data)
        assert data["model"] == model


def row(cpu: float, share: float = 0.01) -> dict[str, float]:
    return {"rps": 1000.0, "cpu_us_per_req": cpu, "p50_us": 2500.0, "foreign_cpu_share": share, "errors": 0}


def test_report_gives_the_added_cost_and_flags_noise() -> None:
    quiet: dict[str, Any] = {"stamp": "s", "modes": {"passthrough": row(200.0), "translation": row(260.0)}}
    quiet |= {"added_cpu_us_per_req": 60.0, "ratio": 1.3}
    text = anthropic.markdown(quiet)
    assert "| passthrough | 1,000 | 200 | 2.50 ms | 1 % | 0 |" in text
    assert "Translation costs 60 µs of router CPU per request more than passthrough (1.30x)." in text
    assert "Noisy" not in text
    noisy = quiet | {"modes": {"passthrough": row(200.0, 0.9), "translation": row(260.0)}}
    assert "**Noisy run:** other work used up to 90 %" in anthropic.markdown(noisy)
