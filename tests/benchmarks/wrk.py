"""Run `wrk` with a POST body and read its figures back as numbers (a Lua `done()` prints one JSON line)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.harness import system_binary

MARK = "PIER_BENCH_JSON "

LUA = r"""
wrk.method = "%(method)s"
wrk.body = [==[%(body)s]==]
wrk.headers["Content-Type"] = "application/json"
%(headers)s
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests":%%d,"duration_us":%%d,"bytes":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    errors: int  # socket errors and timeouts
    non_2xx: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_script(path: Path, body: bytes, headers: dict[str, str] | None = None, *, method: str = "POST") -> Path:
    text = body.decode()
    if "]==]" in text:
        raise ValueError("the request body cannot contain ]==]")
    header_lines = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in (headers or {}).items())
    path.write_text(LUA % {"method": method, "body": text, "headers": header_lines, "mark": MARK})
    return path


def run(
    url: str,
    script: Path,
    *,
    connections: int,
    duration_s: float,
    threads: int = 1,
    cpus: str | None = None,
    timeout_s: float = 10.0,
) -> WrkResult:
    """One bounded wrk run; raises RuntimeError with wrk's output when it fails or prints no figures."""
    argv = [
        system_binary("wrk", "wrk"),
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        str(script),
        url,
    ]
    if cpus is not None:
        argv = [system_binary("taskset", "util-linux"), "-c", cpus, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + timeout_s + 30, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            raw = json.loads(line[len(MARK) :])
            duration = raw["duration_us"] / 1e6
            return WrkResult(
                requests=raw["requests"],
                duration_s=duration,
                rps=raw["requests"] / duration if duration else 0.0,
                p50_us=float(raw["p50_us"]),
                p90_us=float(raw["p90_us"]),
                p99_us=float(raw["p99_us"]),
                max_us=float(raw["max_us"]),
                errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
                non_2xx=raw["status"],
            )
    raise RuntimeError(f"wrk printed no figures (exit {proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
