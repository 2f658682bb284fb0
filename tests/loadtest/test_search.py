"""The capacity search's decisions on windows whose figures are given, not measured.

The windows here are `runner.Step`s built from stated numbers (the one thing mocked: a deployment's
behaviour at each rate), so each rule is checked exactly: when windows agree, how they merge (Locust's
own percentile over the merged histogram), when a rate passes, where the sweep stops and what the
bisection finds, the knee, and the gate at the production rate. The real search, against a real server,
runs in test_loadtest.py.
"""

from __future__ import annotations

import pytest
from locust.stats import calculate_response_time_percentile
from pt2tf_loadtest import search, slo
from pt2tf_loadtest.capacity import Capacity, SignatureCapacity
from pt2tf_loadtest.openloop import Arrivals
from pt2tf_loadtest.runner import Step

RULE = search.Rule()  # 3 agreeing windows of at most 6, 10% spread, 99% answered, slack 10% of the bound
BOUND_MS = 100.0


def window(p50: float, p99: float, answered: int = 200, due: int = 200, failures: int = 0, seconds: float = 4.0,
           slow: int = 2, carried: int = 0) -> Step:  # fmt: skip
    """A window whose histogram holds `answered` requests: most at p50, `slow` of them at p99."""
    histogram = {round(p50): answered - slow, round(p99): slow} if slow else {round(p50): answered}
    return Step(
        "grpc-tensor", "on", 64, seconds, answered, failures, answered / seconds, (answered - failures) / seconds,
        p50, p50, p99, p99, p99, 0.05, False, offered_rate=due / seconds, scheduled=due, response_times=histogram,
        carried=carried,
    )  # fmt: skip


def test_windows_agree_on_answered_share_and_median_not_on_the_p99():
    steady = [window(20, 40), window(21, 95), window(22, 55)]  # p99 jumps between windows: still steady
    assert search.agree(steady, RULE, BOUND_MS)
    assert not search.agree(steady[:2], RULE, BOUND_MS)  # too few
    # A median spread under the slack (10% of the 100 ms objective) agrees though it is 40% of the median.
    assert search.agree([window(10, 30), window(14, 30), window(12, 30)], RULE, BOUND_MS)
    # A queue building up: the median climbs by more than 10% and the slack window after window.
    assert not search.agree([window(40, 90), window(70, 150), window(120, 260)], RULE, BOUND_MS)
    # Falling behind the schedule: answered ÷ due drops.
    assert not search.agree([window(20, 40), window(20, 40, answered=170), window(20, 40, answered=150)],
                            RULE, BOUND_MS)  # fmt: skip


def test_settle_takes_windows_until_the_last_ones_agree_and_closes_the_load():
    closed = []

    def windows(items):
        try:
            yield from items
        finally:
            closed.append(True)

    noisy_start = [window(80, 200), window(20, 40), window(21, 42), window(20, 44), window(99, 999)]
    seen, stable = search.settle(windows(noisy_start), RULE, BOUND_MS)
    assert stable and len(seen) == 4 and closed == [True]  # the fifth window is never run
    growing = [window(20 * 2**i, 40 * 2**i) for i in range(10)]
    seen, stable = search.settle(windows(growing), RULE, BOUND_MS)
    assert not stable and len(seen) == RULE.max_windows and closed == [True, True]


def test_merged_windows_have_summed_counts_and_locusts_percentiles_of_the_union():
    a, b = window(20, 90, answered=300, due=301), window(30, 50, answered=100, due=102, failures=1)
    merged = search.merge([a, b])
    assert (merged.requests, merged.failures, merged.scheduled, merged.seconds) == (400, 1, 403, 8.0)
    union = {20: 298, 90: 2, 30: 98, 50: 2}
    for q, got in ((0.5, merged.p50_ms), (0.99, merged.p99_ms)):
        assert got == calculate_response_time_percentile(union, 400, q)
    assert merged.achieved_share == pytest.approx(399 / 403)
    assert merged.max_ms == 90


def test_a_rate_passes_only_steady_complete_without_failures_and_within_the_bound():
    def judged(windows):
        return search.probe(50.0, iter(windows), RULE, BOUND_MS)

    good = judged([window(20, 60)] * 3)
    assert good.ok and good.stable and good.misses == []
    assert judged([window(20, 160)] * 3).misses == ["p99 160 ms > 100 ms"]
    assert judged([window(20, 60, answered=190)] * 3).misses == [
        "answered or in flight 95.0% of the requests due (< 99%)"
    ]
    # Two answers short per window, both still in flight as it closed: the window's edge, not the deployment.
    edge = judged([window(20, 60, answered=197, due=200, carried=2)] * 3)
    assert edge.ok and edge.step.achieved_share == pytest.approx(0.985) and edge.step.carried == 6
    assert judged([window(20, 60, failures=1)] * 3).misses == ["failures 0.50%"]
    unsteady = judged([window(20 * 2**i, 40) for i in range(8)])
    assert not unsteady.ok and unsteady.misses[0].startswith("unstable")


