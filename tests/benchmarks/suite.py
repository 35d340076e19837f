"""The side-by-side run: start the upstreams and every contender, then measure them in interleaved rounds.

All contenders stay up for the whole run and each repetition visits every one in turn, so slow drifts in
the machine's load (other work on shared cores) spread over all of them instead of biasing one.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.benchmarks import contenders, litellm_env, measure, pier, wrk
from tests.benchmarks.layout import JSON_BODY, Cores, Target, base_env
from tests.benchmarks.nginx import SSE_PATH
from tests.harness import ROOT, ProcessFactory

ALL = ("direct", "nginx", "minimal", "minimal-streaming", "litellm", *(s.name for s in pier.PIER_SETTINGS))


@dataclass(frozen=True, slots=True)
class Options:
    reps: int
    duration_s: float
    connections: int
    streams: int
    out: Path
    pin: bool
    only: tuple[str, ...]
    litellm_venv: Path
    install_litellm: bool
    quick: bool


def run(opts: Options) -> dict[str, Any]:
    """Run the suite; returns the raw results (also written by the caller)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = opts.out / f"work-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    cores = Cores.detect(opts.pin)
    if cores.loadgen is not None:
        # The stream client runs in this process: keep it with the load generator, off the proxy's core.
        os.sched_setaffinity(0, {int(cores.loadgen)})
    plan = measure.Plan(opts.duration_s, opts.connections, opts.streams, cores)
    results: dict[str, Any] = {
        "meta": _meta(opts, cores, stamp),
        "targets": {},
        "unavailable": {},
        "rounds": [],
    }
    procs = ProcessFactory(workdir, base_env())
    with contextlib.ExitStack() as stack:
        stack.callback(procs.close)
        up = contenders.start_upstreams(procs, workdir, cores)
        targets = _start_all(stack, procs, workdir, up, cores, opts, results)
        scripts = {t.name: wrk.write_script(workdir / f"post-{t.name}.lua", JSON_BODY, t.headers) for t in targets}
        for target in targets:
            results["targets"][target.name] = {
                "description": target.description,
                "json_url": target.json_url,
                "sse_url": target.sse_url,
            }
            print(f"warming up {target.name}", flush=True)
            measure.warm_up(target, scripts[target.name], plan)
        results["upstream"] = _upstream_figures(up, workdir, plan)
        for rep in range(opts.reps):
            for target in targets:
                print(f"round {rep + 1}/{opts.reps}: {target.name}", flush=True)
                figures = measure.round_of(target, up.roots, scripts[target.name], plan)
                results["rounds"].append({"rep": rep, "target": target.name, **figures})
        if results.get("otlp_url"):
            # Proof that telemetry really flowed during the telemetry-on runs (or that it did not).
            results["otlp"] = _otlp_stats(results["otlp_url"])
    results["meta"]["loadavg_end"] = _loadavg()
    return results


def _wanted(name: str, opts: Options) -> bool:
    return not opts.only or name in opts.only or name == "direct"


def _start_all(
    stack: contextlib.ExitStack,
    procs: ProcessFactory,
    workdir: Path,
    up: contenders.Upstreams,
    cores: Cores,
    opts: Options,
    results: dict[str, Any],
) -> list[Target]:
    unavailable: dict[str, str] = results["unavailable"]
    targets = [contenders.direct(up)]
    if _wanted("nginx", opts):
        targets.append(contenders.nginx_proxy(procs, workdir, up, cores))
    if _wanted("minimal", opts):
        targets.append(contenders.minimal_proxy(procs, up, cores))
    if _wanted("minimal-streaming", opts):
        targets.append(contenders.minimal_proxy(procs, up, cores, stream_all=True))
    if _wanted("litellm", opts):
        try:
            binary = litellm_env.ensure_venv(
                opts.litellm_venv, install=opts.install_litellm, log=workdir / "litellm-install.log"
            )
            targets.append(contenders.litellm_proxy(procs, workdir, up, cores, binary))
        except (RuntimeError, OSError, AssertionError) as exc:
            unavailable["litellm"] = str(exc).splitlines()[0][:300]
    settings = [s for s in pier.PIER_SETTINGS if _wanted(s.name, opts)]
    reason = pier.available()
    if settings and reason is not None:
        for setting in settings:
            unavailable[setting.name] = reason
    elif settings:
        try:
            pier_stack = stack.enter_context(
                pier.stack(procs, workdir / "pier", cores, pier.bench_endpoints(up), otlp=pier.settings_needing_otlp())
            )
            results["otlp_url"] = pier_stack.otlp_url
            for setting in settings:
                targets.append(pier_stack.router(setting))
        except AssertionError as exc:  # harness.Timeout: a process did not come up; its output is in the message
            for setting in settings:
                unavailable.setdefault(setting.name, _gist(str(exc)))
            print(f"Pier did not start: {str(exc)[:3000]}", flush=True)
    for name, why in unavailable.items():
        print(f"skipping {name}: {why}", flush=True)
    return targets


def _gist(message: str) -> str:
    """The first line of a failure and its last non-empty one (usually the exception that caused it)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return "unknown failure"
    return lines[0][:200] + ("" if len(lines) == 1 else f" ... {lines[-1][:200]}")


def _upstream_figures(up: contenders.Upstreams, workdir: Path, plan: measure.Plan) -> dict[str, Any]:
    """The upstream alone serving its fixed SSE body (20 events): far above any proxy, so never the limit."""
    script = wrk.write_script(workdir / "post-sse.lua", JSON_BODY)
    result = wrk.run(
        up.json_base + SSE_PATH,
        script,
        connections=plan.connections,
        duration_s=plan.duration_s,
        cpus=plan.cores.loadgen,
    )
    return {"nginx_sse_body_rps": result.rps, "nginx_sse_body_errors": result.errors + result.non_2xx}


def _otlp_stats(url: str) -> dict[str, int]:
    try:
        with urllib.request.urlopen(f"{url}/stats", timeout=5) as resp:
            data = json.loads(resp.read())
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in data.items()}


def _loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def _meta(opts: Options, cores: Cores, stamp: str) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "stamp": stamp,
        "commit": commit,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "pinning": {"loadgen": cores.loadgen, "proxy": cores.proxy, "aux": cores.aux},
        "reps": opts.reps,
        "duration_s": opts.duration_s,
        "connections": opts.connections,
        "streams_per_rep": opts.streams,
        "quick": opts.quick,
        "loadavg_start": _loadavg(),
    }
