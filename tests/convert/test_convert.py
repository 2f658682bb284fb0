"""Convert + verify on one lane, for real: the lane's converter, TensorFlow and ONNX Runtime."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import tensorflow as tf
from onnx import helper, numpy_helper
from pt2tf_convert import warmup
from pt2tf_convert.artifacts import load_reference
from pt2tf_convert.backends import ConversionError, load_backend
from pt2tf_convert.convert import MANIFEST_FILE, convert
from pt2tf_convert.repository import RepositoryError, staged_version, versions
from pt2tf_convert.signatures import CONTRACT, _resized_size, contract_problems
from pt2tf_convert.support import check_supported
from pt2tf_convert.verify import Thresholds, verify
from tensorflow.core.framework import graph_pb2


@pytest.fixture(scope="module")
def published(converted) -> tuple[Path, Path]:
    """nox's conversion of this lane's fresh export into an empty repository (the convert command as a user runs it)."""
    return converted.parents[1], converted


def test_conversion_publishes_version_1_with_the_contract(published):
    models, version_dir = published
    assert sorted(p.relative_to(models).as_posix() for p in models.glob("*/*")) == ["resnet18/1"]  # no staging left
    loaded = tf.saved_model.load(str(version_dir))
    assert contract_problems(loaded) == []
    assert set(loaded.signatures) == set(CONTRACT)
    for name in CONTRACT:
        _, inputs = loaded.signatures[name].structured_input_signature
        assert all(spec.shape[0] is None for spec in inputs.values()), f"{name}: batch axis must be None"
    assert not [p.name for p in (models / "resnet18").iterdir() if p.name.startswith(".")], "staging left behind"


def test_warmup_records_cover_both_signatures_and_batch_sizes(published):
    _, version_dir = published
    logs = warmup.read_warmup(version_dir / "assets.extra" / warmup.WARMUP_FILE)
    seen = sorted(
        (
            log.predict_log.request.model_spec.signature_name,
            tf.make_ndarray(next(iter(log.predict_log.request.inputs.values()))).shape[0],
        )
        for log in logs
    )
    assert seen == [("predict_images", 1), ("predict_images", 4), ("serving_default", 1), ("serving_default", 4)]
    assert all(log.predict_log.request.model_spec.name == "resnet18" for log in logs)


def test_manifest_names_lane_tools_source_and_parity(published, lane, artifacts):
    _, version_dir = published
    manifest = json.loads((version_dir / "assets.extra" / MANIFEST_FILE).read_text())
    export = json.loads((artifacts / "export.json").read_text())
    assert manifest["lane"] == lane.name and manifest["converter"] == lane.converter
    assert manifest["source_onnx_sha256"] == export["onnx_sha256"] and manifest["source_onnx_is_the_export"]
    assert manifest["versions"]["tensorflow"] == tf.__version__
    assert manifest["parity"]["savedmodel_vs_pytorch"]["max_abs"] <= 1e-4


def test_predict_images_returns_labels_and_top5(published, artifacts):
    _, version_dir = published
    ref = np.load(artifacts / "reference.npz")
    offsets = ref["photo_offsets"]
    photos = [ref["photo_bytes"][offsets[i] : offsets[i + 1]].tobytes() for i in range(3)]
    out = tf.saved_model.load(str(version_dir)).signatures["predict_images"](image_bytes=tf.constant(photos))
    assert out["probabilities"].shape == (3, 1000) and out["classes"].shape == (3, 5)
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    labels = ref["labels"]
    for row_classes, row_labels in zip(out["classes"].numpy(), out["labels"].numpy(), strict=True):
        assert [labels[c] for c in row_classes] == [x.decode() for x in row_labels]
    assert np.all(np.diff(out["scores"].numpy(), axis=1) <= 0)
    # Every answer says which weights it comes from: seeded labels are not ImageNet predictions.
    description = json.loads((artifacts / "export.json").read_text())["weights_description"]
    assert description.startswith("seeded weights: labels are not ImageNet predictions")
    assert [w.decode() for w in out["weights"].numpy()] == [description] * 3


def test_verify_passes_and_writes_the_report(published, lane, artifacts, tmp_path):
    models, _ = published
    result = verify(lane.name, artifacts, models, "resnet18", tmp_path, None, Thresholds())
    assert result["failures"] == [] and result["warnings"] == []
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report == json.loads(json.dumps(result))
    assert set(report["parity"]) == {"1", "3", "8"}
    answers = report["answers"]
    assert answers["distinct_top1"] >= 12 and answers["min_margin"] > 0
    assert [row["savedmodel_class"] for row in answers["per_input"]] == answers["top1"]
    assert report["weights"]["seeded"] and report["weights"]["sha256"] is None
    assert report["parity"]["1"]["pytorch_vs_savedmodel"]["max_abs"] <= 1e-4
    assert report["passed"] and (tmp_path / "parity_errors.png").stat().st_size > 10_000
    assert "predict_images" in (tmp_path / "saved_model_cli.txt").read_text()
    markdown = (tmp_path / "parity.md").read_text()
    assert "Verdict: **PASS**" in markdown
    assert "Weights: seeded weights: labels are not ImageNet predictions" in markdown
    assert f"{answers['distinct_top1']} distinct top-1 classes among 16 inputs" in markdown
    assert f"| chelsea | photo | {answers['top1'][9]} " in markdown


def _collapsed(artifacts: Path, out: Path) -> Path:
    """A copy of the export whose 8 random tensors are one tensor 8 times: a reference whose
    answers collapse to a few classes, yet whose logits are PyTorch's own (parity still holds)."""
    shutil.copytree(artifacts, out)
    with np.load(out / "reference.npz") as archive:
        ref = {key: archive[key] for key in archive.files}
    random = ref["kinds"] == "random"
    ref["inputs"][random] = ref["inputs"][random][0]
    ref["logits"][random] = ref["logits"][random][0]
    np.savez_compressed(out / "reference.npz", **ref)
    return out


@pytest.mark.default_lane_only("verify's discrimination check")
def test_verify_fails_on_seeded_answers_that_collapse(published, lane, artifacts, tmp_path):
    models, _ = published
    collapsed = _collapsed(artifacts, tmp_path / "artifacts")
    result = verify(lane.name, collapsed, models, "resnet18", tmp_path / "reports", None, Thresholds())
    distinct = result["answers"]["distinct_top1"]
    assert distinct <= 9
    assert result["failures"] == [
        f"the reference answers cannot discriminate: {distinct} distinct top-1 classes among 16 inputs (< 12), "
        "so agreement on them proves little; export again to calibrate the seeded classifier (nox -s export)"
    ], "only the discrimination check fails: every parity check still passes"
    assert "Verdict: **FAIL**" in (tmp_path / "reports" / "parity.md").read_text()


