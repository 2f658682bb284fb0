"""nox -s models' table (pt2tf_convert.model_matrix): standard library only, so it is tested in the tools env.

The stages it runs are tested in their own suites; here, that a failing stage becomes a cell naming the stage
and the error's line, and that the table shows every cell.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
from pt2tf_convert import model_matrix
from pt2tf_convert.model_matrix import LaneSpec, error_line, markdown, run_cell


def test_the_error_line_is_the_tools_error_or_the_tracebacks_exception():
    tool = "  → converting …\nerror: lane 'onnx-tf' has no conversion for op Einsum at opset 13\n"
    assert error_line(tool) == "lane 'onnx-tf' has no conversion for op Einsum at opset 13"
    crashed = subprocess.run([sys.executable, "-c", "import json; json.loads('{')"], capture_output=True, text=True)
    assert error_line(crashed.stderr).startswith("json.decoder.JSONDecodeError: Expecting property name")
    assert error_line("") == "no output"


def test_a_converters_traceback_in_one_message_is_cut_to_its_last_line():
    raw = (
        "onnx-tf 1.10.0 failed on /tmp/m.onnx: BackendIsNotSupposedToImplementIt('in user code:\\n\\n    File "
        '"handler.py", line 61, in handle  *\\n        raise X\\n\\n    BackendIsNotSupposedToImplementIt: '
        "Unsqueeze version 13 is not implemented.\\n')"
    )
    assert model_matrix.headline(raw) == (
        "onnx-tf 1.10.0 failed on /tmp/m.onnx: "
        "BackendIsNotSupposedToImplementIt: Unsqueeze version 13 is not implemented."
    )
    onnx2tf = (
        "onnx2tf 1.29.24 failed on /tmp/pt2tf-models-x/export-dynamo-18/model.onnx (ValueError('Exception encountered "
        'when calling layer "tf.range" (type TFOpLambda).\\n\\nShape must be rank 0 but is rank 1\\n\\t for '
        "\\'limit\\'\\n\\nCall arguments received:\\n  • name=\\'node_Range_212\\''))"
    )
    assert model_matrix.headline(onnx2tf) == (
        "onnx2tf 1.29.24 failed on model.onnx: Shape must be rank 0 but is rank 1 (ONNX node Range_212)"
    )
    assert model_matrix.headline("plain message") == "plain message"


def test_a_stage_that_fails_for_real_is_named_with_its_error(tmp_path):
    # The tools env has no numpy or torch: the real export command fails as an export stage would.
    lane = LaneSpec("onnx2tf", "dynamo", 18, "onnx2tf", sys.executable, sys.executable)
    env = {"PYTHONPATH": str(model_matrix.Path(model_matrix.__file__).parents[1])}
    cell = run_cell("mobilenet_v3_small", lane, tmp_path, {}, env)
    assert (cell["stage"], cell["passed"]) == ("export", False)
    assert cell["error"] == "ModuleNotFoundError: No module named 'numpy'"
    assert "convert" not in cell["seconds"], "nothing runs after the failed stage"


def test_the_table_has_a_cell_per_model_and_lane():
    figures = {
        "savedmodel_vs_pytorch_max_abs": 3.1e-5,
        "savedmodel_vs_pytorch_max_rel": 5.6e-6,
        "savedmodel_vs_onnxruntime_max_abs": 4.7e-5,
        "top1_agreement": 1.0,
        "pytorch_float32_rounding": 5.2e-5,
        "distinct_top1": 14,
        "min_margin": 0.0149,
        "preprocessing": "bilinear 256→224",
        "preprocessing_pixel_max_abs": 0.018,
        "preprocessing_top1": 1.0,
        "failures": [],
    }
    cells = [
        {"model": "m", "lane": "a", "stage": "done", "passed": True, "error": None, "seconds": {}, "figures": figures},
        {"model": "m", "lane": "b", "stage": "convert", "passed": False, "error": "op Einsum | x", "seconds": {}},
    ]
    text = markdown(cells, ["a", "b", "c"], ["m"], "some CPU")
    row = next(line for line in text.splitlines() if line.startswith("| m | ✓"))
    assert "✓ 3.1e-05 abs, 5.6e-06 rel, top-1 100%; pre 0.018" in row
    assert "✗ **convert**: op Einsum \\| x" in row and row.endswith("| not run |")
    assert "CPU: some CPU." in text


def test_a_malformed_lane_is_refused():
    with pytest.raises(argparse.ArgumentTypeError, match="want name:exporter:opset"):
        LaneSpec.parse("onnx2tf:dynamo")
    assert json.loads(json.dumps(LaneSpec.parse("a:dynamo:18:onnx2tf:/p:/q").__dict__))["opset"] == 18


# A bench record as pt2tf_convert.bench writes it (--no-loaded --no-images): ONNX Runtime and the Session path.
BENCH = {
    "machine": {"onednn": "oneDNN on (avx512_vnni)"},
    "results": [
        {"runtime": "ONNX Runtime 1.23.0, same process", "signature": "-", "path": "-", "batch": 1,
         "images_per_second": 100.0, "latency_ms_median": 10.0, "rounds_images_per_second": [99.0, 100.0, 101.0]},
        {"runtime": "ONNX Runtime 1.23.0, same process", "signature": "-", "path": "-", "batch": 8,
         "images_per_second": 120.0, "latency_ms_median": 66.0, "rounds_images_per_second": [119.0, 120.0, 121.0]},
        {"runtime": "lane onnx2tf (TF 2.19.0)", "signature": "serving_default", "path": "Session (as TF Serving)",
         "batch": 1, "images_per_second": 80.0, "latency_ms_median": 12.5, "rounds_images_per_second": [80.0]},
        {"runtime": "lane onnx2tf (TF 2.19.0)", "signature": "serving_default", "path": "Session (as TF Serving)",
         "batch": 8, "images_per_second": 108.0, "latency_ms_median": 74.0, "rounds_images_per_second": [108.0]},
    ],
}  # fmt: skip


def test_the_session_figures_are_ratios_to_the_onnx_runtime_of_the_same_process():
    figures = model_matrix.session_figures(BENCH)
    assert (figures["best_batch"], figures["images_per_second"]) == (8, 108.0)
    assert (figures["onnxruntime_best_batch"], figures["onnxruntime_images_per_second"]) == (8, 120.0)
    assert figures["throughput_vs_onnxruntime"] == pytest.approx(0.9)
    assert figures["batch1_latency_vs_onnxruntime"] == pytest.approx(1.25)
    assert (figures["batch1_latency_ms"], figures["onnxruntime_batch1_latency_ms"]) == (12.5, 10.0)
    only_ort = {"results": BENCH["results"][:2]}
    with pytest.raises(ValueError, match="no Session and same-process ONNX Runtime rows"):
        model_matrix.session_figures(only_ort)


def test_a_stage_that_overruns_is_asked_to_stop_before_it_is_killed(tmp_path):
    # The serve stage stops its server when SIGTERM unwinds it; a SIGKILL straight away would leave the server.
    marker = tmp_path / "stopped"
    child = (
        "import signal, sys, time, pathlib\n"
        f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(marker)!r}).write_text('x'), sys.exit(1)))\n"
        "print('ready', flush=True)\ntime.sleep(60)\n"
    )
    ok, seconds, error = model_matrix._run(sys.executable, ["-c", child], {}, timeout=2)
    assert (ok, error) == (False, "timed out after 2 s")
    assert marker.read_text() == "x", "the stage never got SIGTERM"
    assert seconds < 30


def test_time_this_process_spent_stopped_does_not_count_against_a_stage(monkeypatch):
    # On a shared machine the whole run may be SIGSTOPped for minutes: the clock jumps, the stage did not overrun.
    real = model_matrix.time.monotonic
    calls = [0]

    def clock() -> float:
        calls[0] += 1
        return real() + (3600.0 if calls[0] >= 3 else 0.0)  # an hour passes between two polls

    monkeypatch.setattr(model_matrix.time, "monotonic", clock)
    ok, _, error = model_matrix._run(sys.executable, ["-c", "import time; time.sleep(5)"], {}, timeout=60)
    assert (ok, error) == (True, "")


RECORDED = model_matrix.Path(__file__).parents[1] / "data" / "models" / "results.json"


def _recorded() -> list[dict]:
    return json.loads(RECORDED.read_text())["cells"]


def test_the_recorded_matrix_renders_every_cell_in_every_table():
    cells = _recorded()
    lanes = list(dict.fromkeys(c["lane"] for c in cells))
    models = list(dict.fromkeys(c["model"] for c in cells))
    text = markdown(cells, lanes, models, "recorded CPU")
    sections = text.split("\n## ")
    assert [s.splitlines()[0] for s in sections[1:]] == [
        "Speed",
        "Transposes left after optimize.py's rewrites",
        "Per cell",
    ]
    for section in sections[:3]:  # parity, speed and transposes: a row per model, a non-empty cell per lane
        rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| model")]
        assert [row.split(" | ")[0][2:] for row in rows] == models
        for row in rows:
            values = [v.strip() for v in row.strip("|").split(" | ")[1:]]
            assert len(values) == len(lanes) and all(values), row


def _cell(passed=True, stage="done", error=None, speed=None, rewrite=True) -> dict:
    figures = {
        "savedmodel_vs_pytorch_max_abs": 3.1e-5, "savedmodel_vs_pytorch_max_rel": 5.6e-6,
        "savedmodel_vs_onnxruntime_max_abs": 4.7e-5, "top1_agreement": 1.0, "pytorch_float32_rounding": 5.2e-5,
        "distinct_top1": 14, "min_margin": 0.0149, "preprocessing": "bilinear 256→224",
        "preprocessing_pixel_max_abs": 0.018, "preprocessing_top1": 1.0, "failures": [],
    }  # fmt: skip
    cell = {"model": "m", "lane": "a", "stage": stage, "passed": passed, "error": error, "seconds": {}}
    if stage not in ("export", "convert"):
        cell["figures"] = figures
    if rewrite and stage not in ("export", "convert"):
        cell["graph_rewrite"] = {"ops_before": {"Transpose": 52}, "ops_after": {"Transpose": 2}}
    return cell | ({"speed": speed} if speed is not None else {})


def test_the_speed_and_transposes_tables_show_figures_failed_stages_and_skips():
    served = {"images_per_second": 91.4, "p50_ms": 170.0, "callers": 16, "mean_processed_batch": 7.5}
    measured = {"session": model_matrix.session_figures(BENCH), "served": served}
    bench_failed = {"session": {"stage": "bench", "error": "MemoryError: <oom> | big"}, "served": served}
    cells = [
        _cell(speed=measured) | {"lane": "a"},
        _cell(speed=bench_failed) | {"lane": "b"},
        _cell(speed={"skipped": "--no-speed"}) | {"lane": "c"},
        _cell(False, "convert", "op Einsum") | {"lane": "d"},
        _cell(False, "verify", "max abs 1e-2 > 1e-4", speed=None) | {"lane": "e"},
    ]
    text = markdown(cells, ["a", "b", "c", "d", "e", "f"], ["m"], "some CPU")
    speed = text.split("## Speed")[1].split("## ")[0]
    row = next(line for line in speed.splitlines() if line.startswith("| m |"))
    values = [v.strip() for v in row.strip("|").split(" | ")[1:]]
    assert values == [
        "0.90× / 1.25×; 91.4 img/s",
        "✗ **bench**: MemoryError: <oom> \\| big; 91.4 img/s",
        "not measured (--no-speed)",
        "– (convert failed)",
        "– (verify failed)",
        "not run",
    ]
    assert "over 3 rounds" not in speed, "no cell carries settings: the text does not invent them"
    moved = text.split("## Transposes")[1].split("## ")[0]
    row = next(line for line in moved.splitlines() if line.startswith("| m |"))
    assert [v.strip() for v in row.strip("|").split(" | ")[1:]] == [
        "52 → 2", "52 → 2", "52 → 2", "– (convert failed)", "52 → 2", "not run"
    ]  # fmt: skip
    details = next(line for line in text.splitlines() if line.startswith("| m | a | pass"))
    assert "Session batch 8 108.0 img/s vs ONNX Runtime batch 8 120.0" in details
    assert "batch 1 12.5 ms vs 10.0 ms" in details
    assert "served 91.4 img/s at 16 callers (0.85× the Session's best), p50 170 ms, mean batch 7.5 |" in details
    retaken = _cell(speed=measured | {"served": served | {"discarded_stopped_measurements": 2}})
    details = next(line for line in markdown([retaken], ["a"], ["m"], "x").splitlines() if "| m | a | pass" in line)
    assert "p50 170 ms, mean batch 7.5 (2 stopped measurement(s) discarded) |" in details


def test_a_cell_whose_onnx_file_was_rewritten_says_so_in_its_details():
    # What convert's manifest records (onnx_rewrite): ConvNeXt-Tiny's stochastic-depth Range on the dynamo export.
    rewritten = _cell() | {"onnx_rewrite": {"range_scalar_bounds": 1, "nodes": ["node_Range_212"]}}
    as_is = _cell() | {"lane": "b", "onnx_rewrite": {"range_scalar_bounds": 0, "nodes": []}}
    before = _cell() | {"lane": "c"}  # converted before onnx_rewrite existed: no record
    # Swin-T's shifted-window masks folded into initializers, and its Range.
    folded = {"range_scalar_bounds": 1, "nodes": ["node_Range_3710"], "folded_tensors": ["mask_a", "mask_b"]}
    both = _cell() | {"lane": "d", "onnx_rewrite": folded | {"folded_nodes": 57}}
    as_is_now = _cell() | {"lane": "e", "onnx_rewrite": {**folded, "range_scalar_bounds": 0, "folded_tensors": []}}
    # Swin-T on onnx-tf: its folded constants, and the window Pads' omitted constant value dropped.
    padded = _cell() | {
        "lane": "f",
        "onnx_rewrite": {**folded, "folded_nodes": 57, "range_scalar_bounds": 0, "trailing_empty_inputs": 15},
    }
    lanes = ["a", "b", "c", "d", "e", "f"]
    text = markdown([rewritten, as_is, before, both, as_is_now, padded], lanes, ["m"], "some CPU")
    rows = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| m | ")}
    rewrite = "ONNX rewrite: 1 Range bound(s) made scalar (node_Range_212); transposes 52→2;"
    assert f"| pass | –, –, –, –, – | {rewrite}" in rows["a"]
    assert "| ONNX rewrite: 2 constant tensor(s) folded, 57 node(s) removed, 1 Range bound(s) made scalar " in rows["d"]
    assert not any("ONNX rewrite" in rows[lane] for lane in "bce")
    assert (
        "| ONNX rewrite: 2 constant tensor(s) folded, 57 node(s) removed, 15 trailing omitted input(s) dropped;"
        in (rows["f"])
    )
    assert "| transposes 52→2; float32 rounding" in rows["b"]


def test_the_html_page_holds_the_tables_and_the_chart_or_why_there_is_none():
    cells = _recorded()
    lanes = list(dict.fromkeys(c["lane"] for c in cells))
    models = list(dict.fromkeys(c["model"] for c in cells))
    cells[-1] = cells[-1] | {"error": "MemoryError: <oom> at `node`"}  # markup in an error is text on the page
    text = markdown(cells, lanes, models, "recorded CPU")
    png = b"\x89PNG\r\n\x1a\n fake bytes"
    page = model_matrix.page(text, png, "the caption")
    assert page.count("<table>") == 4 and page.count("<h2>") == 3
    assert "MemoryError: &lt;oom&gt; at <code>node</code>" in page and "<oom>" not in page
    assert f"base64,{model_matrix.base64.b64encode(png).decode()}" in page
    assert page.index("<figure>") < page.index("<h2>Speed</h2>"), "the chart sits under the parity table"
    for model in models:
        assert f"<td>{model}</td>" in page
    failed = next(c for c in cells if not c["passed"])
    assert f"<b>{failed['stage']}</b>" in page
    without = model_matrix.page(text, None, "No chart: matplotlib failed")
    assert "<figure>" not in without and "<p class='note'>No chart: matplotlib failed</p>" in without


def test_the_chart_stage_fails_with_its_reason_in_an_env_without_matplotlib(tmp_path):
    env = {"PYTHONPATH": str(model_matrix.Path(model_matrix.__file__).parents[1])}
    png, note = model_matrix.chart(RECORDED, sys.executable, tmp_path, env)
    assert png is None
    assert note == "No chart: pt2tf_convert.matrix_chart failed: ModuleNotFoundError: No module named 'matplotlib'"
    assert model_matrix.chart(RECORDED, None, tmp_path, env) == (
        None,
        "No chart: no --chart-python (an env with matplotlib) was given.",
    )


def test_a_partial_run_keeps_the_other_models_cells_and_writes_three_reports(tmp_path, monkeypatch):
    out = tmp_path / "models"
    out.mkdir()
    kept = [c for c in _recorded() if c["model"] != "mobilenet_v3_small"]
    (out / "results.json").write_text(json.dumps({"cpu": "before", "cells": kept}))
    monkeypatch.setenv("PYTHONPATH", str(model_matrix.Path(model_matrix.__file__).parents[1]))
    lane = f"onnx2tf:dynamo:18:onnx2tf:{sys.executable}:{sys.executable}"
    # The tools env has no numpy: this run's export fails, as a real export stage would, and speed is skipped.
    assert model_matrix.main(["--out", str(out), "--lane", lane, "--models", "mobilenet_v3_small", "--no-speed"]) == 0
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert cells[: len(kept)] == kept
    assert [(c["model"], c["stage"]) for c in cells[len(kept) :]] == [("mobilenet_v3_small", "export")]
    assert "mobilenet_v3_small" in (tmp_path / "models.md").read_text()
    html_page = (tmp_path / "models.html").read_text()
    assert "No chart: no --chart-python" in html_page and "<td>mobilenet_v3_small</td>" in html_page
    assert not [p.name for p in tmp_path.rglob("*.partial")], "temporary files are renamed into place"


def test_one_lane_run_again_for_one_model_keeps_that_models_other_lanes(tmp_path, monkeypatch):
    out = tmp_path / "models"
    out.mkdir()
    recorded = _recorded()
    (out / "results.json").write_text(json.dumps({"cpu": "before", "cells": recorded}))
    monkeypatch.setenv("PYTHONPATH", str(model_matrix.Path(model_matrix.__file__).parents[1]))
    lane = f"onnx2tf:dynamo:18:onnx2tf:{sys.executable}:{sys.executable}"
    assert model_matrix.main(["--out", str(out), "--lane", lane, "--models", "mobilenet_v3_small", "--no-speed"]) == 0
    cells = {(c["model"], c["lane"]): c for c in json.loads((out / "results.json").read_text())["cells"]}
    before = {(c["model"], c["lane"]): c for c in recorded}
    assert set(cells) == set(before), "the same cells: one replaced, none dropped"
    assert cells["mobilenet_v3_small", "onnx2tf"]["stage"] == "export", (
        "the one run again (the tools env cannot export)"
    )
    assert {k: v for k, v in cells.items() if k != ("mobilenet_v3_small", "onnx2tf")} == {
        k: v for k, v in before.items() if k != ("mobilenet_v3_small", "onnx2tf")
    }
    header = next(line for line in (tmp_path / "models.md").read_text().splitlines() if line.startswith("| model |"))
    stored = [(c["model"], c["lane"]) for c in json.loads((out / "results.json").read_text())["cells"]]
    assert stored == [(c["model"], c["lane"]) for c in recorded], "stored in the tables' order, which the chart takes"
    assert (
        header == "| model | " + " | ".join(f"`{lane}`" for lane in dict.fromkeys(c["lane"] for c in recorded)) + " |"
    )
