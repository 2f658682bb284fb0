"""pt2tf_convert.onnx_rewrite: a Range bound Squeeze(Shape[k:k+1]) becomes a scalar Gather(Shape, k), and a tensor
computed from constants and fixed sizes alone becomes an initializer, and (for onnx-tf only) an omitted optional input
at the end of a node's inputs is dropped, each computing the same values in ONNX Runtime; what does not match (a size
of the batch axis among them) is left byte for byte; on the lanes whose converter mistranslates the pattern the
rewritten file converts where the original does not."""

from __future__ import annotations

from functools import partial

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper
from pt2tf_convert.onnx_rewrite import fold_constants, prepare, scalar_range_bounds, trailing_empty_inputs

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
def test_a_squeezed_shape_slice_as_range_limit_becomes_a_scalar_gather_with_the_same_values(lane, start, axes):
    model = _model(_squeezed_shape_slice(start, axes))
    rewritten, rewrite = prepare(model, lane.converter)
    assert rewrite.changed and rewrite.range_scalar_bounds == 1 and rewrite.nodes == ["node_Range_1"]
    ops = [node.op_type for node in rewritten.graph.node]
    assert ops == ["Shape", "Gather", "Range", "Flatten"], "the new Shape and Gather go just before their Range"
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


def test_a_slice_read_elsewhere_is_kept_for_its_other_reader(lane):
    model = _model(_squeezed_shape_slice(), extra_outputs=("size",))
    rewritten, rewrite = prepare(model, lane.converter)
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
                helper.make_node("Shape", ["input"], ["sizes"], start=0, end=2),
                helper.make_node("ReduceProd", ["sizes"], ["n"], keepdims=0),
            ],
            id="a product of two sizes, one the batch",
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
def test_what_does_not_match_is_left_byte_identical(lane, bound):
    model = _model(bound)
    before = model.SerializeToString()
    rewritten, rewrite = prepare(model, lane.converter)
    assert not rewrite.changed and rewrite.range_scalar_bounds == 0 and rewrite.nodes == []
    assert rewrite.folded_tensors == [] and rewrite.folded_nodes == 0
    assert rewritten is model and rewritten.SerializeToString() == before
    assert rewrite.summary() == "no ONNX rewrite applied (no pattern present)"
    for batch in BATCH_SIZES:
        _run(model, batch)  # a valid model that ONNX Runtime runs: the test is about the rewrite, not the file


def _only_the_rewritten_converts(model: onnx.ModelProto, tmp_path, error: str, converter: str = "onnx2tf"):
    """`converter` fails on `model` with `error`, and converts what prepare() makes of it: (converted, rewrite)."""
    from pt2tf_convert.backends import ConversionError, load_backend

    backend = load_backend(converter)
    original = tmp_path / "original.onnx"
    onnx.save(model, str(original))
    (tmp_path / "a").mkdir()
    with pytest.raises(ConversionError, match=error):
        backend.convert(model, original, tmp_path / "a")
    rewritten, rewrite = prepare(model, converter)
    path = tmp_path / "rewritten.onnx"
    onnx.save(rewritten, str(path))
    (tmp_path / "b").mkdir()
    return backend.convert(rewritten, path, tmp_path / "b"), rewrite


def test_on_onnx2tf_the_rewrite_is_what_lets_the_range_convert(lane, tmp_path):
    """onnx2tf reads Shape's start/end as axes (end=1 → 3 in NHWC): the original fails, the rewritten converts."""
    if lane.converter != "onnx2tf":
        pytest.skip(f"lane {lane.name} converts with {lane.converter}; the pattern is onnx2tf's to mistranslate")
    model = _model(_squeezed_shape_slice())
    converted, _ = _only_the_rewritten_converts(model, tmp_path, "Shape must be rank 0 but is rank 1")
    for batch in BATCH_SIZES:
        x = np.random.default_rng(batch).normal(size=(batch, 3, 4, 4)).astype(np.float32)
        outputs = [np.asarray(t) for t in converted.call(x.transpose(0, 2, 3, 1) if converted.layout == "NHWC" else x)]
        (steps,) = [t for t in outputs if t.dtype == np.int64]  # the Range's output (onnx2tf renames outputs)
        np.testing.assert_array_equal(steps, _run(model, batch)[1])


REGIONS = np.array([0, 0, 0, 1, 1, 2], np.float32)  # a region id per column, as Swin numbers its window slices