def test_verify_names_a_version_without_its_manifest(published, lane, artifacts, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(published[0], models)
    (models / "resnet18" / "1" / "assets.extra" / MANIFEST_FILE).unlink()  # not published by our convert
    with pytest.raises(SystemExit, match=r"pt2tf_manifest\.json is missing: .* was not published by this project"):
        verify(lane.name, artifacts, models, "resnet18", tmp_path / "reports", None, Thresholds())


@pytest.mark.default_lane_only("verify's discrimination check")
def test_collapsed_answers_from_a_users_weights_only_warn(published, lane, artifacts, tmp_path):
    collapsed = _collapsed(artifacts, tmp_path / "artifacts")
    models = tmp_path / "models"
    shutil.copytree(published[0], models)
    # The version's manifest is what says which weights it holds: here, a user's file.
    manifest_path = models / "resnet18" / "1" / "assets.extra" / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["export"].update(weights="/data/finetuned.pt", weights_sha256="ab" * 32)
    manifest["export"]["weights_description"] = f"/data/finetuned.pt (sha256 {'ab' * 32})"
    manifest_path.write_text(json.dumps(manifest))
    result = verify(lane.name, collapsed, models, "resnet18", tmp_path / "reports", None, Thresholds())
    assert result["failures"] == [] and len(result["warnings"]) == 1
    assert "cannot discriminate" in result["warnings"][0] and "user's weights" in result["warnings"][0]
    markdown = (tmp_path / "reports" / "parity.md").read_text()
    assert "Verdict: **PASS**" in markdown and "## Warnings" in markdown
    assert f"Weights: /data/finetuned.pt (sha256 {'ab' * 32})." in markdown


@pytest.mark.default_lane_only("verify's parity checks against a changed weight")
def test_a_weight_perturbed_after_export_fails_verify(lane, artifacts, tmp_path):
    broken = tmp_path / "artifacts"
    shutil.copytree(artifacts, broken)
    model = onnx.load(str(broken / "model.onnx"))
    # The classifier's weight matrix: perturbing it changes logits but not the graph.
    weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)) if len(t.dims) == 2 else 0)
    values = numpy_helper.to_array(weight).copy()
    values[0, :] += 0.05
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(model, str(broken / "model.onnx"))
    models = tmp_path / "models"
    version_dir = convert(lane.name, lane.converter, broken, models, "resnet18")  # TF still matches ONNX Runtime
    manifest = json.loads((version_dir / "assets.extra" / MANIFEST_FILE).read_text())
    assert manifest["source_onnx_is_the_export"] is False
    failed = verify(lane.name, broken, models, "resnet18", tmp_path / "reports", None, Thresholds())["failures"]
    assert any(line.startswith("batch 1, pytorch vs savedmodel: max abs error") for line in failed), failed
    assert any("pytorch vs onnxruntime" in line for line in failed)
    assert not any("onnxruntime vs savedmodel" in line for line in failed)
    assert "Verdict: **FAIL**" in (tmp_path / "reports" / "parity.md").read_text()


def _tiny_model(op_type: str, domain: str = "", opset: int = 13, ir_version: int = 8) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["batch", 4])
    node = helper.make_node(op_type, ["input"], ["output"], domain=domain)
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(helper.make_graph([node], "tiny", [x], [y]), opset_imports=imports)
    model.ir_version = ir_version
    return model


def _first_unsupported_standard_op(backend, opset: int) -> str:
    for schema in sorted(onnx.defs.get_all_schemas(), key=lambda s: s.name):
        usable = schema.domain == "" and schema.since_version <= opset and not schema.deprecated
        if usable and backend.unsupported_ops(_tiny_model(schema.name, opset=opset)):
            return schema.name
    pytest.skip("this converter supports every standard op at this opset")


def test_an_unconvertible_op_fails_naming_the_op(lane, tmp_path):
    backend = load_backend(lane.converter)
    op = _first_unsupported_standard_op(backend, lane.opset)
    path = tmp_path / "unsupported.onnx"
    onnx.save(_tiny_model(op, opset=lane.opset), str(path))
    with pytest.raises(ConversionError, match=rf"has no conversion for op {op} at opset {lane.opset}"):
        check_supported(path, lane.name, backend)


def test_an_op_version_the_converter_lacks_is_named(lane, tmp_path):
    # Scatter's version 11 (opset 11 deprecated it for ScatterElements): onnx-tf 1.10 has version 9's handler only,
    # and would fail mid-conversion on it.
    if lane.converter != "onnx-tf":
        pytest.skip(f"lane {lane.name} converts with {lane.converter}; the example is onnx-tf's gap")
    path = tmp_path / "scatter.onnx"
    onnx.save(_tiny_model("Scatter", opset=13), str(path))
    with pytest.raises(ConversionError, match=r"has no conversion for op Scatter v11 at opset 13"):
        check_supported(path, lane.name, load_backend(lane.converter))


def test_squeeze_13_passes_the_pre_check_on_every_lane(lane, tmp_path):
    # Squeeze took its axes as an input from opset 13: onnx2tf has its own, the onnx-tf backend adds one.
    path = tmp_path / "squeeze.onnx"
    onnx.save(_tiny_model("Squeeze", opset=13), str(path))
    assert check_supported(path, lane.name, load_backend(lane.converter)).graph.node[0].op_type == "Squeeze"


def _converts_as_onnx_runtime_computes_it(lane, tmp_path, model, handler, sizes: tuple, batches: tuple) -> None:
    """`model` through the pre-check and the onnx-tf backend: the SavedModel gives ONNX Runtime's shape and values
    for inputs [batch, *sizes], and the version_13 the backend added to `handler` is gone after the conversion."""
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    backend = load_backend(lane.converter)
    converted = backend.convert(check_supported(path, lane.name, backend), path, tmp_path)
    assert not hasattr(handler, "version_13"), "the added handler is onnx-tf's only while a conversion runs"
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in batches:
        x = np.random.default_rng(batch).normal(size=(batch, *sizes)).astype(np.float32)
        (expected,) = session.run(["output"], {"input": x})
        got = np.asarray(converted.call(tf.constant(x)))
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


def _squeezed(axes: list[int] | None, axes_from: str) -> onnx.ModelProto:
    """`output` = Squeeze(input [batch, 1, 3, 1], axes) at opset 13, the axes `axes_from` an initializer, a Constant
    node (the TorchScript exporter's way: 24 in ViT-B/16's attention) or absent (every axis of size 1 goes)."""
    nodes, initializers, inputs = [], [], ["input"]
    gone = {1, 3} if axes is None else {axis % 4 for axis in axes}
    kept = [size for axis, size in enumerate(["batch", 1, 3, 1]) if axis not in gone]
    if axes_from == "initializer":
        initializers.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
        inputs.append("axes")
    elif axes_from == "Constant":
        nodes.append(
            helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array(axes, np.int64)))
        )
        inputs.append("axes")
    nodes.append(helper.make_node("Squeeze", inputs, ["output"], name="the_squeeze"))
    graph = helper.make_graph(
        nodes,
        "squeezed",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 1, 3, 1])],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, kept)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize(
    ("axes", "axes_from"),
    [
        ([1], "Constant"),
        ([-1], "Constant"),
        ([1, 3], "Constant"),
        ([-3, -1], "initializer"),
        ([3], "initializer"),
        (None, "absent"),
    ],
    ids=lambda value: str(value),
)
def test_squeeze_13_converts_as_onnx_runtime_computes_it(lane, tmp_path, axes, axes_from):
    """onnx-tf 1.10 has no Squeeze 13; the backend adds it: the SavedModel gives ONNX Runtime's shape and values,
    a negative axis counted from the end of the input as ONNX counts it."""
    if lane.converter != "onnx-tf":
        pytest.skip(f"lane {lane.name} converts with {lane.converter}, which has its own Squeeze 13")
    from onnx_tf.handlers.backend.squeeze import Squeeze

    _converts_as_onnx_runtime_computes_it(lane, tmp_path, _squeezed(axes, axes_from), Squeeze, (1, 3, 1), (2, 3))


def _unsqueezed_shape(shape: list, axes: list[int]) -> list:
    """ONNX's Unsqueeze of `shape`: a 1 at each axis, negative axes counted from the end of the output."""
    rank = len(shape) + len(axes)
    ones = {axis % rank for axis in axes}
    sizes = iter(shape)
    return [1 if axis in ones else next(sizes) for axis in range(rank)]


