"""What to do next on one endpoint: a pure function of (endpoint state, `/engines/ps`, wanted list, memory, clock).

The worker asks for one step at a time, does it, then asks again with a fresh `/engines/ps`, so every
decision sees what DMR holds now. The rules:
- the wanted list's order is the priority: the first `limit - busy runners of other models` models present
  on the endpoint fit; the rest are reported as not fitting and never loaded by warm-up;
- a load never makes DMR hold more runners than the limit: when the endpoint is full, warm-up first unloads
  the least recently used idle runner of a model nobody wanted (DMR's unload leaves busy runners alone),
  and waits when there is none;
- `keep`: loaded -> refreshed before `last_used + keep_alive - margin`; cold -> loaded;
- `pin`: loaded with keep_alive -1 (`_configure`); re-applied when `/engines/ps` shows another keep_alive
  (a DMR restart forgets configurations); not while the runner is busy (DMR answers 409);
- `preload`: loaded once per routable period, then left to DMR;
- a failed attempt waits for its backoff (`Memory.next_retry_at`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from services.warmup.wanted import Wanted
from shared.state import EndpointState, LoadedModel, WarmPhase, WarmPolicy

RECHECK_S = 1.0  # a busy runner, a load by someone else: look again this soon
BUSY_RECHECK_S = 2.0  # wanted models wait for busy runners of other models: look again this often
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


class StepKind(StrEnum):
    PULL = "pull"
    UNLOAD = "unload"  # free a runner for a wanted model (an idle one nobody wanted)
    LOAD = "load"
    PIN = "pin"
    REFRESH = "refresh"  # touch a loaded `keep` model so its keep_alive starts again


@dataclass(frozen=True, slots=True)
class Step:
    kind: StepKind
    model: str
    policy: WarmPolicy = WarmPolicy.KEEP


@dataclass(slots=True)
class Memory:
    """What the worker remembers of one (endpoint, model) between plans."""

    failures: int = 0
    next_retry_at: float = 0.0
    last_error: str | None = None
    preloaded: bool = False  # `preload`: done for this routable period
    pulled: bool = False  # pulled by warm-up (the health worker's listing may lag behind)
    last_touch: float = 0.0  # unix time of the last successful load or refresh
    load_time_s: float | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """The phase to publish for one wanted model."""

    phase: WarmPhase
    policy: WarmPolicy
    fits: bool = True
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointPlan:
    step: Step | None  # the next thing to do; None = nothing now
    reports: Mapping[str, Report] = field(default_factory=dict)  # model -> its phase now
    wake_at: float | None = None  # plan again then (a refresh or a retry falls due)


@dataclass(frozen=True, slots=True)
class Knobs:
    runner_limit: int
    default_keep_alive_s: float  # DMR's default when /engines/ps shows none
    keep_margin_s: float
    pull: bool = False  # pull wanted models the endpoint lacks
    pin_supported: bool = True  # DMR's `_configure`


def go_duration_s(text: str | None) -> float | None:
    """DMR's keep_alive as `/engines/ps` shows it (`10m0s`, `-1`, `0s`) in seconds; None when absent/unparsable."""
    if text is None:
        return None
    raw = text.strip()
    try:
        return float(raw)
    except ValueError:
        pass
    sign = -1.0 if raw.startswith("-") else 1.0
    body = raw.lstrip("+-")
    parts = _DURATION_PART.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        return None
    return sign * sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def go_time(text: str | None) -> float | None:
    """`last_used` (RFC 3339, possibly with nanoseconds) as unix time; None when absent/unparsable."""
    if not text:
        return None
    raw = text.strip().replace("Z", "+00:00")
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", raw)
    if match is None:
        return None
    fraction = (match.group(2) or "")[:7]  # Python parses at most microseconds
    try:
        return datetime.fromisoformat(match.group(1) + fraction + match.group(3)).timestamp()
    except ValueError:
        return None


def margin_s(keep_alive_s: float, knobs: Knobs) -> float:
    """How long before the eviction a refresh is due: the configured margin, at most a third of keep_alive."""
    return min(knobs.keep_margin_s, keep_alive_s / 3)


