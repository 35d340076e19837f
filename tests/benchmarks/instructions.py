"""`python -m tests.benchmarks.instructions`: instructions per request of Pier's router, per setting, under callgrind.

Why: CPU time per request moves with whatever else the machine does (on a shared 2-core machine by ±20 % from
run to run), which hides a change of a few percent. Instructions executed do not move with it: valgrind's
callgrind counts them, the same count for the same code and inputs whether the other core is idle or busy.
So this script answers "what does telemetry (or a change) cost per request" on a busy machine, where the
main suite (`python -m tests.benchmarks`) needs a quiet one for its times.

How: the suite's upstreams, Redis, health worker and OTLP receiver (`tests.benchmarks.pier.stack`); each
router setting (`pier.PIER_SETTINGS`) runs under `valgrind --tool=callgrind --instr-atstart=no
--separate-threads=yes`, is warmed up with 200 requests, then instrumentation is switched on
(`callgrind_control -i on`) for `--requests` non-streamed chat completions sent over 4 keep-alive
connections, and the counts are dumped per thread. Printed: thousand instructions per request for the
event-loop thread, for the other threads (span and metric export), and in all, with each setting's ratio to
`pier` (telemetry off). Instructions are not time: a cache miss costs more than an add, and a thread that
waits costs nothing here, so the main suite's times stay the reference; the ratios agree with its quiet runs
within a few percent. valgrind is not a project dependency (`apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tests.benchmarks import contenders, pier
from tests.benchmarks.layout import JSON_BODY, JSON_MODEL, OPENAI_CHAT_PATH, Cores, base_env
from tests.harness import ProcessFactory, free_port, system_binary

DEFAULT_SETTINGS = "pier,pier-otel-0,pier-otel-10,pier-otel-10-traces,pier-otel"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
CONNECTIONS = 4
WARMUP_REQUESTS = 200


@dataclass(frozen=True, slots=True)
class Count:
    setting: str
    main: float  # thousand instructions per request, event-loop thread
    others: float  # the other threads (export)

    @property
    def total(self) -> float:
        return self.main + self.others


def thread_totals(dump: Path) -> dict[int, int]:
    """Instructions per thread from callgrind's per-thread dump files (`<dump>-01`, `-02`, ...): thread -> Ir."""
    totals: dict[int, int] = {}
    for path in sorted(dump.parent.glob(dump.name + "-*")):
        thread = 0
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("thread:"):
                thread = int(line.split()[1])
            elif line.startswith("totals:"):
                totals[thread] = totals.get(thread, 0) + int(line.split()[1])
                break
    return totals


def _requests(port: int, count: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        for _ in range(count):
            connection.request("POST", OPENAI_CHAT_PATH, body=JSON_BODY, headers={"Content-Type": "application/json"})
            answer = connection.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"router answered {answer.status}")
    finally:
        connection.close()


def _load(port: int, total: int) -> None:
    errors: list[BaseException] = []

    def worker(count: int) -> None:
        try:
            _requests(port, count)
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(total // CONNECTIONS,)) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _ready(port: int, deadline_s: float) -> None:
    body = f'{{"model":"{JSON_MODEL}","messages":[{{"role":"user","content":"hi"}}]}}'.encode()
    deadline = time.monotonic() + deadline_s
    while not contenders.post_ok(f"http://127.0.0.1:{port}{OPENAI_CHAT_PATH}", body):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the router under valgrind did not answer within {deadline_s:.0f} s")
        time.sleep(0.5)


def measure(stack: pier.PierStack, setting: pier.PierSetting, workdir: Path, requests: int) -> Count:
    valgrind, control = system_binary("valgrind", "valgrind"), system_binary("callgrind_control", "valgrind")
    port = free_port()
    env = {**os.environ, **base_env(), **stack.base_env(), "PIER_PORT": str(port)}
    env.update({k: v.format(otlp_url=stack.otlp_url or "") for k, v in setting.env.items()})
    dump = workdir / f"callgrind-{setting.name}.out"
    argv = [valgrind, "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes"]
    argv += [f"--callgrind-out-file={dump}", sys.executable, "-m", "services.router"]
    with (workdir / f"{setting.name}.log").open("w") as log:
        router = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _ready(port, 300)
        _load(port, WARMUP_REQUESTS)
        subprocess.run([control, "-i", "on", str(router.pid)], check=True, capture_output=True)
        _load(port, requests)
        subprocess.run([control, "-i", "off", str(router.pid)], check=True, capture_output=True)
        subprocess.run([control, "-d", str(router.pid)], check=True, capture_output=True)
    finally:
        router.terminate()
        router.wait(120)
    # `-d` writes `<dump>.1-NN` (dump 1, thread NN); the exit writes `<dump>-NN` (nothing counted: instrumentation off).
    totals = thread_totals(dump.with_name(dump.name + ".1"))
    if not totals:
        raise RuntimeError(f"callgrind wrote no counts for {setting.name} (see {workdir})")
    main = totals.get(1, 0)
    others = sum(value for thread, value in totals.items() if thread != 1)
    return Count(setting.name, main / requests / 1000, others / requests / 1000)


def table(counts: list[Count]) -> str:
    base = next((c for c in counts if c.setting == "pier"), None)
    lines = [
        "| setting | event loop kIr/req | other threads kIr/req | total kIr/req | vs pier (per core) |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in counts:
        ratio = f"{base.total / c.total:.2f}x" if base is not None and c.total else "-"
        lines.append(f"| {c.setting} | {c.main:.0f} | {c.others:.0f} | {c.total:.0f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.instructions", description=__doc__)
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="PIER_SETTINGS names, comma-separated")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    known = {s.name: s for s in pier.PIER_SETTINGS}
    wanted = [name.strip() for name in args.settings.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in known]
    if unknown:
        parser.error(f"--settings: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out.resolve()
    workdir = out / f"work-instructions-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    cores = Cores.detect(True)
    procs = ProcessFactory(workdir, base_env())
    counts: list[Count] = []
    with contextlib.ExitStack() as stack:
        stack.callback(procs.close)
        up = contenders.start_upstreams(procs, workdir, cores)
        pier_stack = stack.enter_context(
            pier.stack(procs, workdir / "pier", cores, pier.bench_endpoints(up), otlp=True)
        )
        for name in wanted:
            count = measure(pier_stack, known[name], workdir, args.requests)
            print(f"{name}: {count.main:.0f} + {count.others:.0f} = {count.total:.0f} kIr/request", flush=True)
            counts.append(count)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    report = (
        f"Instructions per request (callgrind), run {stamp} at commit `{commit.stdout.strip()}`, "
        f"{args.requests} non-streamed chat completions over {CONNECTIONS} keep-alive connections per setting.\n\n"
        + table(counts)
        + "\n"
    )
    (out / "instructions.md").write_text(report)
    print()
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