def _unsqueezed(axes: list[int], axes_from: str) -> onnx.ModelProto:
    """`output` = Unsqueeze(Flatten(input), axes) at opset 13 (axes an input), the axes `axes_from` an initializer, a
    Constant node (the TorchScript exporter's way, 489 times in Swin-T), or the input's own shape (a run-time value)."""
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1)]
    initializers = []
    if axes_from == "initializer":
        initializers.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
    elif axes_from == "Constant":
        nodes.append(
            helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array(axes, np.int64)))
        )
    else:
        initializers.append(numpy_helper.from_array(np.array([len(axes)], np.int64), "count"))
        nodes += [
            helper.make_node("Shape", ["flat"], ["sizes"]),
            helper.make_node("Slice", ["sizes", "count", "count"], ["nothing"]),  # empty: axes = [] + constant part
            helper.make_node("Concat", ["nothing", "constant_axes"], ["axes"], axis=0),
        ]
        initializers.append(numpy_helper.from_array(np.array(axes, np.int64), "constant_axes"))
    nodes.append(helper.make_node("Unsqueeze", ["flat", "axes"], ["output"], name="the_unsqueeze"))
    graph = helper.make_graph(
        nodes,
        "unsqueezed",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 2, 3])],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, _unsqueezed_shape(["batch", 6], axes))],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("axes_from", ["Constant", "initializer"])
@pytest.mark.parametrize(
    "axes", [[0], [-1], [1], [2], [0, -1], [-1, -2], [-4, 2], [3, 0, 2]], ids=lambda axes: f"axes{axes}"
)
def test_unsqueeze_13_with_constant_axes_converts_as_onnx_runtime_computes_it(lane, tmp_path, axes, axes_from):
    """onnx-tf 1.10 has no Unsqueeze 13; the backend adds it: the pre-check lets it through, and the SavedModel gives
    ONNX Runtime's shape and values, a negative axis counted from the end of the output as ONNX counts it."""
    if lane.converter != "onnx-tf":
        pytest.skip(f"lane {lane.name} converts with {lane.converter}, which has its own Unsqueeze 13")
    from onnx_tf.handlers.backend.unsqueeze import Unsqueeze

    _converts_as_onnx_runtime_computes_it(lane, tmp_path, _unsqueezed(axes, axes_from), Unsqueeze, (2, 3), (1, 3))


def test_unsqueeze_13_with_axes_computed_at_run_time_is_refused_before_converting(lane, tmp_path):
    path = tmp_path / "unsqueeze.onnx"
    onnx.save(_unsqueezed([0], "run time"), str(path))
    if lane.converter == "onnx-tf":
        with pytest.raises(ConversionError, match=r"no conversion for op Unsqueeze v13 with axes computed at run time"):
            check_supported(path, lane.name, load_backend(lane.converter))
    else:
        check_supported(path, lane.name, load_backend(lane.converter))


def test_squeeze_13_with_axes_computed_at_run_time_is_refused_before_converting(lane, tmp_path):
    model = _squeezed([1], "Constant")
    # the axes become Shape(input)[1:2] = [1]: the same value, computed at run time
    del model.graph.node[0]
    model.graph.initializer.extend(
        [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in [("one", 1), ("two", 2)]]
    )
    model.graph.node.insert(0, helper.make_node("Shape", ["input"], ["sizes"]))
    model.graph.node.insert(1, helper.make_node("Slice", ["sizes", "one", "two"], ["axes"]))
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "squeeze.onnx"
    onnx.save(model, str(path))
    if lane.converter == "onnx-tf":
        with pytest.raises(ConversionError, match=r"no conversion for op Squeeze v13 with axes computed at run time"):
            check_supported(path, lane.name, load_backend(lane.converter))
    else:
        check_supported(path, lane.name, load_backend(lane.converter))


def test_a_custom_domain_op_fails_naming_it(lane, tmp_path):
    path = tmp_path / "custom.onnx"
    onnx.save(_tiny_model("Frobnicate", domain="com.example", opset=lane.opset), str(path))
    with pytest.raises(ConversionError, match=r"op com\.example::Frobnicate"):
        check_supported(path, lane.name, load_backend(lane.converter))


def test_an_ir_version_too_new_names_the_lanes_that_take_it(lane, tmp_path):
    path = tmp_path / "new.onnx"
    onnx.save(_tiny_model("Relu", opset=13, ir_version=lane.max_ir_version + 1), str(path))
    with pytest.raises(ConversionError, match=rf"IR version {lane.max_ir_version + 1}; lane '{lane.name}'") as info:
        check_supported(path, lane.name, load_backend(lane.converter))
    if lane.name == "onnx-tf":
        assert "lanes that take IR 10 / opset 13: onnx2tf, latest" in str(info.value)


def test_missing_and_non_onnx_files_are_refused(lane, tmp_path):
    backend = load_backend(lane.converter)
    with pytest.raises(ConversionError, match="no such file"):
        check_supported(tmp_path / "absent.onnx", lane.name, backend)
    garbage = tmp_path / "photo.onnx"
    garbage.write_bytes(b"\xff\xd8\xff\xe0 this is a JPEG, not a protobuf" * 10)
    with pytest.raises(ConversionError, match="is not an ONNX"):
        check_supported(garbage, lane.name, backend)


