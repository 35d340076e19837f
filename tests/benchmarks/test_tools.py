"""The benchmark suite's own instruments, checked against real processes (they must measure what they claim)."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from tests.benchmarks import instructions, report, telemetry_floor, wrk
from tests.benchmarks.layout import DMR_CHAT_PATH, JSON_BODY, python_module
from tests.benchmarks.profile import hot_spots
from tests.benchmarks.stream_client import analyse, run_streams
from tests.harness import ProcessFactory, free_port, http_ok, port_open, require_binary


def _paced(procs: ProcessFactory, *args: str) -> str:
    port = free_port()
    proc = procs.start(
        "paced",
        python_module("tests.benchmarks.paced_upstream", "--port", str(port), "--model", "bench-sse", *args),
        port=port,
        ready=lambda p: http_ok(f"{p.url}/engines/v1/models"),
    )
    return proc.url


def _sse(events: int) -> bytes:
    return b"".join(b"data: %d\n\n" % i for i in range(events))


def _chunked_response(*reads: bytes) -> list[tuple[float, bytes]]:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
    out = [(0.0, head)]
    for index, body in enumerate(reads, start=1):
        out.append((index * 0.02, b"%x\r\n%s\r\n" % (len(body), body)))
    out.append((len(reads) * 0.02 + 0.001, b"0\r\n\r\n"))
    return out


def test_analyse_maps_each_event_to_the_read_that_completed_it() -> None:
    separate = analyse(0.0, _chunked_response(_sse(1), b"data: 1\n\n", b"data: 2\n\n"))
    assert (separate.events, separate.max_events_per_read, separate.coalesced) == (3, 1, 0)
    assert separate.own_reads
    assert abs(separate.first_event_s - 0.02) < 1e-9
    assert abs(separate.last_event_s - 0.06) < 1e-9

    buffered = analyse(0.0, _chunked_response(b"data: 0\n\ndata: 1\n\ndata: 2\n\n"))
    assert (buffered.events, buffered.max_events_per_read, buffered.coalesced) == (3, 3, 3)
    assert not buffered.own_reads

    # An event split over two reads completes in the second one.
    split = analyse(0.0, _chunked_response(b"data: 0\n", b"\ndata: 1\n\n"))
    assert (split.events, split.max_events_per_read) == (2, 2)
    assert abs(split.first_event_s - 0.04) < 1e-9


async def test_paced_upstream_streams_events_over_time_and_the_client_sees_them(procs: ProcessFactory) -> None:
    url = _paced(procs, "--events", "5", "--interval-ms", "100")
    samples = await run_streams(url + DMR_CHAT_PATH, b'{"model":"bench-sse","stream":true}', count=1)
    sample = samples[0]
    assert sample.status == 200
    assert sample.events == 5
    # Five events 100 ms apart: the last comes >= 4 intervals after the first however busy the machine is.
    assert sample.last_event_s - sample.first_event_s >= 0.35  # (timers may fire a clock tick early)


def test_wrk_reports_requests_and_status_errors(procs: ProcessFactory, tmp_path: Path) -> None:
    require_binary("wrk", "wrk")
    url = _paced(procs)
    script = wrk.write_script(tmp_path / "post.lua", JSON_BODY)
    ok = wrk.run(url + DMR_CHAT_PATH, script, connections=2, duration_s=1)
    assert ok.requests > 0
    assert (ok.non_2xx, ok.errors) == (0, 0)
    assert ok.p50_us > 0
    get = wrk.write_script(tmp_path / "get.lua", b"", method="GET")
    missing = wrk.run(url + "/nowhere", get, connections=1, duration_s=1)
    assert missing.requests > 0
    assert missing.non_2xx == missing.requests  # every answer was a 404


@pytest.mark.parametrize("stream_all", [False, True], ids=["minimal", "minimal-streaming"])
async def test_minimal_proxy_relays_body_and_streams(procs: ProcessFactory, stream_all: bool) -> None:
    upstream = _paced(procs, "--events", "3", "--interval-ms", "1")
    port = free_port()
    extra = ["--stream-all"] if stream_all else []
    procs.start(
        "minimal",
        python_module("tests.benchmarks.minimal_proxy", "--port", str(port), "--upstream", upstream, *extra),
        port=port,
        ready=lambda p: port_open(port),
    )
    url = f"http://127.0.0.1:{port}{DMR_CHAT_PATH}"
    async with aiohttp.ClientSession() as session, session.post(url, data=JSON_BODY) as resp:
        assert resp.status == 200
        assert json.loads(await resp.read())["object"] == "chat.completion"
    streamed = await run_streams(url, b'{"model":"bench-sse","stream":true}', count=1)
    assert (streamed[0].status, streamed[0].events) == (200, 3)


def test_report_checks_the_targets_as_ratios() -> None:
    def round_of(target: str, rep: int, cpu: float, rps: float, c1: float, first_event_ms: float) -> dict[str, object]:
        return {
            "rep": rep,
            "target": target,
            "rps": rps,
            "cpu_us_per_req": cpu,
            "c1_p50_us": c1,
            "stream_first_event_ms": first_event_ms,
            "stream_spread_ms": 380.0,
            "stream_coalesced_pct": 0.0,
            "foreign_cpu_share": 0.0,
        }

    results = {
        "targets": {"direct": {}, "minimal": {}, "litellm": {}, "pier": {}, "pier-otel": {}},
        "rounds": [
            round_of("direct", 0, 0, 50_000, 20, 0.3),
            round_of("minimal", 0, 300, 3000, 220, 0.5),
            round_of("litellm", 0, 19_000, 50, 20_020, 20.3),
            round_of("pier", 0, 290, 2500, 250, 0.52),
            round_of("pier-otel", 0, 400, 2000, 260, 0.53),  # 290 / 400 = 0.725x per core
        ],
    }
    summary = report.summarise(results)
    assert summary["pier"]["added_c1_p50_us"] == 230
    checks = {c.what: c for c in report.checks(summary)}
    assert checks["Pier CPU/request vs minimal proxy"].passed is True
    assert checks["Pier throughput vs LiteLLM"].passed is True  # 50x
    assert checks["Pier added p50 (c=1) vs minimal proxy"].passed is True  # 230 / 200 = 1.15
    assert checks["Pier added TTFB (stream) vs minimal proxy"].passed is True  # 0.22 / 0.2 = 1.1
    assert checks["Pier telemetry on (100 %) vs off, req/s per core"].passed is True
    assert checks["Pier telemetry on (100 %) vs off, req/s per core"].measured == pytest.approx(0.725)
    assert checks["Pier telemetry 10 % sampled vs off, req/s per core"].passed is None  # not measured


def test_hot_spots_counts_self_and_inclusive_samples(tmp_path: Path) -> None:
    folded = tmp_path / "x.folded"
    folded.write_text("main;handle;parse 3\nmain;handle 1\nmain;idle 4\n")
    text = hot_spots(folded, 10, cpu_us_per_req=80.0)
    assert "8 on-CPU samples" in text
    assert " 50.0    40.0  idle" in text  # self: 4 of 8 samples = half of 80 µs
    assert " 50.0    40.0  handle" in text  # inclusive: 3 + 1


def test_instruction_counts_are_read_per_thread_from_callgrind_dumps(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind-pier.out.1"
    for thread, total in ((1, 900_000_000), (2, 100_000_000), (3, 2_000_000)):
        (tmp_path / f"callgrind-pier.out.1-0{thread}").write_text(
            f"# callgrind format\nversion: 1\ncreator: callgrind-3.19.0\npid: 42\ncmd: python\npart: 1\n"
            f"thread: {thread}\ndesc: Trigger: dump\nevents: Ir\nsummary: 0\ntotals: {total}\n"
        )
    (tmp_path / "callgrind-pier.out-01").write_text("thread: 1\ntotals: 5\n")  # the exit dump: not this one
    assert instructions.thread_totals(dump) == {1: 900_000_000, 2: 100_000_000, 3: 2_000_000}
    counts = [instructions.Count("pier", 400.0, 0.0), instructions.Count("pier-otel", 500.0, 300.0)]
    text = instructions.table(counts)
    assert "| pier | 400 | 0 | 400 | 1.00x |" in text
    assert "| pier-otel | 500 | 300 | 800 | 0.50x |" in text


def test_telemetry_floor_reads_the_recorded_totals_and_runs_every_step(tmp_path: Path) -> None:
    counts = [instructions.Count("pier", 441.0, 0.0), instructions.Count("pier-otel", 638.0, 219.0)]
    (tmp_path / "instructions.md").write_text("Instructions per request\n\n" + instructions.table(counts) + "\n")
    assert telemetry_floor.recorded_totals(tmp_path / "instructions.md") == {"pier": 441.0, "pier-otel": 857.0}
    # The work itself (the counts need valgrind: the script, not this test) reads the benchmark answer's usage.
    assert [telemetry_floor.run_step(step, 3) for step in telemetry_floor.STEPS] == [(0, 0), (0, 0), (9, 7), (9, 7)]
