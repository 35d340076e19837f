"""Medians over the repetitions, the markdown tables, and the ratios against the issue's targets."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from tests.benchmarks.layout import SSE_EVENTS, SSE_INTERVAL_MS

PIER = "pier"  # the setting the targets speak of (telemetry off)
PIER_OTEL = "pier-otel"
PIER_OTEL_SAMPLED = "pier-otel-10"
NA = "-"  # not applicable / not measured
# Figures where the worst repetition counts, not the median.
WORST_OF = frozenset({"stream_max_events_per_read", "stream_errors", "errors", "non_2xx", "c1_errors"})
# Relayed "as produced": events spread over at least this share of the upstream's pacing, and at most this
# share of events coalesced with another in one read (a stalled client on a busy machine causes a stray few;
# a buffering proxy, nearly all).
SPREAD_SHARE = 0.9
COALESCED_MAX_PCT = 2.0
NOISY_SHARE = 0.25  # busy CPU outside the benchmark above this (of one core) marks the run as noisy


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per target: the median of every numeric figure over the rounds, and paired 'added over direct' figures."""
    rounds: list[dict[str, Any]] = results["rounds"]
    direct = {r["rep"]: r for r in rounds if r["target"] == "direct"}
    summary: dict[str, dict[str, Any]] = {}
    for name in results["targets"]:
        mine = [r for r in rounds if r["target"] == name]
        if not mine:
            continue
        out: dict[str, Any] = {}
        for key in mine[0]:
            values = [r[key] for r in mine if key in r]
            if key in ("rep", "target"):
                continue
            if all(isinstance(v, bool) for v in values):
                out[key] = all(values)
            elif key in WORST_OF:
                out[key] = max(float(v) for v in values)
            elif all(isinstance(v, int | float) for v in values):
                out[key] = _median([float(v) for v in values])
        cpu = out.get("cpu_us_per_req")
        # What one fully used core would serve: throughput that other work on the machine cannot depress.
        out["rps_per_core"] = 1e6 / cpu if cpu else None
        # Paired with the same repetition's direct run, so drifts in machine load cancel out.
        added_p50 = [r["c1_p50_us"] - direct[r["rep"]]["c1_p50_us"] for r in mine if r["rep"] in direct]
        out["added_c1_p50_us"] = _median(added_p50)
        added_ttfb = [
            r["stream_first_event_ms"] - direct[r["rep"]]["stream_first_event_ms"]
            for r in mine
            if r["rep"] in direct and "stream_first_event_ms" in r and "stream_first_event_ms" in direct[r["rep"]]
        ]
        out["added_ttfb_ms"] = _median(added_ttfb)
        summary[name] = out
    return summary


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return NA
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


@dataclass(frozen=True, slots=True)
class Check:
    what: str
    measured: float | None
    goal: str
    passed: bool | None


