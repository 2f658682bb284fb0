"""The profile's convolutions one by one (pt2tf_convert.profile_table, standard library only, so tested here).

The profile itself runs both runtimes in tests/convert/test_convert.py; here, that convolutions are matched by
layer in order whatever order each runtime ran them in, that a layer only one runtime has is named, and that a
long network's table keeps the convolutions that cost TensorFlow most over ONNX Runtime.
"""

from __future__ import annotations

import json
import re

from pt2tf_convert import profile_table
from pt2tf_convert.profile_table import CONV_ROWS, conv_table, matched_convolutions


def _record(runtime: str, convolutions: list[tuple[str, float]]) -> dict:
    conv = sum(ms for _, ms in convolutions)
    summary = {
        "wall_ms": conv,
        "busy_ms": conv,
        "framework_overhead_ms": 0.0,
        "categories_ms": {"conv": conv},
        "ops_ms": {"Conv": conv},
        "ops_count": {"Conv": len(convolutions)},
        "convolutions": [{"name": f"n{i}", "layer": layer, "ms": ms} for i, (layer, ms) in enumerate(convolutions)],
    }
    return {"runtime": runtime, "cpu": "test CPU", "batches": {"1": summary}}


STEM, BLOCK, STRIDED, SHORTCUT = "7×7, 3→64, 112×112", "3×3, 64→64, 56×56", "3×3, 64→128, 28×28", "1×1, 64→128, 28×28"


def test_convolutions_of_one_layer_match_in_order_and_side_by_side_ones_in_either_order():
    reference = [{"layer": layer, "ms": ms} for layer, ms in ((STEM, 1.0), (BLOCK, 2.0), (BLOCK, 3.0), (STRIDED, 4.0))]
    reference.append({"layer": SHORTCUT, "ms": 5.0})
    other = [{"layer": layer, "ms": ms} for layer, ms in ((STEM, 10), (BLOCK, 20), (BLOCK, 30), (SHORTCUT, 50))]
    other += [{"layer": STRIDED, "ms": 40}, {"layer": "3×3, 9→9, 9×9", "ms": 60}]
    matched, unmatched = matched_convolutions(reference, other)
    assert matched == [10, 20, 30, 40, 50]
    assert unmatched == ["3×3, 9→9, 9×9"]
    missing, _ = matched_convolutions(reference, other[:3])
    assert missing == [10, 20, 30, None, None]


def test_the_table_gives_each_convolutions_ratio_and_the_sums(tmp_path):
    ort = _record("ONNX Runtime", [(STEM, 1.0), (BLOCK, 2.0), (STRIDED, 0.5), (SHORTCUT, 0.1)])
    tf = _record("TF", [(STEM, 1.5), (BLOCK, 2.0), (SHORTCUT, 0.3), (STRIDED, 0.5)])
    (tmp_path / "onnxruntime.json").write_text(json.dumps(ort))
    (tmp_path / "savedmodel-1.json").write_text(json.dumps(tf))
    assert profile_table.main([str(tmp_path)]) == 0
    text = (tmp_path / "profile.md").read_text()
    assert "| 1 | 7×7, 3→64, 112×112 | 1.000 | 1.500 (1.50×) |" in text
    assert "| 4 | 1×1, 64→128, 28×28 | 0.100 | 0.300 (3.00×) |" in text
    assert "|  | all 4 | **3.600** | **4.300 (1.19×)** |" in text
    assert "no counterpart" not in text


def test_a_convolution_one_runtime_lacks_is_named_and_its_column_has_no_sum():
    ort = _record("ONNX Runtime", [(STEM, 1.0), (BLOCK, 2.0)])
    tf = _record("TF", [(STEM, 1.5), ("1×1, 3→3, 224×224", 0.2)])
    text = conv_table([ort, tf], "1")
    assert "| 2 | 3×3, 64→64, 56×56 | 2.000 | – |" in text
    assert "|  | all 2 | **3.000** | **–** |" in text
    assert "- TF: 1 not in ONNX Runtime: 1×1, 3→3, 224×224" in text
    assert conv_table([ort], "1") is None  # nothing to put beside ONNX Runtime's


def test_a_long_network_keeps_the_convolutions_that_cost_most_over_onnx_runtime_in_network_order():
    layers = [f"3×3, {c}→{c}, 7×7" for c in range(1, CONV_ROWS + 11)]
    ort = _record("ONNX Runtime", [(layer, 1.0) for layer in layers])
    excess = {5: 9.0, 2: 8.0, 30: 7.0}  # convolution index → TensorFlow's ms (1.0 elsewhere)
    tf = _record("TF", [(layer, excess.get(i, 1.0 + i / 1000)) for i, layer in enumerate(layers)])
    text = conv_table([ort, tf], "1")
    numbers = [int(m) for m in re.findall(r"^\| (\d+) \|", text, re.MULTILINE)]
    assert len(numbers) == CONV_ROWS and numbers == sorted(numbers)
    assert {3, 6, 31} <= set(numbers) and 1 not in numbers  # the three slowest kept; the cheapest left out
    assert f"|  | the other {len(layers) - CONV_ROWS}, together | 10.000 |" in text