class Deployment:
    """A server that keeps p99 at 40 ms up to `edge` req/s and falls behind beyond it (stated, not measured)."""

    def __init__(self, edge: float):
        self.edge, self.rates = edge, []

    def __call__(self, rate: float) -> search.Probe:
        self.rates.append(rate)
        if rate <= self.edge:
            windows = [window(15 + rate / 10, 40 + rate / 5)] * 3
        else:
            windows = [window(60 * 2**i, 400 * 2**i, answered=180) for i in range(RULE.max_windows)]
        return search.probe(rate, iter(windows), RULE, BOUND_MS)


def test_the_sweep_stops_at_the_first_failed_rate_and_bisects_towards_the_edge():
    deployment = Deployment(edge=70.0)
    found = search.find_capacity(search.Search("grpc-tensor", "on", BOUND_MS, base=100.0), deployment,
                                 [0.25, 0.5, 0.75, 1.0, 1.25], bisections=3, also=[40.0])  # fmt: skip
    # 25, 40 (the production rate), 50 pass; 75 fails, so 100 and 125 are never offered; then 62.5, 68.75, 71.88.
    assert deployment.rates == [25.0, 40.0, 50.0, 75.0, 62.5, 68.75, 71.88]
    assert found.capacity == 68.75 and not found.beyond
    assert found.describe() == "68.8 req/s at p99 ≤ 100 ms"
    assert found.knee == pytest.approx(200 / 4.0)  # every passing probe answered 200 in 4 s; p99 stays < 2 × 45 ms
    assert [p["rate"] for p in found.to_json()["probes"]] == sorted(deployment.rates)


def test_a_production_rate_beyond_the_edge_is_still_measured_and_none_passing_says_so():
    deployment = Deployment(edge=30.0)
    found = search.find_capacity(search.Search("rest-image", "off", BOUND_MS, base=100.0), deployment,
                                 [0.25, 0.5], bisections=1, also=[80.0])  # fmt: skip
    assert deployment.rates == [25.0, 50.0, 80.0, 37.5]
    assert found.capacity == 25.0 and found.probe_at(80.0) is not None
    nothing = search.find_capacity(search.Search("rest-image", "off", BOUND_MS, base=100.0), Deployment(edge=1.0),
                                   [0.25, 0.5], bisections=2)  # fmt: skip
    assert nothing.capacity is None and nothing.describe() == "none: no rate probed kept p99 ≤ 100 ms"
    everything = search.find_capacity(search.Search("rest-image", "off", BOUND_MS, base=100.0),
                                      Deployment(edge=1000.0), [0.5, 1.0], bisections=2)  # fmt: skip
    assert everything.beyond and everything.describe() == "≥ 100.0 req/s at p99 ≤ 100 ms"


def test_a_lucky_pass_above_a_failed_rate_is_not_capacity():
    found = search.Search("grpc-tensor", "on", BOUND_MS, base=100.0)
    found.probes = [search.Probe(rate, window(20, p99), [], True, [] if p99 <= BOUND_MS else ["p99"])
                    for rate, p99 in ((25.0, 50), (50.0, 150), (60.0, 90))]  # fmt: skip
    assert found.capacity == 25.0


def test_the_knee_is_the_last_rate_before_p99_doubles():
    found = search.Search("grpc-tensor", "on", 1000.0, base=100.0)
    found.probes = [search.Probe(rate, window(10, p99, answered=int(rate * 4)), [], True)
                    for rate, p99 in ((25.0, 30), (50.0, 55), (75.0, 59), (90.0, 61))]  # fmt: skip
    assert found.knee == 75.0  # 59 ms ≤ 2 × 30 ms; 61 ms is past it


def test_rules_and_rates_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="windows"):
        search.Rule(windows=4, max_windows=3)
    with pytest.raises(ValueError, match="spread"):
        search.Rule(spread=0)
    with pytest.raises(ValueError, match="positive"):
        search.find_capacity(search.Search("grpc-tensor", "on", BOUND_MS, base=0.0), Deployment(1), [0.5], 1)
    with pytest.raises(ValueError, match="positive"):
        Arrivals(0)