def checks(summary: dict[str, dict[str, Any]]) -> list[Check]:
    """The issue's targets, each as a ratio of figures from this run."""
    pier, minimal, litellm = summary.get(PIER), summary.get("minimal"), summary.get("litellm")
    out: list[Check] = []

    def add(what: str, value: float | None, goal: str, ok: bool | None) -> None:
        out.append(Check(what, value, goal, ok if value is not None else None))

    def get(row: dict[str, Any] | None, key: str) -> float | None:
        return None if row is None else row.get(key)

    cpu = _ratio(get(pier, "cpu_us_per_req"), get(minimal, "cpu_us_per_req"))
    add("Pier CPU/request vs minimal proxy", cpu, "<= 1.0x", cpu is not None and cpu <= 1.0)
    rps = _ratio(get(pier, "rps"), get(litellm, "rps"))
    add("Pier throughput vs LiteLLM", rps, ">= 40x", rps is not None and rps >= 40)
    per_core = _ratio(get(pier, "rps_per_core"), get(litellm, "rps_per_core"))
    add("Pier throughput per core of CPU vs LiteLLM", per_core, ">= 40x", per_core is not None and per_core >= 40)
    p50 = _ratio(get(pier, "added_c1_p50_us"), get(minimal, "added_c1_p50_us"))
    add("Pier added p50 (c=1) vs minimal proxy", p50, "<= 1.2x", p50 is not None and p50 <= 1.2)
    ttfb = _ratio(get(pier, "added_ttfb_ms"), get(minimal, "added_ttfb_ms"))
    add("Pier added TTFB (stream) vs minimal proxy", ttfb, "<= 1.2x", ttfb is not None and ttfb <= 1.2)
    coalesced, spread = get(pier, "stream_coalesced_pct"), get(pier, "stream_spread_ms")
    as_produced = (
        coalesced is not None
        and spread is not None
        and coalesced <= COALESCED_MAX_PCT
        and spread >= SPREAD_SHARE * (SSE_EVENTS - 1) * SSE_INTERVAL_MS
    )
    add("Pier: SSE events relayed as produced (% coalesced)", coalesced, f"<= {COALESCED_MAX_PCT:g} %", as_produced)
    # Telemetry's cost, as throughput per core (1e6 / CPU µs per request): what the shared machine cannot skew.
    otel = _ratio(get(summary.get(PIER_OTEL), "rps_per_core"), get(pier, "rps_per_core"))
    add("Pier telemetry on (100 %) vs off, req/s per core", otel, ">= 0.7x", otel is not None and otel >= 0.7)
    sampled = _ratio(get(summary.get(PIER_OTEL_SAMPLED), "rps_per_core"), get(pier, "rps_per_core"))
    add(
        "Pier telemetry 10 % sampled vs off, req/s per core", sampled, ">= 0.9x", sampled is not None and sampled >= 0.9
    )
    return out


