"""A second architecture on this lane, for real: MobileNetV3-Small (HardSwish, squeeze-excitation gates, depthwise
convolutions), exported afresh by nox (PT2TF_TEST_ARCHITECTURE_ARTIFACTS), converted, verified and served in process."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import tensorflow as tf
from pt2tf_convert import warmup
from pt2tf_convert.artifacts import ArtifactsError, check_exported_model, load_reference, photo_bytes
from pt2tf_convert.convert import MANIFEST_FILE
from pt2tf_convert.metrics import ROUNDING_FACTOR
from pt2tf_convert.signatures import contract_problems
from pt2tf_convert.verify import Thresholds, verify

ARCHITECTURE = "mobilenet_v3_small"


@pytest.fixture(scope="module")
def published(converted_architecture) -> tuple[Path, Path]:
    """nox's conversion of this lane's fresh export of it, under the export's model name."""
    return converted_architecture.parents[1], converted_architecture


def test_the_export_holds_operators_resnet18_lacks(architecture_artifacts):
    ops = {node.op_type for node in onnx.load(str(architecture_artifacts / "model.onnx")).graph.node}
    assert "HardSigmoid" in ops and "Mul" in ops, f"squeeze-excitation gates: {sorted(ops)}"
    manifest = json.loads((architecture_artifacts / "export.json").read_text())
    assert manifest["model"] == ARCHITECTURE


def test_it_is_published_under_its_own_name_with_the_contract(published):
    models, version_dir = published
    assert sorted(p.relative_to(models).as_posix() for p in models.glob("*/*")) == [f"{ARCHITECTURE}/1"]
    assert contract_problems(tf.saved_model.load(str(version_dir))) == []
    manifest = json.loads((version_dir / "assets.extra" / MANIFEST_FILE).read_text())
    assert manifest["model_name"] == ARCHITECTURE and manifest["export"]["model"] == ARCHITECTURE
    assert manifest["export"]["preprocessing"]["source"] == "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    logs = warmup.read_warmup(version_dir / "assets.extra" / warmup.WARMUP_FILE)
    assert {log.predict_log.request.model_spec.name for log in logs} == {ARCHITECTURE}


def test_predict_images_answers_the_photos_as_pytorch_does(published, architecture_artifacts):
    _, version_dir = published
    ref = load_reference(architecture_artifacts)
    photos = photo_bytes(ref)
    out = tf.saved_model.load(str(version_dir)).signatures["predict_images"](image_bytes=tf.constant(photos))
    torch_top1 = ref["logits"][ref["kinds"] == "photo"].argmax(axis=1)
    np.testing.assert_array_equal(out["classes"].numpy()[:, 0], torch_top1)
    assert [row[0].decode() for row in out["labels"].numpy()] == [str(ref["labels"][c]) for c in torch_top1]


def test_verify_passes_with_parity_and_preprocessing_measured_for_this_model(
    published, lane, architecture_artifacts, tmp_path
):
    models, _ = published
    report = verify(lane.name, architecture_artifacts, models, None, tmp_path, None, Thresholds())
    assert report["failures"] == [] and report["passed"]
    assert report["model"] == report["architecture"] == ARCHITECTURE
    assert report["answers"]["distinct_top1"] >= 12
    for pairs in report["parity"].values():
        assert all(metrics["top1_agreement"] == 1.0 for metrics in pairs.values())
    pre = report["preprocessing"]
    assert pre["spec"]["source"] == "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    assert pre["pixel_max_abs"] <= Thresholds().preprocess_max_abs and pre["probabilities"]["top1_agreement"] == 1.0
    # Its own float32 rounding (PyTorch float32 vs float64) is what widened the bounds past ResNet18's, if anything.
    bounds = report["parity_bounds"]
    assert bounds["pytorch_float32_rounding"] > 0
    assert bounds["max_abs"] == max(Thresholds().max_abs, ROUNDING_FACTOR * bounds["pytorch_float32_rounding"])
    markdown = (tmp_path / "parity.md").read_text()
    assert f"mobilenet_v3_small version 1 ({ARCHITECTURE})" in markdown
    # MobileNetV3 has no stochastic depth: no Range over the batch for the ONNX rewrite to take, and its export
    # computes nothing from constants alone; the report says so.
    assert report["rewrites"]["onnx"] == {
        "range_scalar_bounds": 0,
        "nodes": [],
        "folded_tensors": [],
        "folded_nodes": 0,
        "trailing_empty_inputs": 0,
    }
    assert "made initializers" not in markdown and "omitted optional input" not in markdown
    assert "- ONNX, before the converter: 0 Range bound(s) made scalar." in markdown
    assert report["calibration"]["grey_level_margin_ratio"] >= 4 and "Seeded classifier: own classes" in markdown