def test_the_schedule_counts_the_requests_due_in_a_window_whether_or_not_they_were_sent():
    arrivals = Arrivals(20.0)  # evenly spaced: one every 50 ms from construction
    start = arrivals._due[0] + 0.025  # windows between due times: float sums never land on a boundary
    assert arrivals.due_between(start, start + 1.0) == 20
    assert arrivals.due_between(start + 1.0, start + 3.0) == 40
    poisson = Arrivals(20.0, poisson=True, seed=3)
    counts = [poisson.due_between(poisson._due[0] + s, poisson._due[0] + s + 4) for s in range(0, 400, 4)]
    assert sum(counts) / len(counts) == pytest.approx(80, rel=0.05)  # 80 ± 9 per 4 s window, on average 80
    assert min(counts) < 80 < max(counts)


# ------------------------------------------------------------------------------------ rate objectives


def _slo(tmp_path, text: str, scenarios=("grpc-tensor",)) -> slo.SloFile:
    path = tmp_path / "slo.toml"
    head = "[defaults]\nconcurrency = 4\np99_ms = 1000\nmin_images_per_second = 1\nmax_failure_ratio = 0\n"
    path.write_text(head + "min_batching_gain = 0.5\ntolerance = 0.2\n" + text)
    return slo.load(path, list(scenarios))


CAPACITY = Capacity("AMD EPYC", "AVX2", "resnet18", 1, "intra-op 2", 10.0,
                    {"serving_default": SignatureCapacity(10.0, {1: 100.0, 8: 130.0})})  # fmt: skip


def test_rate_objectives_come_as_a_rate_and_a_p99_bound_or_not_at_all(tmp_path):
    with pytest.raises(slo.SloError, match="lacks rate_p99_ms or rate_max_p99_over_batch_1"):
        _slo(tmp_path, "rate = 50\n")
    with pytest.raises(slo.SloError, match="lacks rate or rate_share_of_capacity"):
        _slo(tmp_path, "rate_p99_ms = 80\nmin_headroom = 1.2\n")
    with pytest.raises(slo.SloError, match="keep one"):
        _slo(tmp_path, "rate = 50\nrate_share_of_capacity = 0.5\nrate_p99_ms = 80\n")
    assert slo.rate_objective(_slo(tmp_path, ""), "grpc-tensor", None) is None

    absolute = slo.rate_objective(_slo(tmp_path, "rate = 50\nrate_p99_ms = 80\n"), "grpc-tensor", None)
    assert (absolute.rate, absolute.bound_ms) == (50.0, 80.0)
    relative = _slo(tmp_path, "rate_share_of_capacity = 0.5\nrate_max_p99_over_batch_1 = 8\nrate_p99_ms = 70\n")
    with pytest.raises(slo.SloError, match="not measured"):
        slo.rate_objective(relative, "grpc-tensor", None)
    resolved = slo.rate_objective(relative, "grpc-tensor", CAPACITY)
    assert (resolved.rate, resolved.bound_ms) == (65.0, 70.0)  # 0.5 × 130 img/s; the tighter of 8 × 10 ms and 70


def test_the_gate_on_rates_reads_the_production_rate_and_the_headroom(tmp_path):
    loaded = _slo(tmp_path, "rate = 50\nrate_p99_ms = 100\nmin_headroom = 1.2\n")

    def gated(edge: float, batching: str = "on") -> dict[str, tuple[str, bool]]:
        found = search.find_capacity(search.Search("grpc-tensor", batching, 100.0, base=100.0), Deployment(edge),
                                     [0.25, 0.5, 0.75, 1.0], bisections=2, also=[50.0])  # fmt: skip
        return {v.objective: (v.measured, v.ok) for v in slo.gate_rates(loaded, [found], None)}

    roomy = gated(edge=80.0)
    assert all(ok for _, ok in roomy.values()), roomy
    assert roomy["capacity at the p99 objective ÷ production rate"] == ("75.0 req/s = 1.500×", True)
    tight = gated(edge=55.0)  # the production rate passes, without the headroom
    assert tight["p99 at the production rate"][1] and not tight["capacity at the p99 objective ÷ production rate"][1]
    over = gated(edge=40.0)
    assert not over["p99 at the production rate"][1] and not over["steady (windows agree)"][1]
    assert not over["answered or in flight ÷ requests due"][1]
    off_only = gated(edge=80.0, batching="off")  # the gate judges batching on (or the server as configured)
    assert off_only == {"open-loop search with batching on": ("not run", False)}