def plan_endpoint(
    state: EndpointState,
    runners: Sequence[LoadedModel] | None,
    wanted: Sequence[Wanted],
    memory: Mapping[str, Memory],
    knobs: Knobs,
    now: float,
) -> EndpointPlan:
    """The next step on one routable endpoint (see the module docstring). `runners` None: no `/engines/ps`."""
    present = state.all_models() | {m for m, mem in memory.items() if mem.pulled}
    candidates = [w for w in wanted if w.model in present or knobs.pull]
    names = {w.model for w in candidates}
    loaded = {r.name: r for r in runners} if runners is not None else {}
    stuck = sum(1 for r in loaded.values() if r.name not in names and (r.in_use or r.loading))
    room = max(0, knobs.runner_limit - stuck)
    fitting, unfit = candidates[:room], candidates[room:]
    reports: dict[str, Report] = {}
    wakes: list[float] = []
    steps: list[Step] = []
    for w in unfit:
        warm = w.model in loaded and not loaded[w.model].loading
        detail = f"does not fit: runner limit {knobs.runner_limit}"
        if stuck:
            detail += f", {stuck} busy runner(s) of other models"
        reports[w.model] = Report(WarmPhase.WARM if warm else WarmPhase.COLD, w.policy, fits=False, detail=detail)
    if unfit and stuck:
        # A runner that stops serving is no event (only the loaded set is): look again for the room it leaves.
        wakes.append(now + BUSY_RECHECK_S)
    for w in fitting:
        mem = memory.get(w.model, Memory())
        report, step, wake = _one(w, mem, loaded.get(w.model), runners is not None, w.model in present, knobs, now)
        reports[w.model] = report
        if step is not None:
            steps.append(step)
        if wake is not None:
            wakes.append(wake)
    step = steps[0] if steps else None
    new_runner = step is not None and step.kind in (StepKind.LOAD, StepKind.PIN) and step.model not in loaded
    if step is not None and new_runner and runners is not None and len(loaded) >= knobs.runner_limit:
        # The endpoint is full: make room first, or wait for a runner to free up.
        keep = {w.model for w in fitting}
        idle = [r for r in loaded.values() if r.name not in keep and not r.in_use and not r.loading]
        if idle:
            victim = min(idle, key=lambda r: go_time(r.last_used) or 0.0)
            step = Step(StepKind.UNLOAD, victim.name)
        else:
            reports[step.model] = Report(
                WarmPhase.COLD, step.policy, detail=f"waiting for a free runner (limit {knobs.runner_limit})"
            )
            step = None
            wakes.append(now + RECHECK_S)
    return EndpointPlan(step, reports, min(wakes) if wakes else None)


def _one(
    w: Wanted, mem: Memory, runner: LoadedModel | None, ps_known: bool, present: bool, knobs: Knobs, now: float
) -> tuple[Report, Step | None, float | None]:
    """(report, step, wake time) for one fitting wanted model."""
    if mem.next_retry_at > now:
        detail = f"retry at {datetime.fromtimestamp(mem.next_retry_at).isoformat(timespec='seconds')}"
        return Report(WarmPhase.FAILED, w.policy, detail=detail), None, mem.next_retry_at
    if not present:
        return Report(WarmPhase.COLD, w.policy, detail="not pulled here"), Step(StepKind.PULL, w.model, w.policy), None
    pin = w.policy is WarmPolicy.PIN and knobs.pin_supported
    load = Step(StepKind.PIN if pin else StepKind.LOAD, w.model, w.policy)
    if not ps_known:
        # No /engines/ps (old DMR, other servers): a load of a loaded model is cheap, so repeat it each period.
        if w.policy is WarmPolicy.PRELOAD and mem.preloaded:
            return Report(WarmPhase.WARM, w.policy, detail="preloaded; left to the server"), None, None
        due = mem.last_touch + knobs.default_keep_alive_s - margin_s(knobs.default_keep_alive_s, knobs)
        if mem.last_touch and due > now:
            return Report(WarmPhase.WARM, w.policy), None, due
        return Report(WarmPhase.COLD, w.policy), load, None
    if runner is None:
        if w.policy is WarmPolicy.PRELOAD and mem.preloaded:
            return Report(WarmPhase.COLD, w.policy, detail="preloaded once; left to DMR"), None, None
        return Report(WarmPhase.COLD, w.policy), load, None
    if runner.loading:
        return Report(WarmPhase.LOADING, w.policy, detail="loading (not by warm-up)"), None, now + RECHECK_S
    warm = Report(WarmPhase.WARM, w.policy)
    keep_alive = go_duration_s(runner.keep_alive)
    if pin:
        if keep_alive is not None and keep_alive < 0:
            return warm, None, None
        if runner.in_use:  # DMR refuses to reconfigure a busy runner (409)
            return Report(WarmPhase.WARM, w.policy, detail="to pin once idle"), None, now + RECHECK_S
        return Report(WarmPhase.WARM, w.policy, detail="to pin"), load, None
    if w.policy is WarmPolicy.PRELOAD:
        return warm, None, None
    if keep_alive is not None and keep_alive < 0:
        return Report(WarmPhase.WARM, w.policy, detail="pinned on the endpoint"), None, None
    period = keep_alive if keep_alive is not None and keep_alive > 0 else knobs.default_keep_alive_s
    last = max(go_time(runner.last_used) or mem.last_touch or now, mem.last_touch)
    due = last + period - margin_s(period, knobs)
    if runner.in_use or due > now:
        # A runner serving a request restarts its keep_alive when the request ends: look again then at the latest.
        return warm, None, max(due, now + RECHECK_S) if runner.in_use else due
    return warm, Step(StepKind.REFRESH, w.model, w.policy), None
