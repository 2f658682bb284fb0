"""The SLO file (loadtest/slo.toml) and the gate: each objective met or not, with its measured value."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from .capacity import Capacity, SignatureCapacity, scenario_signature
from .search import MIN_ACHIEVED, offered


class SloError(ValueError):
    """The SLO file is missing, malformed, or lacks a scenario being run."""


@dataclass(frozen=True)
class Objective:
    """The objectives of one scenario at `concurrency` users: absolute ones, ones relative to the
    capacity measured in process on the same machine, or both (then both must hold)."""

    concurrency: int  # the load at which the objectives apply
    max_failure_ratio: float
    min_batching_gain: float  # images/s with batching on ÷ off, at `concurrency`
    tolerance: float  # candidate may be this much slower (throughput) than current, and later (p99) unless...
    tail_tolerance: float | None = None  # ...this is given: candidate p99 ≤ (1 + this) × current's
    p99_ms: float | None = None
    min_images_per_second: float | None = None
    max_p99_over_expected: float | None = None  # p99 ≤ this × the in-process latency at `concurrency` users
    min_share_of_capacity: float | None = None  # img/s ≥ this × the in-process img/s at `concurrency` users
    # Open loop (pt2tf-loadtest --search): the production arrival rate and the p99 wanted at it.
    rate: float | None = None  # requests/s
    rate_share_of_capacity: float | None = None  # requests/s = this × the in-process best img/s
    rate_p99_ms: float | None = None
    rate_max_p99_over_batch_1: float | None = None  # p99 ≤ this × the in-process latency of one image
    min_headroom: float | None = None  # capacity at the p99 objective ÷ the production rate

    @property
    def open_loop(self) -> bool:
        return self.rate is not None or self.rate_share_of_capacity is not None

    @property
    def relative(self) -> bool:
        return any(
            value is not None
            for value in (self.max_p99_over_expected, self.min_share_of_capacity, self.rate_share_of_capacity,
                          self.rate_max_p99_over_batch_1)
        )  # fmt: skip

    def production_rate(self, capacity: SignatureCapacity | None) -> float:
        """The arrival rate the open-loop objectives apply at, requests/s."""
        if self.rate is not None:
            return self.rate
        return self.rate_share_of_capacity * capacity.best

    def rate_p99_bound_ms(self, capacity: SignatureCapacity | None) -> float:
        """The tighter of the absolute and the relative p99 bound at the production rate."""
        bounds = [] if self.rate_p99_ms is None else [self.rate_p99_ms]
        if self.rate_max_p99_over_batch_1 is not None and capacity is not None:
            bounds.append(self.rate_max_p99_over_batch_1 * capacity.batch_1_ms)
        return min(bounds)

    def p99_bound_ms(self, capacity: SignatureCapacity | None) -> float:
        """The tighter of the absolute and the relative p99 bound."""
        bounds = [] if self.p99_ms is None else [self.p99_ms]
        if self.max_p99_over_expected is not None and capacity is not None:
            bounds.append(self.max_p99_over_expected * capacity.latency_ms_at(self.concurrency))
        return min(bounds)


@dataclass(frozen=True)
class SloFile:
    path: Path
    objectives: dict[str, Objective]

    def objective(self, scenario: str) -> Objective:
        return self.objectives[scenario]

    @property
    def relative(self) -> bool:
        """Some objective is a fraction or multiple of the capacity measured in process."""
        return any(o.relative for o in self.objectives.values())


@dataclass(frozen=True)
class Verdict:
    scenario: str
    objective: str
    wanted: str
    measured: str
    ok: bool


REQUIRED = ("concurrency", "max_failure_ratio", "min_batching_gain", "tolerance")
LATENCY = ("p99_ms", "max_p99_over_expected")
THROUGHPUT = ("min_images_per_second", "min_share_of_capacity")
RATE = ("rate", "rate_share_of_capacity")
RATE_LATENCY = ("rate_p99_ms", "rate_max_p99_over_batch_1")
FIELDS = (*REQUIRED, "tail_tolerance", *LATENCY, *THROUGHPUT, *RATE, *RATE_LATENCY, "min_headroom")


def load(path: Path, scenarios: list[str]) -> SloFile:
    """Read the SLO file; every scenario to be run needs its table, with a latency and a throughput objective."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SloError(f"SLO file {path} is missing") from None
    except tomllib.TOMLDecodeError as exc:
        raise SloError(f"SLO file {path} is not valid TOML: {exc}") from None
    defaults = doc.get("defaults", {})
    objectives = {}
    for scenario in scenarios:
        for name, table in (("defaults", defaults), (scenario, doc.get(scenario, {}))):
            unknown = sorted(set(table) - set(FIELDS))
            if unknown:
                raise SloError(f"{path}: [{name}] has unknown keys {', '.join(unknown)}; known: {', '.join(FIELDS)}")
        table = {**defaults, **doc.get(scenario, {})}
        missing = [f for f in REQUIRED if f not in table]
        missing += [" or ".join(group) for group in (LATENCY, THROUGHPUT) if not any(f in table for f in group)]
        if any(f in table for f in (*RATE, *RATE_LATENCY, "min_headroom")):  # open-loop objectives: all or none
            missing += [" or ".join(group) for group in (RATE, RATE_LATENCY) if not any(f in table for f in group)]
        if missing:
            raise SloError(f"{path}: [{scenario}] lacks {', '.join(missing)} (and [defaults] does not give them)")
        if all(f in table for f in RATE):
            raise SloError(f"{path}: [{scenario}] gives both rate and rate_share_of_capacity: keep one")
        try:
            values = {f: int(table[f]) if f == "concurrency" else float(table[f]) for f in FIELDS if f in table}
        except (TypeError, ValueError) as exc:
            raise SloError(f"{path}: [{scenario}] has a value that is not a number: {exc}") from None
        objectives[scenario] = Objective(**values)
    return SloFile(Path(path), objectives)


