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
