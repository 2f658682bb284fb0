"""A second architecture on this lane, for real: MobileNetV3-Small (HardSwish, squeeze-excitation gates, depthwise
convolutions), exported afresh by nox (PT2TF_TEST_ARCHITECTURE_ARTIFACTS), converted, verified and served in process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import tensorflow as tf
from pt2tf_convert import warmup
from pt2tf_convert.artifacts import ArtifactsError, check_exported_model, load_reference, photo_bytes
from pt2tf_convert.convert import MANIFEST_FILE, convert
from pt2tf_convert.metrics import ROUNDING_FACTOR
from pt2tf_convert.signatures import contract_problems
from pt2tf_convert.verify import Thresholds, verify

ARCHITECTURE = "mobilenet_v3_small"


@pytest.fixture(scope="module")
def arch_artifacts() -> Path:
    path = Path(os.environ.get("PT2TF_TEST_ARCHITECTURE_ARTIFACTS", ""))
    if not (path / "model.onnx").is_file():
        pytest.fail(
            f"PT2TF_TEST_ARCHITECTURE_ARTIFACTS={path} holds no export; nox exports {ARCHITECTURE} for this suite first"
        )
    return path


@pytest.fixture(scope="module")
def published(lane, arch_artifacts, tmp_path_factory) -> tuple[Path, Path]:
    models = tmp_path_factory.mktemp("models")
    return models, convert(lane.name, lane.converter, arch_artifacts, models)  # the served name: the export's model


def test_the_export_holds_operators_resnet18_lacks(arch_artifacts):
    ops = {node.op_type for node in onnx.load(str(arch_artifacts / "model.onnx")).graph.node}
    assert "HardSigmoid" in ops and "Mul" in ops, f"squeeze-excitation gates: {sorted(ops)}"
    manifest = json.loads((arch_artifacts / "export.json").read_text())
    assert manifest["model"] == ARCHITECTURE


def test_it_is_published_under_its_own_name_with_the_contract(published):
    models, version_dir = published
    assert version_dir == models / ARCHITECTURE / "1"
    assert contract_problems(tf.saved_model.load(str(version_dir))) == []
    manifest = json.loads((version_dir / "assets.extra" / MANIFEST_FILE).read_text())
    assert manifest["model_name"] == ARCHITECTURE and manifest["export"]["model"] == ARCHITECTURE
    assert manifest["export"]["preprocessing"]["source"] == "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    logs = warmup.read_warmup(version_dir / "assets.extra" / warmup.WARMUP_FILE)
    assert {log.predict_log.request.model_spec.name for log in logs} == {ARCHITECTURE}


def test_predict_images_answers_the_photos_as_pytorch_does(published, arch_artifacts):
    _, version_dir = published
    ref = load_reference(arch_artifacts)
    photos = photo_bytes(ref)
    out = tf.saved_model.load(str(version_dir)).signatures["predict_images"](image_bytes=tf.constant(photos))
    torch_top1 = ref["logits"][ref["kinds"] == "photo"].argmax(axis=1)
    np.testing.assert_array_equal(out["classes"].numpy()[:, 0], torch_top1)
    assert [row[0].decode() for row in out["labels"].numpy()] == [str(ref["labels"][c]) for c in torch_top1]


def test_verify_passes_with_parity_and_preprocessing_measured_for_this_model(published, lane, arch_artifacts, tmp_path):
    models, _ = published
    report = verify(lane.name, arch_artifacts, models, None, tmp_path, None, Thresholds())
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
    assert f"mobilenet_v3_small version 1 ({ARCHITECTURE})" in (tmp_path / "parity.md").read_text()


def test_another_models_name_is_refused_naming_the_export(arch_artifacts):
    with pytest.raises(ArtifactsError, match=f"holds an export of {ARCHITECTURE}; export resnet18 first"):
        check_exported_model(arch_artifacts, "resnet18")
    check_exported_model(arch_artifacts, ARCHITECTURE)