def markdown(results: dict[str, Any]) -> str:
    summary = summarise(results)
    meta = results["meta"]
    lines = [
        f"Run {meta['stamp']} at commit `{meta['commit']}`, Python {meta['python']}, {meta['cpus']} cores; "
        f"{meta['reps']} repetitions x {meta['duration_s']:g} s per load run (medians); wrk with "
        f"{meta['connections']} connections for throughput, 1 for latency; {meta['streams_per_rep']} streams "
        f"per repetition. Pinning: load generator + upstreams on core {meta['pinning']['loadgen']}, "
        f"proxy on core {meta['pinning']['proxy']}. Load average {meta['loadavg_start']} -> "
        f"{meta.get('loadavg_end', '?')}.",
        *_noise_note(summary),
        "",
        "### Non-streaming chat completion",
        "",
        "| contender | req/s | req/s per core | p50 ms | p99 ms | p50 c=1 µs | added p50 c=1 µs | proxy CPU µs/req "
        "| upstream µs/req | RSS MiB | other load | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in summary.items():
        errors = (row.get("errors") or 0) + (row.get("non_2xx") or 0) + (row.get("c1_errors") or 0)
        proxy = name != "direct"
        cells = [
            _fmt(row.get("rps")),
            _fmt(row.get("rps_per_core")) if proxy else NA,
            _fmt(_ms(row.get("p50_us")), 2),
            _fmt(_ms(row.get("p99_us")), 2),
            _fmt(row.get("c1_p50_us")),
            _fmt(row.get("added_c1_p50_us")) if proxy else NA,
            _fmt(row.get("cpu_us_per_req")) if proxy else NA,
            _fmt(row.get("upstream_cpu_us_per_req"), 1),
            _fmt(row.get("rss_mib"), 1) if proxy else NA,
            f"{_fmt(100 * (row.get('foreign_cpu_share') or 0))} %",
            _fmt(errors),
        ]
        flag = " (**errors: figures invalid**)" if errors else ""
        lines.append(f"| {name}{flag} | " + " | ".join(cells) + " |")
    up = results.get("upstream", {})
    lines += [
        "",
        f"Upstream alone: nginx answers the fixed JSON at the `direct` row's rate and its fixed 20-event SSE body at "
        f"{_fmt(up.get('nginx_sse_body_rps'))} req/s, using the upstream µs/req shown (it is never the limit).",
        "",
        f"### Streaming ({SSE_EVENTS} SSE events, {SSE_INTERVAL_MS:g} ms apart, concurrency 1)",
        "",
        "| contender | first event ms | added ms | total ms | first to last event ms | events "
        "| coalesced events | max events/read |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in summary.items():
        lines.append(
            f"| {name} | {_fmt(row.get('stream_first_event_ms'), 2)} "
            f"| {_fmt(row.get('added_ttfb_ms'), 2) if name != 'direct' else NA} "
            f"| {_fmt(row.get('stream_total_ms'), 1)} | {_fmt(row.get('stream_spread_ms'), 1)} "
            f"| {_fmt(row.get('stream_events_min'))} | {_fmt(row.get('stream_coalesced_pct'), 1)} % "
            f"| {_fmt(row.get('stream_max_events_per_read'))} |"
        )
    lines += ["", "### Ratios", "", _ratio_table(summary), "", "### Targets (issue 6)", ""]
    lines += ["| target | measured | goal | met |", "|---|---:|---|---|"]
    for check in checks(summary):
        met = NA if check.passed is None else ("yes" if check.passed else "**no**")
        lines.append(f"| {check.what} | {_fmt(check.measured, 2)} | {check.goal} | {met} |")
    if PIER_OTEL in summary:
        otlp = results.get("otlp") or {}
        got = otlp.get("traces_requests", 0) + otlp.get("metrics_requests", 0)
        size = otlp.get("traces_bytes", 0) + otlp.get("metrics_bytes", 0)
        note = f"{got} exports ({size:,} bytes)" if got else "**nothing** (telemetry did not flow: check the env names)"
        lines.append(f"\nThe local OTLP receiver got {note} during the run.")
    for name, why in results.get("unavailable", {}).items():
        lines.append(f"\n`{name}` not measured: {why}")
    return "\n".join(lines) + "\n"


def _noise_note(summary: dict[str, dict[str, Any]]) -> list[str]:
    """A warning when other work used the CPUs during the run (the 'other load' column)."""
    shares = [row.get("foreign_cpu_share") or 0.0 for row in summary.values()]
    worst = max(shares, default=0.0)
    if worst < NOISY_SHARE:
        return []
    return [
        "",
        f"**Noisy run:** other work on the machine used up to {100 * worst:.0f} % of a core during the load runs "
        "(column 'other load'); absolute figures are depressed and ratios less certain. Rerun on a quiet machine.",
    ]


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1000


def _ratio_table(summary: dict[str, dict[str, Any]]) -> str:
    minimal, litellm = summary.get("minimal", {}), summary.get("litellm", {})
    lines = [
        "| contender | CPU/req vs minimal | req/s vs minimal | req/s vs LiteLLM | req/s per core vs LiteLLM "
        "| added p50 vs minimal | added TTFB vs minimal |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in summary.items():
        if name == "direct":
            continue
        cells = [
            _ratio(row.get("cpu_us_per_req"), minimal.get("cpu_us_per_req")),
            _ratio(row.get("rps"), minimal.get("rps")),
            _ratio(row.get("rps"), litellm.get("rps")),
            _ratio(row.get("rps_per_core"), litellm.get("rps_per_core")),
            _ratio(row.get("added_c1_p50_us"), minimal.get("added_c1_p50_us")),
            _ratio(row.get("added_ttfb_ms"), minimal.get("added_ttfb_ms")),
        ]
        lines.append(f"| {name} | " + " | ".join(f"{_fmt(c, 2)}x" if c is not None else NA for c in cells) + " |")
    return "\n".join(lines)