def test_another_models_name_is_refused_naming_the_export(architecture_artifacts):
    with pytest.raises(ArtifactsError, match=f"holds an export of {ARCHITECTURE}; export resnet18 first"):
        check_exported_model(architecture_artifacts, "resnet18")
    check_exported_model(architecture_artifacts, ARCHITECTURE)


# The ops optimize() rewrites: transposes sunk and cancelled, Pad folded into the convolution or the max-pool,
# Add → BiasAdd, one-part Splits and Identities bypassed, the input's shape pinned (EnsureShape). Every other
# op that computes on the input must stay, count for count.
REWRITTEN_OPS = {
    "Transpose",
    "Pad",
    "PadV2",
    "MirrorPad",
    "Add",
    "AddV2",
    "BiasAdd",
    "Identity",
    "Split",
    "EnsureShape",
}


def _data_path_ops(graph_def, input_name: str) -> Counter:
    """Op counts of the nodes that compute on `input_name` (not the weight- or shape-side ones optimize folds)."""
    consumers: dict[str, list] = {}
    for node in graph_def.node:
        for name in node.input:
            consumers.setdefault(name.lstrip("^").split(":")[0], []).append(node)
    seen, todo = set(), [input_name.split(":")[0]]
    while todo:
        for node in consumers.get(todo.pop(), []):
            if node.name not in seen:
                seen.add(node.name)
                todo.append(node.name)
    return Counter(node.op for node in graph_def.node if node.name in seen and node.op not in REWRITTEN_OPS)


def test_the_graph_rewrites_keep_parity_and_leave_what_they_do_not_rewrite(lane, architecture_artifacts, tmp_path):
    """optimize() on a non-ResNet graph: the same answers as the converter's graph against ONNX Runtime, no more
    transposes than before, and every op on the input's path that it has no rewrite for kept, count for count."""
    from pt2tf_convert.backends import load_backend
    from pt2tf_convert.metrics import compare
    from pt2tf_convert.onnx_rewrite import prepare
    from pt2tf_convert.optimize import freeze, optimize
    from pt2tf_convert.runtimes import onnxruntime_session, run_onnxruntime
    from pt2tf_convert.support import check_supported

    backend = load_backend(lane.converter)
    onnx_path = architecture_artifacts / "model.onnx"
    prepared, _ = prepare(check_supported(onnx_path, lane.name, backend), lane.converter)
    converted = backend.convert(prepared, onnx_path, tmp_path)
    optimized, rewrite = optimize(converted)
    ref = load_reference(architecture_artifacts)
    inputs = ref["inputs"] if converted.layout == "NCHW" else ref["inputs"].transpose(0, 2, 3, 1)
    # optimize()'s call imports a GraphDef: it runs traced, as the serving signatures run it.
    before = np.concatenate([tf.function(converted.call)(tf.constant(c)).numpy() for c in np.split(inputs, 4)])
    after = np.concatenate([tf.function(optimized.call)(tf.constant(c)).numpy() for c in np.split(inputs, 4)])
    ort = run_onnxruntime(onnxruntime_session(onnx_path), ref["inputs"], 8)
    rounding = json.loads((architecture_artifacts / "export.json").read_text())["pytorch_float32_rounding"]
    parity_before, parity_after = compare(ort, before), compare(ort, after)
    # Parity unchanged: the rewrites reorder float sums at most, an error of the model's own rounding's size.
    assert abs(parity_after["max_abs"] - parity_before["max_abs"]) <= rounding, (parity_before, parity_after)
    assert compare(before, after)["max_abs"] <= ROUNDING_FACTOR * rounding
    assert parity_after["top1_agreement"] == parity_before["top1_agreement"] == 1.0
    transposes = rewrite.ops_before.get("Transpose", 0), rewrite.ops_after.get("Transpose", 0)
    assert transposes[0] >= transposes[1], f"transposes {transposes[0]} → {transposes[1]}"
    frozen, input_name, _ = freeze(converted)
    spec = tf.TensorSpec([None, *inputs.shape[1:]], tf.float32)
    traced = tf.function(optimized.call).get_concrete_function(spec)
    kept_before = _data_path_ops(frozen, input_name)
    kept_after = _data_path_ops(traced.graph.as_graph_def(), traced.inputs[0].name)
    assert kept_before and kept_after == kept_before, "an op optimize() has no rewrite for changed on the input's path"