@pytest.mark.default_lane_only("convert's publishing")
def test_an_interrupted_conversion_leaves_no_version_directory(lane, artifacts, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(warmup, "write_warmup", interrupted)
    models = tmp_path / "models"
    with pytest.raises(KeyboardInterrupt):
        convert(lane.name, lane.converter, artifacts, models, "resnet18")
    assert versions(models / "resnet18") == []
    assert list((models / "resnet18").iterdir()) == []


def test_versions_are_never_overwritten(tmp_path):
    model_dir = tmp_path / "resnet18"
    for expected in (1, 2):
        with staged_version(model_dir) as (staging, number):
            (staging / "saved_model.pb").write_bytes(b"x")
        assert number == expected
    with pytest.raises(RepositoryError, match="never overwritten"), staged_version(model_dir, 2):
        pass
    assert versions(model_dir) == [1, 2]


@pytest.mark.parametrize(
    ("height", "width", "expected"), [(512, 512, (256, 256)), (480, 640, (256, 341)), (640, 427, (383, 256))]
)
def test_resize_follows_torchvision_shorter_side_rule(height, width, expected):
    new_height, new_width = _resized_size(tf.constant(height), tf.constant(width))
    assert (int(new_height), int(new_width)) == expected


def test_bench_measures_both_signatures_and_the_table_compares_to_onnxruntime(published, artifacts, tmp_path):
    from pt2tf_convert import bench, bench_table
    from pt2tf_serve.cpu import cpu_info

    models, _ = published
    common = ["--artifacts", str(artifacts), "--batch-sizes", "1", "2", "--min-iters", "2", "--min-seconds", "0"]
    assert bench.main(["--runtime", "onnxruntime", *common, "--out", str(tmp_path / "b" / "ort.json")]) == 0
    saved = ["--runtime", "savedmodel", "--models", str(models), "--label", "lane x", "--rounds", "2", *common]
    platform = Path(__file__).resolve().parents[2] / "docker" / "config" / "platform.config"
    assert bench.main([*saved, "--platform-config", str(platform), "--out", str(tmp_path / "b" / "sm.json")]) == 0
    record = json.loads((tmp_path / "b" / "sm.json").read_text())
    results = record["results"]
    assert sorted((r["signature"], r["path"], r["batch"]) for r in results) == [
        ("-", "-", 1),  # ONNX Runtime in the same process, interleaved
        ("-", "-", 2),
        ("predict_images", bench.SESSION, 1),
        ("predict_images", bench.SESSION, 2),
        ("serving_default", bench.SESSION, 1),
        ("serving_default", bench.SESSION, 2),
        ("serving_default", bench.LOADED, 1),
        ("serving_default", bench.LOADED, 2),
    ]
    assert all(r["images_per_second"] > 0 and r["calls"] >= 2 for r in results)
    assert all(len(r["rounds_images_per_second"]) == 2 for r in results)
    assert record["machine"]["threads"]["tensorflow_intra_op"] == 2  # from the platform config
    assert bench_table.main([str(tmp_path / "b")]) == 0
    text = (tmp_path / "b.md").read_text()
    assert "best-batch throughput" in text and "batch-1 latency" in text and "ONNX Runtime" in text
    assert f"lane x (TF {tf.__version__}), {bench.SESSION}: best-batch" in text
    assert f"CPU: {cpu_info().describe()}" in text  # model, cores, the AVX-512/AMX/bf16 flags it has and lacks


@pytest.mark.default_lane_only("the xla lever's refusal")
def test_the_xla_lever_measures_what_xla_compiles_and_names_what_it_refuses(published, artifacts, tmp_path):
    # The Session's auto-clustering leaves out ops XLA refuses; jit_compile=True on the loaded signature cannot, and
    # refused the rewritten graph's explicitly padded MaxPool on TF 2.19. The lever runs on; the record says why.
    import subprocess
    import sys

    from pt2tf_convert import bench, bench_table

    models, _ = published
    out = tmp_path / "b" / "xla.json"
    argv = ["--runtime", "savedmodel", "--models", str(models), "--artifacts", str(artifacts), "--variant", "xla",
            "--batch-sizes", "1", "--rounds", "1", "--min-iters", "1", "--min-seconds", "0", "--no-images",
            "--out", str(out)]  # fmt: skip
    # A process of its own, as nox runs each lever: XLA's auto-clustering is set when the Session is made.
    done = subprocess.run([sys.executable, "-m", "pt2tf_convert.bench", *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    paths = {r["path"] for r in record["results"] if r["signature"] == "serving_default"}
    refused = record["machine"].get("not_measured", {})
    assert bench.SESSION in paths
    assert (bench.LOADED in paths) != (bench.LOADED in refused), (paths, refused)
    if refused:
        assert refused[bench.LOADED].startswith("XLA cannot compile the whole signature (")
        assert bench_table.main([str(tmp_path / "b")]) == 0
        assert f"`xla`: {bench.LOADED} not measured: XLA cannot compile" in (tmp_path / "b.md").read_text()


def test_the_bench_says_which_onednn_kernels_each_tensorflow_process_ran(published, artifacts, tmp_path):
    # The oneDNN levers set their variables before TensorFlow loads, in a process of their own; the record and
    # the table say the state TensorFlow ran with, beside the ONNX Runtime of the same process.
    import subprocess
    import sys

    from pt2tf_convert import bench, bench_table
    from pt2tf_serve.cpu import cpu_info, onednn_state

    models, _ = published
    out = tmp_path / "levers"
    common = ["--artifacts", str(artifacts), "--models", str(models), "--batch-sizes", "1", "2", "--min-iters", "2"]
    common += ["--min-seconds", "0", "--rounds", "1", "--no-images", "--label", "lane x"]
    for index, variant in enumerate(("default", "eigen-contraction")):
        argv = [sys.executable, "-m", "pt2tf_convert.bench", "--runtime", "savedmodel", "--variant", variant, *common]
        env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", bench.CONTRACTION_ENV)}
        result = subprocess.run([*argv, "--out", str(out / f"{index}-{variant}.json")], env=env, capture_output=True)
        assert result.returncode == 0, result.stderr.decode()[-2000:]
    default = json.loads((out / "0-default.json").read_text())["machine"]
    eigen = json.loads((out / "1-eigen-contraction.json").read_text())["machine"]
    # What TensorFlow runs on this machine's CPU: under PT2TF_CPUINFO the record's line describes the recorded one.
    expected = onednn_state(cpu_info(Path("/proc/cpuinfo")), environ={})
    assert (default["variant"], default["onednn_on"], default["contraction"]) == (
        "default",
        expected.enabled,
        expected.contraction,
    )
    assert (eigen["variant"], eigen["onednn_on"]) == ("eigen-contraction", False)
    assert eigen["contraction"] == "Eigen's own (TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL=0)"
    if "PT2TF_CPUINFO" not in os.environ:  # the rule and TensorFlow agree: the line claims nothing else
        assert "but TensorFlow here runs" not in default["onednn"] + eigen["onednn"]
    assert bench_table.main([str(out)]) == 0
    text = (tmp_path / "levers.md").read_text()
    assert f"- `1-eigen-contraction`: cores {cpu_info().cores}" in text and eigen["onednn"] in text
    rows = [line for line in text.splitlines() if line.startswith(("| 0-default |", "| 1-eigen-contraction |"))]
    assert rows[0].startswith(
        f"| 0-default | default | {'on' if expected.enabled else 'off'} | {expected.contraction} | "
    )
    assert rows[1].startswith("| 1-eigen-contraction | eigen-contraction | off | Eigen's own")
    assert all(re.search(r"\| \d+\.\d\d× \(batch [12]\) \| \d+\.\d\d× \|$", row) for row in rows), rows
    assert bench_table.SESSION_PATH == bench.SESSION  # bench_table imports nothing of the project: kept equal here


# ResNet18's convolutions in network order, as both runtimes must name them: the stem, then per stage its 3×3
# convolutions and (from the second stage) the stride-2 one and the 1×1 downsampling shortcut.
RESNET18_CONVOLUTIONS = [
    "7×7, 3→64, 112×112",
    *["3×3, 64→64, 56×56"] * 4,
    *(
        layer
        for c, size in ((128, 28), (256, 14), (512, 7))
        for layer in (
            f"3×3, {c // 2}→{c}, {size}×{size}",
            f"1×1, {c // 2}→{c}, {size}×{size}",
            *[f"3×3, {c}→{c}, {size}×{size}"] * 3,
        )
    ),
]


def test_the_profile_times_every_convolution_of_both_runtimes_and_matches_them_one_by_one(
    published, artifacts, tmp_path
):
    from pt2tf_convert import profile, profile_table

    models, _ = published
    out = tmp_path / "profile"
    common = ["--artifacts", str(artifacts), "--batch-sizes", "1", "--iterations", "2"]
    assert profile.main(["--runtime", "onnxruntime", *common, "--out", str(out / "onnxruntime.json")]) == 0
    platform = Path(__file__).resolve().parents[2] / "docker" / "config" / "platform.config"
    saved = ["--runtime", "savedmodel", "--models", str(models), "--platform-config", str(platform), "--label", "x"]
    assert profile.main([*saved, *common, "--out", str(out / "savedmodel-1.json")]) == 0
    records = [json.loads((out / name).read_text()) for name in ("onnxruntime.json", "savedmodel-1.json")]
    for record in records:
        convolutions = record["batches"]["1"]["convolutions"]
        # Both runtimes run the downsampling shortcut and its stage's stride-2 convolution side by side, in
        # either order; every other convolution waits for the one before.
        assert sorted(c["layer"] for c in convolutions) == sorted(RESNET18_CONVOLUTIONS), record["runtime"]
        assert convolutions[0]["layer"] == RESNET18_CONVOLUTIONS[0] and all(c["ms"] > 0 for c in convolutions)
    assert profile_table.main([str(out)]) == 0
    text = (out / "profile.md").read_text()
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ \| \d+×\d+, ", line)]
    assert [row.split(" | ")[1] for row in rows] == [c["layer"] for c in records[0]["batches"]["1"]["convolutions"]]
    assert all(re.search(r"\| \d+\.\d{3} \(\d+\.\d\d×\) \|$", row) for row in rows), rows  # all 20 matched
    assert "no counterpart" not in text


def test_a_onednn_lever_cannot_run_once_tensorflow_is_loaded(artifacts, tmp_path):
    from pt2tf_convert import bench

    with pytest.raises(SystemExit):  # TensorFlow read TF_ENABLE_ONEDNN_OPTS when this process imported it
        bench.main(["--runtime", "savedmodel", "--artifacts", str(artifacts), "--variant", "onednn-on",
                    "--out", str(tmp_path / "x.json")])  # fmt: skip
    assert not (tmp_path / "x.json").exists()


def test_the_contract_check_names_every_difference(tmp_path):
    class Wrong(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 3, 224, 224], tf.float32, name="input")])
        def serve(self, input):
            return {"logits": tf.reduce_mean(input, axis=[2, 3])}

    module = Wrong()
    tf.saved_model.save(module, str(tmp_path / "wrong"), signatures={"serving_default": module.serve})
    problems = contract_problems(tf.saved_model.load(str(tmp_path / "wrong")))
    assert "signatures are ['serving_default'], the contract has ['predict_images', 'serving_default']" in problems
    assert "serving_default input 'input' is ('float32', (1, 3, 224, 224)), the contract says " in "\n".join(problems)
    assert "serving_default outputs are ['logits'], the contract has ['output']" in problems