def _at(steps, scenario: str, batching: str, concurrency: int):
    """The closed-loop step of `scenario` at `concurrency` users (open-loop steps are judged by their rate)."""
    return next(
        (s for s in steps if s.scenario == scenario and s.batching == batching and s.concurrency == concurrency
         and getattr(s, "offered_rate", None) is None),
        None,
    )  # fmt: skip


@dataclass(frozen=True)
class RateObjective:
    """An open-loop objective resolved on this machine: the production rate and the p99 bound."""

    rate: float
    bound_ms: float
    objective: Objective


def rate_objective(slo: SloFile, scenario: str, capacity: Capacity | None) -> RateObjective | None:
    """The production rate and p99 bound of `scenario` (None: its table states no open-loop objective)."""
    objective = slo.objective(scenario)
    if not objective.open_loop:
        return None
    if objective.relative and capacity is None:
        raise SloError(f"{slo.path} states [{scenario}]'s rate objectives relative to the in-process capacity, "
                       "which was not measured")  # fmt: skip
    own = capacity.of(scenario_signature(scenario)) if capacity is not None else None
    # As the search offers it (to 0.01 req/s): the gate reads the probe of this very rate.
    return RateObjective(offered(objective.production_rate(own)), objective.rate_p99_bound_ms(own), objective)


def gate_rates(slo: SloFile, searches: list, capacity: Capacity | None) -> list[Verdict]:
    """The open-loop objectives, judged on the searches (pt2tf_loadtest.search) with batching on, or as served:
    at the production rate, p99 within bound, every due request answered, no failures; and the capacity at
    the objective at least `min_headroom` × the production rate."""
    verdicts = []
    for scenario in slo.objectives:
        wanted = rate_objective(slo, scenario, capacity)
        if wanted is None:
            continue
        search = next((s for s in searches if s.scenario == scenario and s.batching in ("on", "as configured")),
                      None)  # fmt: skip
        where = f"{scenario} @ {wanted.rate:.1f} req/s"
        at = search.probe_at(wanted.rate) if search is not None else None
        if at is None:
            verdicts.append(Verdict(where, "open-loop search with batching on", "run", "not run", False))
            continue
        step, objective = at.step, wanted.objective
        verdicts += [
            Verdict(where, "p99 at the production rate", f"≤ {wanted.bound_ms:.0f} ms", f"{step.p99_ms:.0f} ms",
                    step.p99_ms <= wanted.bound_ms),
            Verdict(where, "answered or in flight ÷ requests due", f"≥ {MIN_ACHIEVED:.0%}",
                    f"{step.kept_share:.1%}", step.kept_share >= MIN_ACHIEVED),
            Verdict(where, "failure ratio", f"≤ {objective.max_failure_ratio:.2%}", f"{step.failure_ratio:.2%}",
                    step.failure_ratio <= objective.max_failure_ratio),
            Verdict(where, "steady (windows agree)", "yes", "yes" if at.stable else f"no, {len(at.windows)} windows",
                    at.stable),
        ]  # fmt: skip
        if objective.min_headroom is not None:
            found = search.capacity or 0.0
            verdicts.append(Verdict(
                where, "capacity at the p99 objective ÷ production rate", f"≥ {objective.min_headroom:g}×",
                f"{'≥ ' if search.beyond else ''}{found:.1f} req/s = {found / wanted.rate:.3f}×",
                found >= objective.min_headroom * wanted.rate,
            ))  # fmt: skip
    return verdicts


