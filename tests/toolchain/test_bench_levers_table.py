"""`nox -s bench-levers`' plan and its decision table (pt2tf_convert.bench_table, standard library only, so here).

The bench itself runs real TensorFlow and ONNX Runtime processes in tests/convert/test_convert.py; here, which
processes LEVERS and REPEATS ask for, in which order, and that a lever is said to beat the default only when the
ranges of their processes do not overlap (a shared machine moves one process's ratio by more than most levers
do). The records are written here, in the shape pt2tf_convert.bench writes them.
"""

from __future__ import annotations

import json

import pytest
from pt2tf_convert import bench_table
from pt2tf_convert.bench_table import SESSION_PATH, lever_plan, spread_table

LEVERS = ("default", "inter-op-1", "onednn-on", "xla")


def _process(variant: str, ort_ms: float, tf_ms: dict[int, float]) -> tuple[str, dict, list[dict]]:
    """A bench-levers record: ONNX Runtime at `ort_ms` a call at every batch, TensorFlow at `tf_ms[batch]`."""
    results = []
    for batch, ms in tf_ms.items():
        for runtime, signature, path, latency in (
            ("ONNX Runtime 1.23.0, same process", "-", "-", ort_ms),
            ("lane x (TF 2.19.0)", "serving_default", SESSION_PATH, ms),
        ):
            results.append({"runtime": runtime, "signature": signature, "path": path, "batch": batch,
                            "latency_ms_median": latency, "images_per_second": 1000 * batch / latency})  # fmt: skip
    machine = {"variant": variant, "onednn_on": variant == "onednn-on", "contraction": "oneDNN's sgemm", "cpu": "c"}
    return variant, machine, results


def test_the_plan_alternates_levers_repeat_by_repeat_and_keeps_each_levers_index():
    assert lever_plan(None, None, LEVERS) == [("0-default", "default"), ("1-inter-op-1", "inter-op-1"),
                                              ("2-onednn-on", "onednn-on"), ("3-xla", "xla")]  # fmt: skip
    assert lever_plan("default, onednn-on", "2", LEVERS) == [
        ("0-default-1", "default"),
        ("2-onednn-on-1", "onednn-on"),
        ("0-default-2", "default"),
        ("2-onednn-on-2", "onednn-on"),
    ]
    assert lever_plan("xla default", "1", LEVERS) == [("3-xla", "xla"), ("0-default", "default")]
    stems = [stem for stem, _ in lever_plan("default", "10", LEVERS)]
    assert stems == sorted(stems) and stems[0] == "0-default-01" and stems[-1] == "0-default-10"  # the order they ran


@pytest.mark.parametrize(
    ("levers", "repeats", "message"),
    [
        ("default bf17", None, r"LEVERS: unknown lever bf17; the levers are: default, inter-op-1, onednn-on, xla"),
        ("default default", None, r"names a lever twice; REPEATS=N runs each N times"),
        (None, "0", r"REPEATS: '0' is not a positive whole number"),
        (None, "two", r"REPEATS: 'two' is not a positive whole number"),
    ],
)
def test_a_wrong_plan_is_refused_naming_what_to_write(levers, repeats, message):
    with pytest.raises(ValueError, match=message):
        lever_plan(levers, repeats, LEVERS)


def test_each_process_is_measured_against_its_own_onnxruntime():
    # The second pair ran on a slower minute: ONNX Runtime beside it slowed as much, and the ratios did not move.
    runs = [
        _process("default", 30.0, {1: 45.0, 32: 40.0}),
        _process("onednn-on", 30.0, {1: 45.0, 32: 30.0}),
        _process("default", 60.0, {1: 90.0, 32: 80.0}),
        _process("onednn-on", 60.0, {1: 90.0, 32: 60.0}),
    ]
    text = spread_table(runs, SESSION_PATH)
    assert "| `default` | 2 | 0.75× | 1.50× | – | – |" in text
    assert "| `onednn-on` | 2 | 1.00× | 1.50× | better | within the spread |" in text