# ---------------------------------------------------------------------------- graph rewrites and bf16


def _graph(build) -> tuple:
    """A GraphDef of `build(x)` for x float32 [2, 3, 4, 5], and its input and output tensor names."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [2, 3, 4, 5], name="x")
        y = tf.identity(build(x), name="y")
    return graph.as_graph_def(), x.name, y.name


def _run(graph_def, input_name: str, output_name: str, value: np.ndarray) -> np.ndarray:
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(output_name, {input_name: value})


def test_transposes_around_elementwise_ops_cancel_and_the_numbers_stay_the_same():
    from pt2tf_convert.optimize import sink_transposes

    bias = np.arange(3, dtype=np.float32).reshape(1, 3, 1, 1)

    def build(x):  # onnx2tf's residual pattern: to NCHW, add, relu, back to NHWC
        a = tf.transpose(x, [0, 3, 1, 2])
        b = tf.transpose(x * 2.0, [0, 3, 1, 2])
        summed = tf.nn.relu(tf.add(a, b) + tf.constant(np.resize(bias, (1, 5, 1, 1))))
        return tf.transpose(summed, [0, 2, 3, 1])

    graph_def, x, y = _graph(build)
    rewritten, sunk, cancelled = sink_transposes(graph_def, [y])
    assert [n.op for n in rewritten.node].count("Transpose") == 0 and cancelled >= 1 and sunk >= 1
    value = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    # Grappler may sum the two Adds in another order in each graph: float rounding, nothing more
    np.testing.assert_allclose(_run(rewritten, x, y, value), _run(graph_def, x, y, value), rtol=1e-6, atol=1e-6)


def test_shape_arithmetic_on_a_constant_that_waits_for_an_assert_is_folded():
    """onnx-tf makes some constants wait for its shape asserts (a control input): the Cast of one is still a
    constant, and folding it must not take the assert along (TensorFlow refused the subgraph: unknown input node)."""
    from pt2tf_convert.optimize import sink_transposes

    def build(x):
        check = tf.debugging.assert_equal(tf.shape(x)[0], 2)
        with tf.control_dependencies([check]):
            two = tf.constant(2, tf.int32, name="two")
        return x * tf.cast(two, tf.float32, name="scale")

    graph_def, x, y = _graph(build)
    (two,) = [n for n in graph_def.node if n.name == "two"]
    assert two.input and all(i.startswith("^") for i in two.input), "the pattern: a Const with a control input"
    rewritten, _, _ = sink_transposes(graph_def, [y])
    (scale,) = [n for n in rewritten.node if n.name == "scale"]
    assert scale.op == "Const" and list(scale.input) == list(two.input), "it still runs after the assert"
    value = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(_run(rewritten, x, y, value), value * 2)


def test_shape_arithmetic_folded_inside_a_loop_stays_in_the_loops_frame():
    """A frozen onnx-tf graph runs its loops as TF1 frames (Swin-T's has 1400 Switch ops): a Const in a loop body is
    in the loop's frame through a control input from the loop's pivot. The Cast of one, folded, must stay there:
    moved out, the loop's Mul reads from another frame and the graph does not run."""
    from pt2tf_convert.optimize import sink_transposes

    def body(i, acc):
        two = tf.constant(2, tf.int32, name="two")
        return i + 1, acc * tf.cast(two, tf.float32, name="scale")

    tf.compat.v1.disable_control_flow_v2()  # the frozen graph's lowered loops: Enter, Merge, Switch, NextIteration
    try:
        graph_def, x, y = _graph(lambda x: tf.while_loop(lambda i, acc: i < 3, body, [tf.constant(0), x])[1])
    finally:
        tf.compat.v1.enable_control_flow_v2()
    (scale,) = [n for n in graph_def.node if n.name.endswith("/scale")]
    assert {n.op for n in graph_def.node} >= {"Enter", "Merge", "NextIteration"} and scale.op == "Cast"
    rewritten, _, _ = sink_transposes(graph_def, [y])
    (scale,) = [n for n in rewritten.node if n.name.endswith("/scale")]
    assert scale.op == "Const" and scale.input and all(i.startswith("^") for i in scale.input)
    value = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(_run(rewritten, x, y, value), value * 8)


def _doubled_three_times(x: tf.Tensor) -> tf.Tensor:
    """A while loop, as onnx-tf writes each ScatterND, then the logits' mean."""
    _, acc = tf.while_loop(lambda i, acc: i < 3, lambda i, acc: (i + 1, acc * 2.0), [tf.constant(0), x])
    return tf.reduce_mean(acc, axis=[2, 3])


def _halved_if_positive(x: tf.Tensor) -> tf.Tensor:
    """A cond without a loop, as onnx-tf writes each Pad."""
    mean = tf.reduce_mean(x, axis=[2, 3])
    return tf.cond(tf.reduce_sum(mean) > 0, lambda: mean / 2.0, lambda: mean)


def test_loops_are_frozen_as_while_ops_and_a_graph_without_loops_is_lowered_as_before():
    """Lowered to TF1 frames, Swin-T's 45 onnx-tf loops gave a frozen graph TensorFlow refuses once imported back
    ("has inputs from different frames"): a graph with a loop keeps it a While op; one without (every other
    architecture's) is frozen as before, its conds lowered to Switch and Merge."""
    from pt2tf_convert.optimize import freeze, optimize
    from pt2tf_convert.signatures import ConvertedModel

    x = tf.constant(np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32))
    for call, kept, lowered in ((_doubled_three_times, "While", "Enter"), (_halved_if_positive, "Switch", "If")):
        converted = ConvertedModel(call=call, trackable=[], layout="NCHW")
        graph_def, _, _ = freeze(converted)
        ops = {node.op for node in graph_def.node}
        assert any(kept in op for op in ops) and not any(lowered in op for op in ops), (call.__name__, ops)
        optimized, _ = optimize(converted)
        np.testing.assert_allclose(tf.function(optimized.call)(x).numpy(), call(x).numpy(), rtol=1e-6)