def test_the_served_graph_fuses_each_convolutions_bias_and_hard_swish(lane, published):
    """In a Session as TF Serving runs it, Grappler's remapper fuses every convolution's bias and each hard-swish
    after a convolution into it: onnx2tf's x * relu6(x + 3) * 1/6 is a form its _FusedHardSwish matches. A depthwise
    convolution's bias left as an AddV2 made TensorFlow 2.19's remapper fail its whole pass: nothing fused at all."""
    from pt2tf_serve.config import load_platform_config
    from pt2tf_serve.cpu import onednn_report
    from pt2tf_serve.servable import Servable

    if lane.converter != "onnx2tf":
        pytest.skip(f"{lane.converter} writes hard-swish in another form")
    _, version_dir = published
    platform_config = Path(__file__).parents[2] / "docker" / "config" / "platform.config"
    config = load_platform_config(platform_config, os.cpu_count() or 1).session_config
    servable = Servable(ARCHITECTURE, 1, version_dir, config, ["serve"])
    try:
        signature = servable.signature_defs["serving_default"]
        feed, fetch = signature.inputs["input"].name, signature.outputs["output"].name
        shape = [dim.size for dim in signature.inputs["input"].tensor_shape.dim]
        metadata = tf.compat.v1.RunMetadata()
        options = tf.compat.v1.RunOptions(output_partition_graphs=True)
        servable.session.run(fetch, {feed: np.zeros([1, *shape[1:]], np.float32)}, options, metadata)
    finally:
        servable.close()
    nodes = [node for graph in metadata.partition_graphs for node in graph.node]
    fused = Counter(
        tuple(s.decode() for s in node.attr["fused_ops"].list.s) for node in nodes if "fused_ops" in node.attr
    )
    ops = Counter(node.op for node in nodes)
    if not onednn_report()[0]:
        # Eigen's kernels (TensorFlow's default on the AVX2 kind, or TF_ENABLE_ONEDNN_OPTS=0): the remapper fuses a
        # convolution with its bias (and a Relu) but has no hard-swish and no depthwise fusion. Every one of the 23
        # regular convolutions with a bias is fused (a failed pass would fuse none); the 19 hard-swishes stay, and
        # the 11 depthwise convolutions keep their BiasAdd.
        assert sum(fused.values()) == 23 and not any("_FusedHardSwish" in f for f in fused), (fused, ops)
        assert ops["Relu6"] == 19 and ops["DepthwiseConv2dNative"] == ops["BiasAdd"] == 11, (fused, ops)
        return
    # 19 hard-swishes: 18 after a convolution fuse, the classifier's (after a MatMul) has no fusion to go into
    assert fused[("BiasAdd", "_FusedHardSwish")] == 18 and ops["Relu6"] == 1, (fused, ops)
    # the squeeze-excitation convolutions have no bias; every other one carries it
    assert sum(fused.values()) >= 34 and ops["AddV2"] <= 10, (fused, ops)
