"""The user's own model through every stage on this lane: a small module with a channel shuffle, depthwise and
squeeze-excitation blocks, a custom activation and 10 classes (tests/data/user_model), in a temporary package on
PYTHONPATH, exported by the pt2tf-export command line in the export env (PT2TF_EXPORT_PYTHON) with a weights file
and a spec, then converted, verified and served here. Its answers over REST and gRPC, both signatures, must be the
in-process `tf.saved_model.load` answers. (A converter's refusal of an operator, naming it and the lanes that may take
it, is tests/convert/test_convert.py's.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from pt2tf_convert.artifacts import load_reference, photo_bytes
from pt2tf_convert.convert import convert
from pt2tf_convert.verify import Thresholds, verify
from pt2tf_serve.client import GrpcClient, RestClient
from pt2tf_serve.process import ServerProcess, config_copy, embedded_flags
from pt2tf_toolchain.matrix import load_matrix

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "user_model"
PACKAGE = "pt2tf_test_usernets"
NAME = "tiny_shuffle"  # the spec's served name
ATOL = 2e-4  # the conformance suite's: batching sums in another order
# make test's budget: the whole path on the default lane and on onnx-tf (whose TorchScript export of this model has
# Unsqueeze 13, which onnx-tf 1.10 lacks and the backend adds); `latest` runs onnx2tf's converter as the default lane
# does (a newer TensorFlow), so its serve suite leaves this model to the default lane's.
LANES = {load_matrix().default_lane, "onnx-tf"}


@pytest.fixture(scope="module")
def user_export(lane, tmp_path_factory) -> Path:
    if lane.name not in LANES:
        pytest.skip(f"lane {lane.name}: lanes {', '.join(sorted(LANES))} take the user's model through")
    python = os.environ.get("PT2TF_EXPORT_PYTHON")
    if not python:
        pytest.fail("PT2TF_EXPORT_PYTHON is not set: nox sets it to the export env's python for this suite")
    root = tmp_path_factory.mktemp("user")
    (root / PACKAGE).mkdir()
    (root / PACKAGE / "__init__.py").write_text("")
    for name in ("spec.toml", "labels.txt"):
        shutil.copy(DATA / name, root / name)
    shutil.copy(DATA / "tiny_shuffle.py", root / PACKAGE / "tiny_shuffle.py")
    pythonpath = os.pathsep.join([str(ROOT / "convert"), str(ROOT / "serve"), str(ROOT / "toolchain"), str(root)])
    env = {**os.environ, "PYTHONPATH": pythonpath}
    out = root / "artifacts"
    argv = ["--lane", lane.name, "--exporter", lane.exporter, "--opset", str(lane.opset), "--out", str(out),
            "--model", f"{PACKAGE}.tiny_shuffle:build", "--weights", str(root / "w.pt"),
            "--spec", str(root / "spec.toml")]  # fmt: skip
    # The user's training run saves a state_dict, then pt2tf-export's command line runs: one process, one torch import.
    script = (f"import sys, torch; from {PACKAGE} import tiny_shuffle as m; from pt2tf_convert.export import main; "
              f"torch.save(m.trained_like().state_dict(), 'w.pt'); sys.exit(main({argv!r}))")  # fmt: skip
    result = subprocess.run([python, "-c", script], cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def user_version(lane, user_export, tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("models")
    return convert(lane.name, lane.converter, user_export, models)


def test_converted_under_its_spec_name_with_its_class_count_and_verified(lane, user_export, user_version, tmp_path):
    assert user_version.parent.name == NAME
    report = verify(lane.name, user_export, user_version.parents[1], None, tmp_path, None, Thresholds())
    assert report["failures"] == [] and report["passed"] and report["warnings"] == []
    assert report["export"]["factory"] == f"{PACKAGE}.tiny_shuffle:build" and report["export"]["num_classes"] == 10
    assert report["preprocessing"]["spec"]["interpolation"] == "bicubic"
    assert report["preprocessing"]["probabilities"]["top1_agreement"] == 1.0
    for pairs in report["parity"].values():
        assert all(metrics["top1_agreement"] == 1.0 for metrics in pairs.values())
    assert json.loads((tmp_path / "parity.json").read_text())["model"] == NAME


@pytest.fixture(scope="module")
def served(user_export, user_version, tmp_path_factory):
    config = config_copy(tmp_path_factory.mktemp("server") / "config", model=NAME)
    reference = load_reference(user_export)
    loaded = tf.saved_model.load(str(user_version))
    tensors, photos = reference["inputs"][:4], photo_bytes(reference)
    expected = {
        "logits": loaded.signatures["serving_default"](input=tf.constant(tensors))["output"].numpy(),
        "photos": {
            k: v.numpy() for k, v in loaded.signatures["predict_images"](image_bytes=tf.constant(photos)).items()
        },
    }
    with ServerProcess(embedded_flags(config, user_version.parents[1])) as server:
        yield server, tensors, photos, expected


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_served_answers_are_in_process_tensorflows(served, protocol):
    server, tensors, photos, expected = served
    client = RestClient(server.rest_url, timeout=60) if protocol == "rest" else GrpcClient(server.grpc_target, 60)
    with client:
        logits = client.predict(NAME, {"input": tensors})["output"]
        assert np.shape(logits) == (4, 10)
        np.testing.assert_allclose(logits, expected["logits"], atol=ATOL)
        got = client.predict(NAME, {"image_bytes": photos}, signature="predict_images")
    want = expected["photos"]
    np.testing.assert_array_equal(got["classes"], want["classes"])
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=ATOL)
    labels = [[x.decode() if isinstance(x, bytes) else x for x in row] for row in got["labels"]]
    assert labels == [[x.decode() for x in row] for row in want["labels"]]
    assert set(labels[0]) <= set((DATA / "labels.txt").read_text().split())