def _masked(sizes: list[onnx.NodeProto], extra_outputs: tuple[str, ...] = ()) -> onnx.ModelProto:
    """`output` = input + mask, where `sizes` makes the tensor `sizes` and the mask is built from it as Swin builds its
    shifted-window attention mask: zeros of that shape, a region id added per column, 0 where the id is 0 and -100
    elsewhere. With `sizes` fixed the mask is the same for every input."""
    nodes = [
        *sizes,
        helper.make_node(
            "ConstantOfShape", ["sizes"], ["zeros"], value=numpy_helper.from_array(np.zeros(1, np.float32))
        ),
        helper.make_node("Add", ["zeros", "regions"], ["ids"]),
        helper.make_node("Equal", ["ids", "zero"], ["same"]),
        helper.make_node("Where", ["same", "zero", "minus"], ["mask"]),
        helper.make_node("Add", ["input", "mask"], ["output"]),
    ]
    constants = {"regions": REGIONS, "zero": np.array(0.0, np.float32), "minus": np.array(-100.0, np.float32)}
    constants |= {"fixed": np.array([6, 6], np.int64)}
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(
        nodes,
        "masked",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 6, 6])],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, 6, 6]),
            *[helper.make_tensor_value_info(name, TensorProto.FLOAT, [6, 6]) for name in extra_outputs],
        ],
        [numpy_helper.from_array(value, name) for name, value in constants.items() if name in used],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _run_masked(model: onnx.ModelProto, batch: int) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(batch).normal(size=(batch, 3, 6, 6)).astype(np.float32)
    return session.run(["output"], {"input": x})[0]


FIXED_SIZES = [
    pytest.param([helper.make_node("Shape", ["input"], ["sizes"], start=2)], id="Shape(input)[2:], sizes fixed"),
    pytest.param([helper.make_node("Shape", ["input"], ["sizes"], start=-2)], id="Shape(input)[-2:]"),
    pytest.param(
        [helper.make_node("Constant", [], ["sizes"], value=numpy_helper.from_array(np.array([6, 6], np.int64)))],
        id="a Constant shape, as Swin's",
    ),
    pytest.param([helper.make_node("Identity", ["fixed"], ["sizes"])], id="from an initializer"),
]


@pytest.mark.parametrize("sizes", FIXED_SIZES)
def test_a_mask_built_from_fixed_sizes_becomes_an_initializer_with_the_same_values(lane, sizes):
    model = _masked(sizes)
    before = model.SerializeToString()
    rewritten, rewrite = prepare(model, lane.converter)
    assert model.SerializeToString() == before
    assert rewrite.changed and rewrite.folded_tensors == ["mask"] and rewrite.folded_nodes == 5
    assert [node.op_type for node in rewritten.graph.node] == ["Add"]
    # Only the mask is left: what only its subgraph read (regions, zero, minus, the sizes) went with it.
    assert [i.name for i in rewritten.graph.initializer] == ["mask"]
    mask = numpy_helper.to_array(rewritten.graph.initializer[0])
    np.testing.assert_array_equal(mask, np.broadcast_to(np.where(REGIONS == 0, 0.0, -100.0), (6, 6)))
    assert "1 constant tensor(s) folded into initializers, 5 node(s) removed (mask)" in rewrite.summary()
    for batch in BATCH_SIZES:
        np.testing.assert_array_equal(_run_masked(rewritten, batch), _run_masked(model, batch))


def test_only_the_fixed_part_of_a_shape_with_the_batch_in_it_is_folded(lane):
    """Concat(Shape(input)[:1], Shape(input)[1:]): the sizes after the batch are fixed and become an initializer; the
    batch's size stays computed, so the mask still takes every batch size."""
    model = _masked(
        [
            helper.make_node("Shape", ["input"], ["batch_size"], start=0, end=1),
            helper.make_node("Shape", ["input"], ["fixed_sizes"], start=1),
            helper.make_node("Concat", ["batch_size", "fixed_sizes"], ["sizes"], axis=0),
        ]
    )
    rewritten, rewrite = prepare(model, lane.converter)
    assert rewrite.folded_tensors == ["fixed_sizes"] and rewrite.folded_nodes == 1
    (fixed,) = [i for i in rewritten.graph.initializer if i.name == "fixed_sizes"]
    np.testing.assert_array_equal(numpy_helper.to_array(fixed), [3, 6, 6])
    ops = [node.op_type for node in rewritten.graph.node]
    assert ops == ["Shape", "Concat", "ConstantOfShape", "Add", "Equal", "Where", "Add"]
    for batch in BATCH_SIZES:
        np.testing.assert_array_equal(_run_masked(rewritten, batch), _run_masked(model, batch))


