"""CPU time and memory of a process tree, read from /proc (Linux).

CPU per request is (utime + stime of the proxy's whole process tree after a run - before) / requests: it
counts every thread and every worker process, and nothing of the load generator or the upstream.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    return raw[raw.rindex(")") + 2 :].split()


def children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process visible now."""
    out: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            out.setdefault(int(fields[1]), []).append(int(entry.name))
    return out


def tree(roots: Iterable[int]) -> list[int]:
    """The roots and all their descendants that are alive now."""
    kids = children_map()
    seen: list[int] = []
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in seen or not (PROC / str(pid)).exists():
            continue
        seen.append(pid)
        stack.extend(kids.get(pid, []))
    return seen


def cpu_ticks(pid: int) -> int:
    fields = _stat_fields(pid)
    # Fields 14 and 15 of stat (utime, stime); index 11 and 12 once pid and comm are cut off.
    return 0 if fields is None else int(fields[11]) + int(fields[12])


def rss_kib(pid: int) -> int:
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    ticks: dict[int, int]

    @classmethod
    def take(cls, roots: Iterable[int]) -> CpuSnapshot:
        return cls({pid: cpu_ticks(pid) for pid in tree(roots)})

    def seconds_since(self, earlier: CpuSnapshot) -> float:
        """CPU seconds the tree used between two snapshots (a process born in between counts whole)."""
        ticks = sum(now - earlier.ticks.get(pid, 0) for pid, now in self.ticks.items())
        return max(0, ticks) / CLOCK_TICKS_PER_S


def tree_rss_mib(roots: Iterable[int]) -> float:
    return sum(rss_kib(pid) for pid in tree(roots)) / 1024


def system_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (user, nice, system, irq, softirq, steal)."""
    fields = [int(v) for v in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS_PER_S
