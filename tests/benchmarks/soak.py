"""`python -m tests.benchmarks.soak [--minutes 10]`: a long mixed load with faults, watching for leaks.

Starts a real redis-server, two DMR emulators, the health worker, the warm-up worker and the router as
processes; runs looping clients (OpenAI and Anthropic, streamed and not, and clients that hang up mid-stream);
every `fault_interval_s` injects a fault (an emulator killed and restarted, Redis restarted with its state lost,
the health or warm-up worker killed and restarted); every `sample_s` samples each process's RSS and open fds,
Redis used_memory and the event stream's length. Writes `tests/benchmarks/results/soak.md` and prints it.
Exit status 0 when every bound below held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis as sync_redis

from shared import keys
from tests.benchmarks.procstat import rss_kib, tree
from tests.benchmarks.soak_load import Call, run_load
from tests.benchmarks.soak_report import Bounds, FaultWindow, Run, Sample, Verdict, evaluate, markdown
from tests.harness import Proc, ProcessFactory, RedisServer, start_redis
from tests.router.support import (
    EmuSpec,
    base_env,
    build_stack,
    wait_routable_sync,
    warmup_env,
)

# The bounds (stated here, checked by soak_report.evaluate on what the run recorded).
BOUNDS = Bounds(
    warmup_s=60.0,  # baselines are taken a minute into the load
    restart_settle_s=15.0,  # or, for a process a fault restarted, 15 s into its new life
    rss_growth_mib={"router": 20.0, "health": 15.0, "warmup": 15.0},
    fd_growth=5,  # open fds at the end at most this many above the baseline
    redis_used_mib=64.0,
    stream_len=keys.EVENTS_MAXLEN + 1_000,  # XADD MAXLEN ~ trims whole radix-tree nodes, so a little above
    fault_grace_s=20.0,  # health checks every second; state republished after a Redis restart within seconds
    recovery_s=20.0,
    min_requests_per_s=2.0,
)
FAULT_HOLD_S = 5.0  # how long a killed process stays down
CLIENTS = 6
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Soak:
    """The running deployment and what the run recorded."""

    procs: ProcessFactory
    workdir: Path
    redis: RedisServer
    router: Proc
    health: Proc
    warmup: Proc
    emus: dict[str, Proc]
    emu_ports: dict[str, tuple[int, int]]  # name -> (port, admin port), kept across restarts
    samples: list[Sample] = field(default_factory=list)
    faults: list[FaultWindow] = field(default_factory=list)

    def roles(self) -> dict[str, int]:
        return {
            "router": self.router.pid,
            "health": self.health.pid,
            "warmup": self.warmup.pid,
            **{f"emulator {n}": p.pid for n, p in self.emus.items()},
            "redis": self.redis.popen.pid,
        }


def _fds(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return total


def _redis_figures(url: str) -> tuple[float | None, int | None]:
    client = sync_redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        used = int(client.info("memory")["used_memory"]) / 2**20
        length = int(client.xlen(keys.EVENTS))
    except (sync_redis.RedisError, OSError):
        return None, None
    finally:
        client.close()
    return used, length


def sample(soak: Soak) -> Sample:
    pids = soak.roles()
    trees = {role: tree([pid]) for role, pid in pids.items()}
    used, length = _redis_figures(soak.redis.url)
    return Sample(
        t_s=time.monotonic(),
        pids=pids,
        rss_mib={role: sum(rss_kib(p) for p in t) / 1024 for role, t in trees.items()},
        fds={role: _fds(t) for role, t in trees.items()},
        redis_used_mib=used,
        stream_len=length,
    )


def start(workdir: Path) -> Soak:
    procs = ProcessFactory(workdir, base_env())
    redis = start_redis(workdir=workdir)
    stack = build_stack(procs, workdir, redis.url, [EmuSpec("e1"), EmuSpec("e2")])
    assert stack.health is not None
    warmup = procs.python(
        "warmup",
        "services.warmup",
        env=warmup_env(
            redis.url,
            workdir,
            stack.config,
            instance="warmup-soak",
            PIER_WARMUP_MODELS="smollm2",
            PIER_WARMUP_BACKOFF_INITIAL_S="1",
        ),
    )
    emus = {name: emu.proc for name, emu in stack.emus.items()}
    ports = {name: (emu.proc.port or 0, int(emu.admin_url.rsplit(":", 1)[1])) for name, emu in stack.emus.items()}
    return Soak(procs, workdir, redis, stack.router, stack.health, warmup, emus, ports)


# Faults: each does its harm, waits FAULT_HOLD_S, undoes it (blocking: run in a thread).
def _kill_emulator(soak: Soak) -> None:
    soak.emus["e2"].kill()
    time.sleep(FAULT_HOLD_S)
    port, admin = soak.emu_ports["e2"]
    soak.emus["e2"] = soak.procs.emulator("--name", "e2", "--admin-port", str(admin), port=port)


def _restart_redis(soak: Soak) -> None:
    soak.redis.stop()
    time.sleep(FAULT_HOLD_S)
    soak.redis.restart()


def _kill_health(soak: Soak) -> None:
    env = soak.health.env
    soak.health.kill()
    time.sleep(FAULT_HOLD_S)
    soak.health = soak.procs.python("health", "services.health", env=env)


def _kill_warmup(soak: Soak) -> None:
    env = soak.warmup.env
    soak.warmup.kill()
    time.sleep(FAULT_HOLD_S)
    soak.warmup = soak.procs.python("warmup", "services.warmup", env=env)


FAULTS: tuple[tuple[str, Callable[[Soak], None]], ...] = (
    ("emulator e2 killed (SIGKILL), restarted", _kill_emulator),
    ("redis-server stopped, restarted empty", _restart_redis),
    ("health worker killed (SIGKILL), restarted", _kill_health),
    ("warm-up worker killed (SIGKILL), restarted", _kill_warmup),
)


async def _sampler(soak: Soak, every_s: float, until_s: float) -> None:
    while time.monotonic() < until_s:
        soak.samples.append(await asyncio.to_thread(sample, soak))
        await asyncio.sleep(every_s)
    soak.samples.append(await asyncio.to_thread(sample, soak))


async def _injector(soak: Soak, plan: Plan, until_s: float) -> None:
    index = 0
    at = time.monotonic() + plan.fault_first_s
    every_s = plan.fault_interval_s
    # The load must go on a while after the last fault: to show the recovery, and a restarted process settled.
    while at + FAULT_HOLD_S + plan.tail_s < until_s:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        name, fault = FAULTS[index % len(FAULTS)]
        began = time.monotonic()
        await asyncio.to_thread(fault, soak)
        soak.faults.append(FaultWindow(name, began, time.monotonic()))
        index += 1
        at += every_s


@dataclass(frozen=True, slots=True)
class Plan:
    seconds: float
    sample_s: float
    fault_first_s: float
    fault_interval_s: float
    tail_s: float  # no fault starts unless the load goes on at least this long after it is undone
    clients: int = CLIENTS


def plan_for(minutes: float) -> Plan:
    seconds = minutes * 60
    if seconds >= 300:
        return Plan(seconds, sample_s=5.0, fault_first_s=BOUNDS.warmup_s, fault_interval_s=45.0, tail_s=40.0)
    # A short run (the test): faults and samples packed in.
    return Plan(seconds, sample_s=1.0, fault_first_s=seconds * 0.2, fault_interval_s=seconds * 0.25, tail_s=5.0)


async def soak_run(soak: Soak, plan: Plan) -> Run:
    calls: list[Call] = []
    start_s = time.monotonic()
    until = start_s + plan.seconds
    await asyncio.gather(
        run_load(soak.router.url, plan.clients, until, calls),
        _sampler(soak, plan.sample_s, until),
        _injector(soak, plan, until),
    )
    procs: dict[str, Proc] = {"router": soak.router, "health": soak.health, "warmup": soak.warmup}
    return Run(
        load_start_s=start_s,
        load_end_s=time.monotonic(),
        calls=calls,
        samples=soak.samples,
        faults=soak.faults,
        alive_at_end={**{k: p.alive() for k, p in procs.items()}, "redis": soak.redis.popen.poll() is None},
        tracebacks={k: p.output().count("Traceback") for k, p in procs.items()},
    )


def run(minutes: float, out: Path, bounds: Bounds = BOUNDS) -> tuple[Run, list[Verdict], str]:
    """Start everything, soak for `minutes`, stop everything; write out/soak.md and return the page."""
    workdir = Path(tempfile.mkdtemp(prefix="pier-soak-"))
    soak = start(workdir)
    try:
        wait_routable_sync(soak.router.url, ["e1", "e2"])
        plan = plan_for(minutes)
        if plan.seconds < 300:
            bounds = dataclasses.replace(bounds, warmup_s=plan.seconds * 0.2, restart_settle_s=plan.seconds * 0.2)
        result = asyncio.run(soak_run(soak, plan))
    finally:
        soak.procs.close()
        soak.redis.stop()
    verdicts = evaluate(result, bounds)
    page = markdown(result, bounds, verdicts, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.md").write_text(page, encoding="utf-8")
    return result, verdicts, page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of load (default %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    _, verdicts, page = run(args.minutes, args.out)
    print(page)
    for v in verdicts:
        print(f"{'PASS' if v.passed else 'FAIL'}  {v.bound}: {v.measured}")
    return 0 if all(v.passed for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