def test_a_transpose_that_meets_no_inverse_is_kept():
    from pt2tf_convert.optimize import sink_transposes

    graph_def, x, y = _graph(lambda x: tf.nn.relu(tf.transpose(x, [0, 3, 1, 2])))
    rewritten, _, cancelled = sink_transposes(graph_def, [y])
    assert [n.op for n in rewritten.node].count("Transpose") == 1 and cancelled == 0
    value = np.random.default_rng(1).normal(size=(2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(_run(rewritten, x, y, value), _run(graph_def, x, y, value))


def _editable(graph_def, output: str) -> tuple:
    """A copy of `graph_def` and the optimize._Graph over it that keeps `output`, for one rewrite at a time."""
    from pt2tf_convert.optimize import _Graph

    rewritten = graph_pb2.GraphDef()
    rewritten.CopyFrom(graph_def)
    return rewritten, _Graph(rewritten, {output.split(":")[0]})


def _nhwc_graph(build, shape=(2, 7, 7, 3)) -> tuple:
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, shape, name="x")
        y = tf.identity(build(x), name="y")
    return graph.as_graph_def(), x.name, y.name


SYMMETRIC, CEIL_MODE, WHOLE_KERNEL = (
    [[0, 0], [1, 1], [1, 1], [0, 0]],
    [[0, 0], [0, 1], [1, 2], [0, 0]],
    [[0, 0], [3, 0], [0, 0], [0, 0]],
)


@pytest.mark.parametrize(
    "fill, paddings, folds",
    [
        (np.finfo(np.float32).min, SYMMETRIC, True),
        (-np.inf, SYMMETRIC, True),
        (np.finfo(np.float32).min, CEIL_MODE, True),  # PyTorch's ceil_mode: more padding after than before
        (0.0, SYMMETRIC, False),
        (np.finfo(np.float32).min, WHOLE_KERNEL, False),  # a window of padding only would give the fill value
    ],
    ids=["lowest", "-inf", "ceil mode", "zero fill", "a kernel's worth"],
)
def test_a_max_pools_lowest_float_padding_becomes_its_explicit_padding(fill, paddings, folds):
    from pt2tf_convert.optimize import _fold_max_pool_pads

    def build(x):  # converters' padded max-pool: pad with the lowest float, pool unpadded
        padded = tf.raw_ops.PadV2(input=x, paddings=paddings, constant_values=fill)
        return tf.nn.max_pool2d(padded, 3, 2, "VALID")

    graph_def, x, y = _nhwc_graph(build)
    rewritten, graph = _editable(graph_def, y)
    assert _fold_max_pool_pads(graph) == int(folds)
    graph.prune()
    ops = [n.op for n in rewritten.node]
    # all-negative values: a zero pad would win every border window, so it must not be folded
    value = -np.random.default_rng(2).uniform(1, 2, size=(2, 7, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(_run(rewritten, x, y, value), _run(graph_def, x, y, value))
    assert ("PadV2" not in ops) == folds


def test_a_depthwise_convolutions_bias_becomes_a_bias_add():
    from pt2tf_convert.optimize import _bias_adds

    rng = np.random.default_rng(6)

    def build(x):  # onnx2tf's MobileNetV3 block: each convolution's bias an Add of a vector
        expanded = tf.nn.conv2d(x, rng.normal(size=(1, 1, 3, 4)).astype(np.float32), 1, "SAME")
        expanded = tf.nn.relu(expanded + rng.normal(size=4).astype(np.float32))
        depthwise = tf.nn.depthwise_conv2d(expanded, rng.normal(size=(3, 3, 4, 2)).astype(np.float32), [1] * 4, "SAME")
        return depthwise + rng.normal(size=8).astype(np.float32)  # 4 channels × multiplier 2

    graph_def, x, y = _nhwc_graph(build)
    rewritten, graph = _editable(graph_def, y)
    assert _bias_adds(graph) == 2
    graph.prune()
    nodes = {n.name: n for n in rewritten.node}
    reads = sorted(nodes[n.input[0]].op for n in rewritten.node if n.op == "BiasAdd")
    assert reads == ["Conv2D", "DepthwiseConv2dNative"]
    assert not {"Add", "AddV2"} & {n.op for n in rewritten.node}
    value = rng.normal(size=(2, 7, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(_run(rewritten, x, y, value), _run(graph_def, x, y, value))


GROUPED_WITH_EIGEN = """
import sys
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.python.util import _pywrap_util_port

assert not _pywrap_util_port.IsMklEnabled(), "TF_ENABLE_ONEDNN_OPTS=0 did not turn oneDNN off"
value = np.load(sys.argv[1])
for path in sys.argv[2:]:
    graph_def = graph_pb2.GraphDef.FromString(open(path, "rb").read())
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:  # Grappler's remapper on, as in a server's Session
        try:
            np.save(path + ".npy", session.run("y:0", {"x:0": value}))
            print("ran")
        except tf.errors.UnimplementedError as exc:
            print("unimplemented:", " ".join(exc.message.split()))
"""


def test_a_grouped_convolutions_bias_stays_an_add_so_that_eigens_kernels_can_run_it(tmp_path):
    import subprocess
    import sys

    from pt2tf_convert.optimize import _bias_adds

    filters = np.random.default_rng(7).normal(size=(3, 4)).astype(np.float32)

    def build(x, bias=lambda t, b: t + b):  # the user model's grouped 1×1 (2 groups of 2 channels), then a plain one
        grouped = bias(tf.nn.conv2d(x, filters[0].reshape(1, 1, 2, 2).repeat(2, axis=3), 1, "SAME"), filters[1])
        return tf.nn.relu(bias(tf.nn.conv2d(grouped, np.diag(filters[2]).reshape(1, 1, 4, 4), 1, "SAME"), filters[1]))

    graph_def, x, y = _nhwc_graph(build, shape=(2, 7, 7, 4))
    rewritten, graph = _editable(graph_def, y)
    assert _bias_adds(graph) == 1  # the plain convolution's only
    graph.prune()
    nodes = {n.name: n for n in rewritten.node}
    (bias_add,) = [n for n in rewritten.node if n.op == "BiasAdd"]
    assert tf.make_ndarray(nodes[nodes[bias_add.input[0]].input[1]].attr["value"].tensor).shape == (1, 1, 4, 4)
    # With oneDNN off (TensorFlow's default on the AVX2 kind) the graph runs and gives the converter's answers; the
    # same with a BiasAdd on the grouped convolution is fused into Eigen's convolution, which refuses groups.
    both_bias_adds, _, _ = _nhwc_graph(lambda t: build(t, tf.nn.bias_add), shape=(2, 7, 7, 4))
    value = np.random.default_rng(8).normal(size=(2, 7, 7, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", value)
    for name, written in (("rewritten", rewritten), ("both", both_bias_adds)):
        (tmp_path / name).write_bytes(written.SerializeToString())
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
    argv = [sys.executable, "-c", GROUPED_WITH_EIGEN, str(tmp_path / "x.npy"), str(tmp_path / "rewritten")]
    done = subprocess.run([*argv, str(tmp_path / "both")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ran, refused = done.stdout.strip().splitlines()
    assert ran == "ran" and "does not support grouped convolutions" in refused, done.stdout
    np.testing.assert_allclose(np.load(tmp_path / "rewritten.npy"), _run(graph_def, x, y, value), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "perm, axes, keep_dims, transposes_left",
    [
        ([0, 3, 1, 2], [2, 3], True, 1),  # onnx2tf's global average pool: NHWC → NCHW, mean over H and W
        ([0, 3, 1, 2], [2, 3], False, 0),  # what is left, [N, C], is in order either way
        ([0, 2, 3, 1], [1], False, 1),  # what is left is not: [N, W, C] of x's [N, C, W] after the mean
        ([0, 2, 3, 1], np.int64(-1), True, 1),  # a scalar, negative, int64 axis
    ],
)
def test_a_mean_over_a_transpose_reduces_first(perm, axes, keep_dims, transposes_left):
    from pt2tf_convert.optimize import _split, sink_transposes

    def build(x):
        return tf.reduce_mean(tf.transpose(x, perm), axis=tf.constant(axes), keepdims=keep_dims)

    graph_def, x, y = _nhwc_graph(build, shape=(2, 7, 5, 3))
    rewritten, sunk, _ = sink_transposes(graph_def, [y])
    transposes = [n for n in rewritten.node if n.op == "Transpose"]
    assert sunk == 1 and len(transposes) == transposes_left
    mean = next(n for n in rewritten.node if n.op == "Mean")
    assert _split(mean.input[0])[0] == x.split(":")[0], "the Mean reads the input itself"
    value = np.random.default_rng(3).normal(size=(2, 7, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, x, y, value), _run(graph_def, x, y, value), rtol=1e-6, atol=1e-7)


def test_a_mean_does_not_reduce_first_when_the_transpose_has_other_readers():
    from pt2tf_convert.optimize import sink_transposes

    def build(x):  # the full-size transpose is read by a Reshape too, which nothing sinks through
        t = tf.transpose(x, [0, 3, 1, 2])
        mean = tf.reduce_mean(t, axis=[1], keepdims=True)
        return tf.concat([tf.reshape(t, [2, -1]), tf.reshape(mean, [2, -1])], axis=1)

    graph_def, x, y = _nhwc_graph(build)
    rewritten, _, _ = sink_transposes(graph_def, [y])
    assert [n.op for n in rewritten.node].count("Transpose") == 1, "the reduction kept its input; no transpose added"
    value = np.random.default_rng(4).normal(size=(2, 7, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, x, y, value), _run(graph_def, x, y, value), rtol=1e-6, atol=1e-6)


def test_a_mean_whose_axes_are_a_constant_splits_second_part_reduces_first():
    from pt2tf_convert.optimize import _split, sink_transposes

    def build(x):  # onnx-tf's global average pool: the axes are SplitV(Range(4), [2, 2])'s output 1
        axes = tf.split(tf.range(4), [2, 2])[1]
        return tf.reduce_mean(tf.transpose(x, [0, 3, 1, 2]), axis=axes, keepdims=True)

    graph_def, x, y = _nhwc_graph(build, shape=(2, 7, 5, 3))
    rewritten, _, _ = sink_transposes(graph_def, [y])
    mean = next(n for n in rewritten.node if n.op == "Mean")
    assert _split(mean.input[0])[0] == x.split(":")[0], "the Mean reads the input itself, not its transpose"
    # what is left is the [2, 1, 1, 3] mean's transpose to [2, 3, 1, 1], not the input's
    assert [n.op for n in rewritten.node].count("Transpose") == 1
    value = np.random.default_rng(5).normal(size=(2, 7, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, x, y, value), _run(graph_def, x, y, value), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("sizes", [3, [1, 1, 1]], ids=["Split", "SplitV"])
@pytest.mark.parametrize("ports", [(1,), (2, 0)], ids=["only output 1", "outputs 2 and 0"])
def test_a_split_of_constants_becomes_a_constant_per_output_read(sizes, ports):
    from pt2tf_convert.optimize import _fold_shape_arithmetic, _split

    rows = np.arange(9, dtype=np.float32).reshape(3, 3)

    def build(x):  # each part read by its own Mul, so that a reader given the wrong part shows
        parts = tf.split(tf.constant(rows), sizes)
        return tf.add_n([tf.multiply(x, parts[port], name=f"times_part_{port}") for port in ports] + [x])

    graph_def, x, y = _nhwc_graph(build)
    assert {n.op for n in graph_def.node} >= {"Split" if sizes == 3 else "SplitV"}
    rewritten, graph = _editable(graph_def, y)
    assert _fold_shape_arithmetic(graph) == 1
    graph.prune()
    assert not {"Split", "SplitV"} & {n.op for n in rewritten.node}, "the split is left to run"
    for port in ports:
        part = graph.nodes[_split(graph.nodes[f"times_part_{port}"].input[1])[0]]
        assert part.op == "Const", f"times_part_{port} reads {part.op}, not a constant"
        np.testing.assert_array_equal(tf.make_ndarray(part.attr["value"].tensor), rows[port : port + 1])
    value = np.random.default_rng(6).normal(size=(2, 7, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(_run(rewritten, x, y, value), _run(graph_def, x, y, value))


def test_a_split_of_a_run_time_tensor_is_left_to_run_where_a_constant_one_folds():
    from pt2tf_convert.optimize import _fold_shape_arithmetic

    def build(x):  # two SplitVs with constant sizes and axis: one of the input, one of constants
        channels = tf.split(x, [1, 2], axis=3, name="split_of_the_input")[1]
        axes = tf.split(tf.range(3), [1, 2], name="split_of_constants")[1]
        return tf.reduce_sum(channels, axis=axes)

    graph_def, x, y = _nhwc_graph(build)
    rewritten, graph = _editable(graph_def, y)
    assert _fold_shape_arithmetic(graph) == 2, "the Range and the constants' SplitV fold"
    graph.prune()
    splits = {n.name: n for n in rewritten.node if n.op == "SplitV"}
    assert list(splits) == ["split_of_the_input"], f"SplitVs left: {list(splits)}"
    assert graph.nodes["Sum"].input[0] == "split_of_the_input:1"
    value = np.random.default_rng(7).normal(size=(2, 7, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(_run(rewritten, x, y, value), _run(graph_def, x, y, value))


def test_identities_are_bypassed_through_chains_and_output_ports_and_kept_ones_stay():
    """onnx-tf writes an Identity per tensor: readers of Identity(Identity(x)) read x, readers of Identity(split:1)
    read split:1, and an Identity that is an output, or that waits on something (a control input), stays."""
    from pt2tf_convert.optimize import _bypass_identities, _split

    def build(x):
        chain = tf.identity(tf.identity(tf.identity(x, name="i1"), name="i2"), name="i3")
        second = tf.identity(tf.split(x, [1, 2], axis=3, name="parts")[1], name="of_port_1")
        with tf.control_dependencies([chain.op.inputs[0].op]):  # waits for i2
            waits = tf.identity(second, name="waits")
        return tf.concat([chain * 2.0, second, waits], axis=3, name="joined")

    graph_def, x, y = _nhwc_graph(build)
    rewritten, graph = _editable(graph_def, y)
    assert _bypass_identities(graph) == 4, "i1, i2, i3 and of_port_1; not waits (control input), not y (kept)"
    graph.prune()
    left = {n.name for n in rewritten.node if n.op == "Identity"}
    assert left == {"i2", "waits", y.split(":")[0]}, f"Identities left: {left} (i2: waits' control input)"
    assert _split(graph.nodes["mul"].input[0])[0] == x.split(":")[0], "the chain's reader reads x itself"
    assert graph.nodes["joined"].input[1] == "parts:1" and graph.nodes["waits"].input[0] == "parts:1"
    value = np.random.default_rng(8).normal(size=(2, 7, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(_run(rewritten, x, y, value), _run(graph_def, x, y, value))


def test_bypassing_identities_costs_a_pass_over_the_graph_not_one_per_identity(monkeypatch):
    """Swin-T's onnx-tf graph (some 20 000 Identities among 40 000 nodes) took 452 s when each Identity was
    rewired with a pass over every node. Counted in input names read, not timed: a graph of 2000 Identities
    between Adds has its inputs read a few times over, not 2000 times."""
    from pt2tf_convert import optimize

    def build(x):
        for _ in range(1000):
            x = tf.identity(tf.identity(x) + 1.0)
        return x

    graph_def, x, y = _nhwc_graph(build)
    inputs = sum(len(n.input) for n in graph_def.node)
    reads = 0

    def counted(name):
        nonlocal reads
        reads += 1
        return split(name)

    split = optimize._split
    monkeypatch.setattr(optimize, "_split", counted)
    rewritten, graph = _editable(graph_def, y)
    assert optimize._bypass_identities(graph) == 2000
    assert reads <= 3 * inputs, f"{reads} input names read for {inputs} inputs"
    value = np.random.default_rng(9).normal(size=(2, 7, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(_run(rewritten, x, y, value), _run(graph_def, x, y, value))


def test_every_residual_add_has_operands_the_remapper_can_prove_the_same_shape(published):
    """Grappler's remapper fuses Add+Relu into the convolution only for operands of provably equal shapes.

    Its shape inference treats a fed input as any shape (assume_valid_feeds is off below AGGRESSIVE),
    as grappler.Item's does here; without the pinned input shape, ResNet's downsampling blocks had a
    stride-2 convolution's and the shortcut's outputs as different unknown sizes, and ran unfused.
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    from tensorflow.python.grappler import item as grappler_item

    _, version_dir = published
    frozen = convert_variables_to_constants_v2(tf.saved_model.load(str(version_dir)).signatures["serving_default"])
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(frozen.graph.as_graph_def(), name="")
        tf.compat.v1.add_to_collection("train_op", graph.get_operation_by_name(frozen.outputs[0].op.name))
        properties = grappler_item.Item(tf.compat.v1.train.export_meta_graph(graph=graph)).GetOpProperties()

    def constant(op) -> bool:  # weights reach the frozen graph as Identity(Const)
        while op.type == "Identity":
            op = op.inputs[0].op
        return op.type == "Const"

    adds = [
        op
        for op in graph.get_operations()
        if op.type in ("Add", "AddV2") and not any(constant(i.op) for i in op.inputs)
    ]

    def shape(tensor) -> list[int]:
        return [d.size for d in properties[tensor.op.name][tensor.value_index].shape.dim]

    # residual Adds: two activations (the classifier's bias, computed on onnx-tf's lane, is a vector)
    adds = [op for op in adds if all(len(shape(i)) == 4 for i in op.inputs)]
    assert len(adds) == 8, f"ResNet18 has 8 residual Adds; found {[op.name for op in adds]}"
    for add in adds:
        shapes = [shape(i) for i in add.inputs]
        assert shapes[0] == shapes[1], f"{add.name}: operand shapes {shapes} are not provably equal"
        assert all(size > 0 for size in shapes[0][1:]), f"{add.name}: spatial sizes unknown: {shapes[0]}"


def test_the_published_graph_is_frozen_and_keeps_no_layout_transposes(published):
    _, version_dir = published
    rewrite = json.loads((version_dir / "assets.extra" / MANIFEST_FILE).read_text())["graph_rewrite"]
    before, after = rewrite["ops_before"].get("Transpose", 0), rewrite["ops_after"].get("Transpose", 0)
    # Left: NCHW → NHWC at the input (onnx-tf: 63 → 2), and the pooled [N, 1, 1, C]'s to [N, C, 1, 1].
    assert after <= min(before, 2), f"transposes {before} → {after}"
    assert "VarHandleOp" not in rewrite["ops_after"] and "ReadVariableOp" not in rewrite["ops_after"]


def test_the_global_average_pool_reduces_before_its_layout_transpose(published):
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    _, version_dir = published
    frozen = convert_variables_to_constants_v2(tf.saved_model.load(str(version_dir)).signatures["serving_default"])
    means = [op for op in frozen.graph.get_operations() if op.type == "Mean"]
    assert means, "ResNet18's global average pool is a Mean in every lane's graph"
    for mean in means:
        source = mean.inputs[0].op
        # a transpose here moves the whole [N, 7, 7, 512] activation; after the Mean, 512 values an image
        assert source.type != "Transpose", f"{mean.name} reads {source.name}, a transpose of {source.inputs[0].shape}"


def test_no_optimize_publishes_the_converters_graph(lane, artifacts, tmp_path):
    version_dir = convert(lane.name, lane.converter, artifacts, tmp_path, "resnet18", optimize_graph=False)
    manifest = json.loads((version_dir / "assets.extra" / MANIFEST_FILE).read_text())
    assert manifest["graph_rewrite"] is None and manifest["precision"] == "float32"


def test_the_bf16_variant_is_its_own_model_with_its_own_measured_thresholds(
    lane, artifacts, tmp_path, bf16_refusal_expected
):
    from pt2tf_convert import bf16

    if refusal := bf16_refusal_expected():  # no native bf16 on this CPU (or oneDNN off): refused, saying why
        with pytest.raises(bf16.Bf16Error, match=refusal):
            convert(lane.name, lane.converter, artifacts, tmp_path / "models", "resnet18", bf16=True)
        return
    version_dir = convert(lane.name, lane.converter, artifacts, tmp_path / "models", "resnet18", bf16=True)
    assert version_dir == tmp_path / "models" / "resnet18-bf16" / "1"
    manifest = json.loads((version_dir / "assets.extra" / MANIFEST_FILE).read_text())
    assert manifest["precision"] == "bfloat16" and manifest["model_name"] == "resnet18-bf16"
    assert manifest["thresholds"] == asdict(bf16.Bf16Thresholds())
    assert "auto_mixed_precision_onednn_bfloat16: ON" in manifest["bf16"]["session_config"]
    measured = manifest["bf16"]["parity"]["1"]["pytorch_vs_savedmodel_bf16"]
    # bf16 really ran: its error is far above fp32's (≈1e-6 relative), and within its own bound
    assert 1e-4 < measured["max_rel"] <= bf16.Bf16Thresholds().max_rel
    reports = tmp_path / "reports"
    common = ["--lane", lane.name, "--artifacts", str(artifacts), "--models", str(tmp_path / "models")]
    assert bf16.main([*common, "--reports", str(reports)]) == 0
    report = json.loads((reports / "parity-bf16.json").read_text())
    assert report["passed"] and set(report["parity"]) == {"1", "3", "8"}
    # a threshold tighter than bf16 can meet fails, naming it
    tight = bf16.Bf16Thresholds(max_rel=1e-6)
    _, failed = bf16.check(version_dir, artifacts / "model.onnx", load_reference(artifacts), tight)
    assert failed and all("relative error" in line for line in failed)


def test_bf16_on_a_cpu_without_bf16_is_refused_before_any_work(lane, artifacts, tmp_path, monkeypatch):
    from pt2tf_convert.bf16 import Bf16Error
    from pt2tf_serve.cpu import CPUINFO_ENV

    # Whatever this machine is, the convert is shown the recorded AVX2 EPYC, as the server would be.
    monkeypatch.setenv(CPUINFO_ENV, str(Path(__file__).resolve().parents[1] / "data" / "cpuinfo" / "amd-epyc-avx2.txt"))
    with pytest.raises(Bf16Error, match=r"avx512_bf16 or amx_bf16 .*\(AMD EPYC\)"):
        convert(lane.name, lane.converter, artifacts, tmp_path / "models", "resnet18", bf16=True)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("saved_model.pb"))
