"""Capacity at the objective: the highest arrival rate a deployment sustains with its p99 within bound.

A probe holds one offered rate (open loop, openloop.py) and measures it in consecutive windows (each
at least `Rule.min_requests` long at that rate) until the last `Rule.windows` of them agree — answers ÷
requests due, and the median latency, each within `Rule.spread` (the median also within
`Rule.latency_slack` of the objective) — or `Rule.max_windows` have run. Steadiness is judged on what a
queue building up moves, window after window: the share answered falls and the median climbs. Not on
the p99: over a window of a few hundred requests it is one of the three slowest, and moves by tens of
ms with nothing changed (measured here: 48 → 120 ms between windows at a third of the capacity).

A rate passes when its agreeing windows, merged, have no failures, answered (or still in flight as the
last window closed) ≥ `Rule.min_achieved` of what the schedule made due, and a p99 within the objective.
A rate whose windows never agree does not pass: past saturation the queue grows window after window,
and one lucky window must not decide.

The search sweeps rates in fractions of a base (the in-process capacity measured on this machine),
in increasing order, stopping at the first that fails; then it bisects between the last rate that
passed and the first that failed. The capacity is the highest rate that passed: Triton's
perf_analyzer and MLPerf's Server scenario ask the same question of a server.

The knee of the latency–throughput curve is the highest achieved rate before p99 first passes twice
its value at the lowest rate probed: where queueing starts to cost more than the work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from locust.stats import calculate_response_time_percentile

KNEE_FACTOR = 2.0
MIN_ACHIEVED = 0.99  # answered ÷ due of a passing rate: perf_analyzer's and MLPerf Server's "kept up"


@dataclass(frozen=True)
class Rule:
    windows: int = 3  # consecutive windows that must agree
    max_windows: int = 6  # after this many, the probe is judged unstable (it does not pass)
    spread: float = 0.10  # agreeing windows: answered ÷ due, and the median latency, within this share of each other
    min_achieved: float = MIN_ACHIEVED  # answered ÷ due of a passing rate
    # Medians that differ by less than this share of the objective also agree: 10% of a 15 ms median is
    # a scheduler tick on a shared 2-core machine, and says nothing about a queue.
    latency_slack: float = 0.10
    min_requests: int = 100  # a window lasts at least this many requests at the offered rate

    def __post_init__(self):
        if not 1 <= self.windows <= self.max_windows:
            raise ValueError(f"need 1 ≤ windows ({self.windows}) ≤ max_windows ({self.max_windows})")
        if not 0 < self.spread < 1 or not 0 < self.min_achieved <= 1:
            raise ValueError("spread must be in (0, 1) and min_achieved in (0, 1]")


@dataclass
class Probe:
    rate: float  # offered, requests/s
    step: object  # the agreeing windows (or the last `Rule.windows` of them) merged into one runner.Step
    windows: list = field(default_factory=list)
    stable: bool = False
    misses: list[str] = field(default_factory=list)  # why the rate does not pass; empty when it does

    @property
    def ok(self) -> bool:
        return not self.misses

    def to_json(self) -> dict:
        return {"rate": self.rate, "stable": self.stable, "ok": self.ok, "misses": self.misses,
                "windows": len(self.windows), "step": self.step.to_json()}  # fmt: skip


@dataclass
class Search:
    scenario: str
    batching: str
    bound_ms: float  # the p99 objective the rates are held to
    base: float  # the rate the sweep's fractions multiply (requests/s)
    probes: list[Probe] = field(default_factory=list)

    @property
    def passed(self) -> list[Probe]:
        return [p for p in self.probes if p.ok]

    @property
    def capacity(self) -> float | None:
        """The highest offered rate that passed below the lowest that failed (None: not even the lowest passed)."""
        edge = min((p.rate for p in self.probes if not p.ok), default=float("inf"))
        return max((p.rate for p in self.passed if p.rate < edge), default=None)

    @property
    def beyond(self) -> bool:
        """No probed rate failed: the capacity is at least what was found, maybe more."""
        return all(p.ok for p in self.probes)

    def probe_at(self, rate: float) -> Probe | None:
        """The probe of `rate` (rates are offered rounded to 0.01 req/s)."""
        return next((p for p in self.probes if p.rate == offered(rate)), None)

    @property
    def knee(self) -> float | None:
        """The highest achieved rate before p99 first passes KNEE_FACTOR × its value at the lowest rate."""
        ordered = sorted(self.probes, key=lambda p: p.rate)
        if not ordered:
            return None
        floor = max(ordered[0].step.p99_ms, 1e-9)
        knee = None
        for probe in ordered:
            if probe.step.p99_ms > KNEE_FACTOR * floor:
                break
            knee = probe.step.images_per_second
        return knee

    def describe(self) -> str:
        if self.capacity is None:
            return f"none: no rate probed kept p99 ≤ {self.bound_ms:.0f} ms"
        at_least = "≥ " if self.beyond else ""
        return f"{at_least}{self.capacity:.1f} req/s at p99 ≤ {self.bound_ms:.0f} ms"

    def to_json(self) -> dict:
        return {"scenario": self.scenario, "batching": self.batching, "bound_ms": self.bound_ms, "base": self.base,
                "capacity": self.capacity, "beyond": self.beyond, "knee": self.knee,
                "probes": [p.to_json() for p in sorted(self.probes, key=lambda p: p.rate)]}  # fmt: skip


def offered(rate: float) -> float:
    """A rate as the search offers it: rounded to 0.01 req/s, so a rate asked for twice is probed once."""
    return round(rate, 2)


def _within(values: list[float], spread: float, slack: float = 0.0) -> bool:
    """max − min within `spread` of the largest (or within `slack`, in the values' unit)."""
    return max(values) - min(values) <= max(spread * max(values), slack)


def agree(windows: list, rule: Rule, bound_ms: float) -> bool:
    """The last `rule.windows` windows agree in answered ÷ due and in median latency. A median spread small
    beside the objective (≤ latency_slack × bound) also counts: a 15 ms median that moves by 3 ms says nothing
    about an 80 ms objective, while a queue that grows moves it by more than that window after window."""
    if len(windows) < rule.windows:
        return False
    last = windows[-rule.windows :]
    return _within([w.achieved_share for w in last], rule.spread) and _within(
        [w.p50_ms for w in last], rule.spread, slack=rule.latency_slack * bound_ms
    )


def settle(windows: Iterator, rule: Rule, bound_ms: float) -> tuple[list, bool]:
    """Take windows until the last `rule.windows` agree or `rule.max_windows` ran; closes the iterator."""
    seen = []
    try:
        for window in windows:
            seen.append(window)
            if agree(seen, rule, bound_ms):
                return seen, True
            if len(seen) >= rule.max_windows:
                break
        return seen, False
    finally:
        close = getattr(windows, "close", None)
        if close is not None:
            close()


def merge(windows: list):
    """Windows of one rate as one step: counts summed, percentiles from the merged histogram."""
    from dataclasses import replace

    first = windows[0]
    histogram: dict[int, int] = {}
    for w in windows:
        for ms, count in w.response_times.items():
            histogram[ms] = histogram.get(ms, 0) + count
    requests = sum(w.requests for w in windows)
    failures = sum(w.failures for w in windows)
    seconds = sum(w.seconds for w in windows)
    counted = sum(histogram.values())

    def pct(q: float) -> float:
        return float(calculate_response_time_percentile(histogram, counted, q)) if counted else 0.0

    batches: dict[str, int] = {}
    for w in windows:
        for size, count in w.batches.items():
            batches[size] = batches.get(size, 0) + count
    timed = [w for w in windows if w.server]
    weight = sum(w.requests for w in timed)
    server = {key: sum(w.server[key] * w.requests for w in timed) / weight for key in timed[0].server} if weight else {}
    answered = [w.server_requests for w in windows]
    return replace(
        first,
        seconds=seconds,
        requests=requests,
        failures=failures,
        requests_per_second=requests / seconds,
        images_per_second=(requests - failures) / seconds,
        p50_ms=pct(0.50),
        p90_ms=pct(0.90),
        p95_ms=pct(0.95),
        p99_ms=pct(0.99),
        max_ms=max(w.max_ms for w in windows),
        generator_cpu=sum(w.generator_cpu * w.seconds for w in windows) / seconds,
        unreliable=any(w.unreliable for w in windows),
        batches=batches,
        server_requests=None if None in answered else sum(answered),
        failure_examples=[e for w in windows for e in w.failure_examples][:3],
        lag_p99_ms=max(w.lag_p99_ms for w in windows),  # the worst window's: a bound on the merged one
        server=server,
        scheduled=None if first.scheduled is None else sum(w.scheduled for w in windows),
        carried=None if first.carried is None else sum(w.carried for w in windows),
        response_times=histogram,
    )


def judge(step, stable: bool, rule: Rule, bound_ms: float, max_failure_ratio: float = 0.0) -> list[str]:
    """Why a measured rate does not pass (empty: it passes)."""
    misses = []
    if not stable:
        misses.append(f"unstable: {rule.windows} consecutive windows never agreed within {rule.spread:.0%}")
    if step.failure_ratio > max_failure_ratio:
        misses.append(f"failures {step.failure_ratio:.2%}")
    if step.kept_share is not None and step.kept_share < rule.min_achieved:
        misses.append(f"answered or in flight {step.kept_share:.1%} of the requests due (< {rule.min_achieved:.0%})")
    if step.p99_ms > bound_ms:
        misses.append(f"p99 {step.p99_ms:.0f} ms > {bound_ms:.0f} ms")
    if step.unreliable:
        misses.append("load generator saturated")
    return misses


def probe(rate: float, windows: Iterator, rule: Rule, bound_ms: float, max_failure_ratio: float = 0.0) -> Probe:
    seen, stable = settle(windows, rule, bound_ms)
    step = merge(seen[-rule.windows :])
    return Probe(rate, step, seen, stable, judge(step, stable, rule, bound_ms, max_failure_ratio))


def find_capacity(
    search: Search,
    measure: Callable[[float], Probe],
    fractions: list[float],
    bisections: int,
    also: list[float] = (),
    say: Callable[[Probe], None] = lambda probe: None,
) -> Search:
    """Sweep `fractions` × `search.base` (and the rates in `also`, e.g. the production rate) upwards until a
    rate fails, then bisect `bisections` times between the last that passed and the first that failed."""
    also = sorted({offered(r) for r in also})
    rates = sorted({offered(f * search.base) for f in fractions} | set(also))
    if not rates or rates[0] <= 0:
        raise ValueError("the sweep needs positive rates")

    def run(rate: float) -> Probe:
        found = search.probe_at(rate)
        if found is None:
            found = measure(rate)
            search.probes.append(found)
            say(found)
        return found

    low, high = 0.0, None
    for rate in rates:
        if run(rate).ok:
            low = rate
        else:
            high = rate
            break
    for rate in [r for r in also if high is not None and r > high]:
        run(rate)  # a production rate beyond the edge is still measured: the gate reads it
    for _ in range(bisections if high is not None else 0):
        middle = offered((low + high) / 2)
        if middle in (low, high):
            break
        if run(middle).ok:
            low = middle
        else:
            high = middle
    return search