def test_a_lever_within_the_spread_of_the_default_is_not_chosen():
    # The 2026-12-02 AVX2 EPYC's alternation, in shape: oneDNN on looked better in one process, not beyond the range.
    runs = [
        _process("default", 30.0, {1: 57.0, 32: 41.0}),
        _process("onednn-on", 30.0, {1: 55.0, 32: 39.5}),
        _process("default", 30.0, {1: 48.0, 32: 42.0}),
        _process("onednn-on", 30.0, {1: 49.0, 32: 41.5}),
    ]
    text = spread_table(runs, SESSION_PATH)
    assert "| `default` | 2 | 0.71–0.73× | 1.60–1.90× | – | – |" in text
    assert "| `onednn-on` | 2 | 0.72–0.76× | 1.63–1.83× | within the spread | within the spread |" in text
    assert text.endswith("No lever beats `default` beyond the spread of processes: keep `default`.")


def test_a_lever_beyond_the_spread_wins_unless_it_costs_latency(tmp_path):
    runs = [
        _process("default", 30.0, {1: 45.0, 32: 40.0}),
        _process("onednn-on", 30.0, {1: 44.0, 32: 32.0}),  # throughput beyond the spread, latency within it
        _process("inter-op-1", 30.0, {1: 60.0, 32: 30.0}),  # throughput beyond, latency worse beyond: not chosen
        _process("default", 30.0, {1: 47.0, 32: 41.0}),
        _process("onednn-on", 30.0, {1: 46.0, 32: 33.0}),
        _process("inter-op-1", 30.0, {1: 62.0, 32: 31.0}),
    ]
    text = spread_table(runs, SESSION_PATH)
    assert "| `onednn-on` | 2 | 0.91–0.94× | 1.47–1.53× | better | within the spread |" in text
    assert "| `inter-op-1` | 2 | 0.97–1.00× | 2.00–2.07× | better | worse |" in text
    assert text.endswith("Beats `default` beyond the spread of processes: `onednn-on`.")
    # The report carries it under the per-process table, as `nox -s bench-levers` writes it.
    for index, (variant, machine, results) in enumerate(runs):
        path = tmp_path / "bench-levers" / f"{index}-{variant}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"machine": machine, "results": results}))
    assert bench_table.main([str(tmp_path / "bench-levers")]) == 0
    report = (tmp_path / "bench-levers.md").read_text()
    assert report.index("oneDNN in each TensorFlow process") < report.index("Each lever over its processes")


def test_better_latency_alone_wins_and_unknown_latency_never_does():
    runs = [
        _process("default", 30.0, {1: 60.0, 32: 40.0}),
        _process("inter-op-1", 31.0, {1: 40.0, 32: 41.0}),  # latency beyond the spread, throughput within it
        _process("xla", 30.0, {8: 100.0, 32: 20.0}),  # far faster, but no batch 1: its latency is not known
        _process("default", 31.0, {1: 57.0, 32: 40.0}),
        _process("inter-op-1", 30.0, {1: 39.0, 32: 39.0}),
        _process("xla", 30.0, {8: 100.0, 32: 21.0}),
    ]
    text = spread_table(runs, SESSION_PATH)
    assert "| `inter-op-1` | 2 | 0.76–0.77× | 1.29–1.30× | within the spread | better |" in text
    assert "| `xla` | 2 | 1.43–1.50× | – | better | – |" in text
    assert text.endswith("Beats `default` beyond the spread of processes: `inter-op-1`.")


def test_without_the_default_nothing_is_decided_and_the_report_says_what_to_add():
    runs = [_process(lever, 30.0, {1: 40.0, 32: 35.0}) for lever in ("onednn-on", "xla", "onednn-on", "xla")]
    assert spread_table(runs, SESSION_PATH).endswith("Decides nothing: `default` did not run; add it to LEVERS.")


def test_one_process_a_lever_decides_nothing():
    once = [_process("default", 30.0, {1: 45.0, 32: 40.0}), _process("onednn-on", 30.0, {1: 30.0, 32: 20.0})]
    assert spread_table(once, SESSION_PATH) == ""  # no spread to compare with: the report leaves the table out
    lone_default = [*once, _process("onednn-on", 30.0, {1: 31.0, 32: 21.0})]
    text = spread_table(lone_default, SESSION_PATH)
    assert text.endswith("Decides nothing: `default` needs two processes or more (REPEATS=2) to have a spread.")
    assert "| `onednn-on` | 2 | 1.43–1.50× | 1.00–1.03× | – | – |" in text