BATCH_DEPENDENT_OR_NOT_CONSTANT = [
    pytest.param([helper.make_node("Shape", ["input"], ["sizes"])], id="Shape(input), the batch among them"),
    pytest.param([helper.make_node("Shape", ["input"], ["sizes"], start=-4)], id="Shape(input)[-4:], the batch"),
    pytest.param(
        [
            helper.make_node("Shape", ["input"], ["all"]),
            helper.make_node("Identity", ["all"], ["sizes"]),
        ],
        id="the batch, through an Identity",
    ),
    pytest.param(
        [
            helper.make_node("RandomUniformLike", ["fixed"], ["drawn"], dtype=TensorProto.FLOAT, high=1.0),
            helper.make_node("Cast", ["drawn"], ["cast"], to=TensorProto.INT64),
            helper.make_node("Add", ["cast", "fixed"], ["sizes"]),
        ],
        id="a random draw, different on every run",
    ),
]


@pytest.mark.parametrize("sizes", BATCH_DEPENDENT_OR_NOT_CONSTANT)
def test_what_depends_on_the_batch_or_a_random_draw_is_not_folded(lane, sizes):
    model = _masked(sizes)
    before = model.SerializeToString()
    for rewrite_function in (fold_constants, partial(prepare, converter=lane.converter)):
        rewritten, rewrite = rewrite_function(model)
        assert not rewrite.changed and rewrite.folded_tensors == [] and rewrite.folded_nodes == 0
        assert rewritten is model and rewritten.SerializeToString() == before


def test_an_initializer_that_is_also_a_graph_input_is_a_default_and_not_folded(lane):
    """An initializer listed among the graph's inputs can be fed at run time: what it computes is not constant."""
    model = _masked([helper.make_node("Identity", ["fixed"], ["sizes"])])
    model.graph.input.append(helper.make_tensor_value_info("fixed", TensorProto.INT64, [2]))
    onnx.checker.check_model(model, full_check=True)
    before = model.SerializeToString()
    rewritten, rewrite = prepare(model, lane.converter)
    assert not rewrite.changed and rewritten is model and model.SerializeToString() == before


def test_a_constant_graph_output_stays_the_output_of_its_node(lane):
    model = _masked(FIXED_SIZES[0].values[0], extra_outputs=("mask",))
    before = model.SerializeToString()
    rewritten, rewrite = prepare(model, lane.converter)
    assert not rewrite.changed and rewritten is model and model.SerializeToString() == before


def test_a_tensor_over_the_size_limit_stays_computed(lane, monkeypatch):
    """The 6×6 float mask is 144 bytes: with the limit below that, nothing is written into the file."""
    import pt2tf_convert.onnx_rewrite as onnx_rewrite

    model = _masked(FIXED_SIZES[0].values[0])
    before = model.SerializeToString()
    monkeypatch.setattr(onnx_rewrite, "FOLD_LIMIT_BYTES", 143)
    rewritten, rewrite = prepare(model, lane.converter)
    assert not rewrite.changed and rewritten is model and model.SerializeToString() == before
    monkeypatch.setattr(onnx_rewrite, "FOLD_LIMIT_BYTES", 144)
    assert prepare(model, lane.converter)[1].folded_tensors == ["mask"]