def gate(slo: SloFile, steps: list, comparison: list, capacity: Capacity | None = None) -> list[Verdict]:
    """Every objective of every scenario, judged on the steps measured at its concurrency."""
    if slo.relative and capacity is None:
        raise SloError(f"{slo.path} states objectives relative to the in-process capacity, which was not measured")
    verdicts = []
    for scenario, objective in slo.objectives.items():
        c = objective.concurrency
        step = _at(steps, scenario, "on", c) or _at(steps, scenario, "as configured", c)
        if step is None:
            ran = sorted({(s.concurrency, s.batching) for s in steps if s.scenario == scenario
                          and s.offered_rate is None})  # fmt: skip
            ran_text = ", ".join(f"{users} users batching {batching}" for users, batching in ran) or "none"
            wanted = f"a step at {c} users with batching on (or as configured), where the objectives apply"
            verdicts.append(Verdict(scenario, wanted, "run", f"not run (ran: {ran_text})", False))
            continue
        where = f"{scenario} @ {c} users"
        note = " (generator saturated: unreliable)" if step.unreliable else ""
        own = capacity.of(scenario_signature(scenario)) if capacity is not None else None
        verdicts += _latency(where, objective, step, own, note) + _throughput(where, objective, step, own, note)
        failures_ok = step.failure_ratio <= objective.max_failure_ratio
        verdicts.append(Verdict(where, "failure ratio", f"≤ {objective.max_failure_ratio:.2%}",
                                f"{step.failure_ratio:.2%}", failures_ok))  # fmt: skip
        off = _at(steps, scenario, "off", c)
        if step.batching == "on" and off is not None:
            gain = step.images_per_second / max(off.images_per_second, 1e-9)
            verdicts.append(Verdict(where, "batching gain (on ÷ off)", f"≥ {objective.min_batching_gain:g}×",
                                    f"{gain:.2f}×", gain >= objective.min_batching_gain))  # fmt: skip
        verdicts += _comparison(where, scenario, objective, comparison)
    return verdicts


def _latency(where: str, objective: Objective, step, own: SignatureCapacity | None, note: str) -> list[Verdict]:
    verdicts = []
    if objective.p99_ms is not None:
        verdicts.append(Verdict(where, "p99 latency", f"≤ {objective.p99_ms:g} ms", f"{step.p99_ms:.0f} ms{note}",
                                step.p99_ms <= objective.p99_ms))  # fmt: skip
    if objective.max_p99_over_expected is not None and own is not None:
        expected = own.latency_ms_at(objective.concurrency)
        bound = objective.max_p99_over_expected * expected
        verdicts.append(Verdict(
            where, "p99 latency ÷ in-process latency",
            f"≤ {objective.max_p99_over_expected:g}× {expected:.0f} ms = {bound:.0f} ms",
            f"{step.p99_ms:.0f} ms = {step.p99_ms / expected:.2f}×{note}", step.p99_ms <= bound,
        ))  # fmt: skip
    return verdicts


def _throughput(where: str, objective: Objective, step, own: SignatureCapacity | None, note: str) -> list[Verdict]:
    verdicts = []
    rate = step.images_per_second
    if objective.min_images_per_second is not None:
        verdicts.append(Verdict(where, "throughput", f"≥ {objective.min_images_per_second:g} img/s",
                                f"{rate:.1f} img/s{note}", rate >= objective.min_images_per_second))  # fmt: skip
    if objective.min_share_of_capacity is not None and own is not None:
        ceiling = own.rate_at(objective.concurrency)
        bound = objective.min_share_of_capacity * ceiling
        verdicts.append(Verdict(
            where, "throughput ÷ in-process capacity",
            f"≥ {objective.min_share_of_capacity:g}× {ceiling:.1f} img/s = {bound:.1f} img/s",
            f"{rate:.1f} img/s = {rate / ceiling:.2f}×{note}", rate >= bound,
        ))  # fmt: skip
    return verdicts


def _comparison(where: str, scenario: str, objective: Objective, comparison: list) -> list[Verdict]:
    sides = {}
    for side in ("current", "candidate"):
        runs = [s for s in comparison if s.scenario == scenario and s.label.startswith(side + "=")]
        if runs:
            sides[side] = (
                sum(s.images_per_second for s in runs) / len(runs),
                sum(s.p99_ms for s in runs) / len(runs),
            )
    if len(sides) < 2:
        return []
    candidate_runs = [s for s in comparison if s.scenario == scenario and s.label.startswith("candidate=")]
    failures = sum(s.failures for s in candidate_runs) / max(1, sum(s.requests for s in candidate_runs))
    # A candidate whose answers differ from the in-process reference fails its requests (users.py checks them).
    answers = Verdict(where, "candidate failure ratio", f"≤ {objective.max_failure_ratio:.2%}", f"{failures:.2%}",
                      failures <= objective.max_failure_ratio)  # fmt: skip
    (cur_rate, cur_p99), (cand_rate, cand_p99) = sides["current"], sides["candidate"]
    rate_ratio, p99_ratio = cand_rate / max(cur_rate, 1e-9), cand_p99 / max(cur_p99, 1e-9)
    tolerance = objective.tolerance
    tail = tolerance if objective.tail_tolerance is None else objective.tail_tolerance
    return [
        answers,
        Verdict(where, "candidate throughput ÷ current", f"≥ {1 - tolerance:.2f}×", f"{rate_ratio:.2f}×",
                rate_ratio >= 1 - tolerance),
        Verdict(where, "candidate p99 ÷ current", f"≤ {1 + tail:.2f}×", f"{p99_ratio:.2f}×",
                p99_ratio <= 1 + tail),
    ]  # fmt: skip
