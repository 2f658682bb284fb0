"""The SLO file (loadtest/slo.toml) and the gate: each objective met or not, with its measured value."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path


class SloError(ValueError):
    """The SLO file is missing, malformed, or lacks a scenario being run."""


@dataclass(frozen=True)
class Objective:
    concurrency: int  # the load at which the objectives apply
    p99_ms: float
    min_images_per_second: float
    max_failure_ratio: float
    min_batching_gain: float  # images/s with batching on ÷ off, at `concurrency`
    tolerance: float  # candidate may be this much slower (throughput) or later (p99) than current


@dataclass(frozen=True)
class SloFile:
    path: Path
    objectives: dict[str, Objective]

    def objective(self, scenario: str) -> Objective:
        return self.objectives[scenario]


@dataclass(frozen=True)
class Verdict:
    scenario: str
    objective: str
    wanted: str
    measured: str
    ok: bool


FIELDS = ("concurrency", "p99_ms", "min_images_per_second", "max_failure_ratio", "min_batching_gain", "tolerance")


def load(path: Path, scenarios: list[str]) -> SloFile:
    """Read the SLO file; every scenario to be run needs its table, with every field."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SloError(f"SLO file {path} is missing") from None
    except tomllib.TOMLDecodeError as exc:
        raise SloError(f"SLO file {path} is not valid TOML: {exc}") from None
    defaults = doc.get("defaults", {})
    objectives = {}
    for scenario in scenarios:
        table = {**defaults, **doc.get(scenario, {})}
        missing = [f for f in FIELDS if f not in table]
        if missing:
            raise SloError(f"{path}: [{scenario}] lacks {', '.join(missing)} (and [defaults] does not give them)")
        unknown = sorted(set(doc.get(scenario, {})) - set(FIELDS))
        if unknown:
            raise SloError(f"{path}: [{scenario}] has unknown keys {', '.join(unknown)}; known: {', '.join(FIELDS)}")
        try:
            values = {f: int(table[f]) if f == "concurrency" else float(table[f]) for f in FIELDS}
        except (TypeError, ValueError) as exc:
            raise SloError(f"{path}: [{scenario}] has a value that is not a number: {exc}") from None
        objectives[scenario] = Objective(**values)
    return SloFile(Path(path), objectives)


def _at(steps, scenario: str, batching: str, concurrency: int):
    return next(
        (s for s in steps if s.scenario == scenario and s.batching == batching and s.concurrency == concurrency), None
    )


def gate(slo: SloFile, steps: list, comparison: list) -> list[Verdict]:
    """Every objective of every scenario, judged on the steps measured at its concurrency."""
    verdicts = []
    for scenario, objective in slo.objectives.items():
        c = objective.concurrency
        step = _at(steps, scenario, "on", c) or _at(steps, scenario, "as configured", c)
        if step is None:
            ran = sorted({s.concurrency for s in steps if s.scenario == scenario})
            verdicts.append(Verdict(scenario, f"a step at {c} users, where the objectives apply", "run",
                                    f"not run (ran {ran})", False))  # fmt: skip
            continue
        where = f"{scenario} @ {c} users"
        note = " (generator saturated: unreliable)" if step.unreliable else ""
        verdicts += [
            Verdict(where, "p99 latency", f"≤ {objective.p99_ms:g} ms", f"{step.p99_ms:.0f} ms{note}",
                    step.p99_ms <= objective.p99_ms),
            Verdict(where, "throughput", f"≥ {objective.min_images_per_second:g} img/s",
                    f"{step.images_per_second:.1f} img/s{note}",
                    step.images_per_second >= objective.min_images_per_second),
            Verdict(where, "failure ratio", f"≤ {objective.max_failure_ratio:.2%}", f"{step.failure_ratio:.2%}",
                    step.failure_ratio <= objective.max_failure_ratio),
        ]  # fmt: skip
        off = _at(steps, scenario, "off", c)
        if step.batching == "on" and off is not None:
            gain = step.images_per_second / max(off.images_per_second, 1e-9)
            verdicts.append(Verdict(where, "batching gain (on ÷ off)", f"≥ {objective.min_batching_gain:g}×",
                                    f"{gain:.2f}×", gain >= objective.min_batching_gain))  # fmt: skip
        verdicts += _comparison(where, scenario, objective, comparison)
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
    (cur_rate, cur_p99), (cand_rate, cand_p99) = sides["current"], sides["candidate"]
    rate_ratio, p99_ratio = cand_rate / max(cur_rate, 1e-9), cand_p99 / max(cur_p99, 1e-9)
    tolerance = objective.tolerance
    return [
        Verdict(where, "candidate throughput ÷ current", f"≥ {1 - tolerance:.2f}×", f"{rate_ratio:.2f}×",
                rate_ratio >= 1 - tolerance),
        Verdict(where, "candidate p99 ÷ current", f"≤ {1 + tolerance:.2f}×", f"{p99_ratio:.2f}×",
                p99_ratio <= 1 + tolerance),
    ]  # fmt: skip
