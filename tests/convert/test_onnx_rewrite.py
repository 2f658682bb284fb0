"""pt2tf_convert.onnx_rewrite: a Range bound Squeeze(Shape[k:k+1]) becomes a scalar Gather(Shape, k), computing the
same values in ONNX Runtime; what does not match is left byte for byte; on onnx2tf lanes the rewritten file converts."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper
from pt2tf_convert.onnx_rewrite import prepare, scalar_range_bounds

BATCH_SIZES = (1, 3, 8)


def _model(bound: list[onnx.NodeProto], extra_outputs: tuple[str, ...] = ()) -> onnx.ModelProto:
    """Outputs `flat` (the input flattened) and `steps` = Range(0, n, 1), where `bound` makes the tensor `n` from
    `input`: a Range over one of the input's sizes, as ConvNeXt's stochastic-depth Range is over the batch."""
    nodes = [
        *bound,
        helper.make_node("Range", ["start", "n", "delta"], ["steps"], name="node_Range_1"),
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
    ]
    constants = {"start": np.array(0, np.int64), "delta": np.array(1, np.int64), "zero": np.array(0, np.int64)}
    constants["axes"] = np.array([0], np.int64)
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(
        nodes,
        "range_over_a_size",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [
            helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["batch", 48]),
            helper.make_tensor_value_info("steps", TensorProto.INT64, [None]),
            *[helper.make_tensor_value_info(name, TensorProto.INT64, [None]) for name in extra_outputs],
        ],
        [numpy_helper.from_array(value, name) for name, value in constants.items() if name in used],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _squeezed_shape_slice(start: int = 0, axes: bool = False) -> list[onnx.NodeProto]:
    """The dynamo exporter's size of axis `start`: Squeeze(Shape(input, start, start + 1))."""
    return [
        helper.make_node("Shape", ["input"], ["size"], start=start, end=start + 1, name="node_Shape_0"),
        helper.make_node("Squeeze", ["size", "axes"] if axes else ["size"], ["n"], name="node_sym_size_int_1"),
    ]


def _run(model: onnx.ModelProto, batch: int) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(batch).normal(size=(batch, 3, 4, 4)).astype(np.float32)
    return session.run(None, {"input": x})


def _rank(model: onnx.ModelProto, name: str) -> int:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    (info,) = [v for v in inferred.graph.value_info if v.name == name]
    return len(info.type.tensor_type.shape.dim)


@pytest.mark.parametrize(
    ("start", "axes"), [(0, False), (0, True), (1, False)], ids=["batch", "batch, Squeeze axes [0]", "channels"]
)
def test_a_squeezed_shape_slice_as_range_limit_becomes_a_scalar_gather_with_the_same_values(start, axes):
    model = _model(_squeezed_shape_slice(start, axes))
    rewritten, rewrite = prepare(model)
    assert rewrite.changed and rewrite.range_scalar_bounds == 1 and rewrite.nodes == ["node_Range_1"]
    ops = [node.op_type for node in rewritten.graph.node]
    assert "Squeeze" not in ops and ops.count("Gather") == 1 and ops.count("Shape") == 1
    (shape,) = [node for node in rewritten.graph.node if node.op_type == "Shape"]
    assert not shape.attribute, "the new Shape reads every size; the Gather picks one"
    (range_node,) = [node for node in rewritten.graph.node if node.op_type == "Range"]
    assert _rank(rewritten, range_node.input[1]) == 0
    for batch in BATCH_SIZES:
        before, after = _run(model, batch), _run(rewritten, batch)
        for a, b in zip(after, before, strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(after[1], np.arange((batch, 3)[start]))
    assert "1 Range bound(s)" in rewrite.summary()


def test_the_input_model_is_not_modified():
    model = _model(_squeezed_shape_slice())
    before = model.SerializeToString()
    scalar_range_bounds(model)
    assert model.SerializeToString() == before


def test_a_slice_read_elsewhere_is_kept_for_its_other_reader():
    model = _model(_squeezed_shape_slice(), extra_outputs=("size",))
    rewritten, rewrite = prepare(model)
    assert rewrite.range_scalar_bounds == 1
    ops = [node.op_type for node in rewritten.graph.node]
    assert ops.count("Shape") == 2 and "Squeeze" not in ops  # the slice stays: the graph's third output reads it
    for batch in BATCH_SIZES:
        for before, after in zip(_run(model, batch), _run(rewritten, batch), strict=True):
            np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize(
    "bound",
    [
        pytest.param(
            [
                helper.make_node("Shape", ["input"], ["sizes"], start=2, end=4),
                helper.make_node("ReduceProd", ["sizes"], ["n"], keepdims=0),
            ],
            id="a product of two sizes",
        ),
        pytest.param(
            [helper.make_node("Shape", ["input"], ["sizes"]), helper.make_node("Gather", ["sizes", "zero"], ["n"])],
            id="already a scalar Gather",
        ),
        pytest.param(
            [
                helper.make_node("Shape", ["input"], ["sizes"], start=-4, end=-3),
                helper.make_node("Squeeze", ["sizes"], ["n"]),
            ],
            id="negative start, whose axis depends on the rank",
        ),
        pytest.param(
            [
                helper.make_node("Shape", ["input"], ["sizes"], start=0, end=1),
                helper.make_node("ReduceMax", ["sizes"], ["n"], keepdims=0),
            ],
            id="a reduction, not a Squeeze",
        ),
        pytest.param(
            [helper.make_node("Constant", [], ["n"], value=numpy_helper.from_array(np.array(5, np.int64)))],
            id="a constant limit",
        ),
    ],
)
def test_what_does_not_match_is_left_byte_identical(bound):
    model = _model(bound)
    before = model.SerializeToString()
    rewritten, rewrite = prepare(model)
    assert not rewrite.changed and rewrite.range_scalar_bounds == 0 and rewrite.nodes == []
    assert rewritten is model and rewritten.SerializeToString() == before
    assert rewrite.summary() == "no ONNX rewrite applied (no pattern present)"
    for batch in BATCH_SIZES:
        _run(model, batch)  # a valid model that ONNX Runtime runs: the test is about the rewrite, not the file


def test_on_onnx2tf_the_rewrite_is_what_lets_the_range_convert(lane, tmp_path):
    """onnx2tf reads Shape's start/end as axes (end=1 → 3 in NHWC): the original fails, the rewritten converts."""
    if lane.converter != "onnx2tf":
        pytest.skip(f"lane {lane.name} converts with {lane.converter}; the pattern is onnx2tf's to mistranslate")
    from pt2tf_convert.backends import ConversionError, load_backend

    backend = load_backend("onnx2tf")
    model = _model(_squeezed_shape_slice())
    original = tmp_path / "original.onnx"
    onnx.save(model, str(original))
    (tmp_path / "a").mkdir()
    with pytest.raises(ConversionError, match="Shape must be rank 0 but is rank 1"):
        backend.convert(model, original, tmp_path / "a")
    rewritten, _ = prepare(model)
    path = tmp_path / "rewritten.onnx"
    onnx.save(rewritten, str(path))
    (tmp_path / "b").mkdir()
    converted = backend.convert(rewritten, path, tmp_path / "b")
    for batch in BATCH_SIZES:
        x = np.random.default_rng(batch).normal(size=(batch, 3, 4, 4)).astype(np.float32)
        outputs = [np.asarray(t) for t in converted.call(x.transpose(0, 2, 3, 1) if converted.layout == "NHWC" else x)]
        (steps,) = [t for t in outputs if t.dtype == np.int64]  # the Range's output (onnx2tf renames outputs)
        np.testing.assert_array_equal(steps, _run(model, batch)[1])