def test_a_graph_with_nothing_to_fold_is_left_byte_identical(lane):
    """A convolution of the input whose weight is an Identity of an initializer (the TorchScript exporter's shared
    weight) and whose bias is a Constant: stored values already, nothing to fold."""
    weight = np.random.default_rng(0).normal(size=(2, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["bias"], value=numpy_helper.from_array(np.ones(2, np.float32))),
        helper.make_node("Identity", ["weight"], ["shared"]),
        helper.make_node("Conv", ["input", "shared", "bias"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 6, 6])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2, 6, 6])],
        [numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    before = model.SerializeToString()
    for rewrite_function in (fold_constants, partial(prepare, converter=lane.converter)):
        rewritten, rewrite = rewrite_function(model)
        assert rewritten is model and rewritten.SerializeToString() == before and not rewrite.changed


@pytest.mark.parametrize("sizes", [FIXED_SIZES[0], FIXED_SIZES[2]])
def test_on_onnx2tf_folding_is_what_lets_a_mask_from_fixed_sizes_convert(lane, tmp_path, sizes):
    """onnx2tf computes the mask itself to an array that it cannot lay out against the NHWC input (or that has no
    shape): the original fails, the folded one converts with ONNX Runtime's values at every batch size."""
    if lane.converter != "onnx2tf":
        pytest.skip(f"lane {lane.name} converts with {lane.converter}; the failure is onnx2tf's")
    model = _masked(sizes)
    converted, rewrite = _only_the_rewritten_converts(
        model, tmp_path, r"sng_Add_5|'NoneType' object has no attribute 'shape'"
    )
    assert rewrite.folded_tensors == ["mask"]
    for batch in BATCH_SIZES:
        x = np.random.default_rng(batch).normal(size=(batch, 3, 6, 6)).astype(np.float32)
        output = np.asarray(converted.call(x.transpose(0, 2, 3, 1) if converted.layout == "NHWC" else x))
        if output.shape == (batch, 6, 6, 3):  # onnx2tf 1.28 leaves a 4-D output NHWC; 1.29 gives back ONNX's NCHW
            output = output.transpose(0, 3, 1, 2)
        np.testing.assert_allclose(output, _run_masked(model, batch), rtol=0, atol=1e-6)


def _padded(pads: list[int], constant: str | None) -> onnx.ModelProto:
    """`output` = Pad(input, pads[, constant]) at opset 13, as the TorchScript exporter writes Swin-T's window
    padding (`constant` "": the constant value left out by name); the pads are computed from the input's shape, as
    Swin's are."""
    nodes = [
        helper.make_node("Shape", ["input"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
        helper.make_node("Mul", ["batch", "nothing"], ["no_pad"]),  # 0 at run time: pads from sizes, as in Swin
        helper.make_node("Add", ["no_pad", "fixed_pads"], ["pads"]),
        helper.make_node("Pad", ["input", "pads"] + ([] if constant is None else [constant]), ["output"]),
    ]
    constants = {
        "zero": np.array([0], np.int64),
        "one": np.array([1], np.int64),
        "nothing": np.array([0], np.int64),
        "fixed_pads": np.array(pads, np.int64),
        "value": np.array(2.5, np.float32),
    }
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(
        nodes,
        "padded",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 6, 6])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [numpy_helper.from_array(value, name) for name, value in constants.items() if name in used],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


PADS = [0, 0, 0, 0, 0, 0, 1, 2]  # Swin pads the window's last two axes at their ends


def test_a_trailing_omitted_input_is_dropped_for_onnx_tf_with_the_same_values():
    model = _padded(PADS, "")
    before = model.SerializeToString()
    rewritten, rewrite = prepare(model, "onnx-tf")
    assert model.SerializeToString() == before
    assert rewrite.changed and rewrite.trailing_empty_inputs == 1 and rewrite.folded_tensors == []
    (pad,) = [node for node in rewritten.graph.node if node.op_type == "Pad"]
    assert list(pad.input) == ["input", "pads"]
    assert "1 trailing omitted optional input(s)" in rewrite.summary()
    for batch in BATCH_SIZES:
        np.testing.assert_array_equal(_run_masked(rewritten, batch), _run_masked(model, batch))


@pytest.mark.parametrize("converter", ["onnx2tf", "no-such-converter"])
def test_other_converters_read_the_omitted_input_as_it_is(converter):
    model = _padded(PADS, "")
    before = model.SerializeToString()
    rewritten, rewrite = prepare(model, converter)
    assert not rewrite.changed and rewritten is model and rewritten.SerializeToString() == before


@pytest.mark.parametrize("constant", [None, "value"], ids=["no constant input", "a constant value"])
def test_a_node_without_trailing_omitted_inputs_is_left_byte_identical(constant):
    model = _padded(PADS, constant)
    before = model.SerializeToString()
    for rewrite_function in (trailing_empty_inputs, partial(prepare, converter="onnx-tf")):
        rewritten, rewrite = rewrite_function(model)
        assert not rewrite.changed and rewritten is model and rewritten.SerializeToString() == before


def test_on_onnx_tf_dropping_the_omitted_input_is_what_lets_the_pad_convert(lane, tmp_path):
    """onnx-tf 1.10's Pad handler looks a third input up by its name, "" (KeyError): the original fails, the
    rewritten converts, with ONNX Runtime's values at every batch size."""
    if lane.converter != "onnx-tf":
        pytest.skip(f"lane {lane.name} converts with {lane.converter}; the failure is onnx-tf's")
    model = _padded(PADS, "")
    converted, rewrite = _only_the_rewritten_converts(model, tmp_path, r"KeyError", converter="onnx-tf")
    assert rewrite.trailing_empty_inputs == 1
    for batch in BATCH_SIZES:
        x = np.random.default_rng(batch).normal(size=(batch, 3, 6, 6)).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(converted.call(x)), _run_masked(model, batch))
