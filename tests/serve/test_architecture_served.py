"""The second architecture served: MobileNetV3-Small, as nox converted this lane's fresh export of it
(PT2TF_TEST_ARCHITECTURE_MODELS), under its own name on the embedded server with docker/config's flags.

Its answers over REST and gRPC, both signatures, must be the in-process `tf.saved_model.load` answers,
as the conformance suite requires of ResNet18.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from pt2tf_convert.artifacts import load_reference, photo_bytes
from pt2tf_serve.client import GrpcClient, RestClient
from pt2tf_serve.config import single_model_config
from pt2tf_serve.process import ServerProcess, config_copy, embedded_flags

ARCHITECTURE = "mobilenet_v3_small"
ATOL = 2e-4  # the conformance suite's: batching sums in another order


@pytest.fixture(scope="module")
def arch_served(architecture_artifacts, converted_architecture, tmp_path_factory):
    version, models = converted_architecture, converted_architecture.parents[1]  # only read, by us and the server
    config = config_copy(tmp_path_factory.mktemp("server") / "config")
    one_model = single_model_config(ARCHITECTURE, f"/models/{ARCHITECTURE}")
    (config / "models.config").write_text(text_format.MessageToString(one_model))
    reference = load_reference(architecture_artifacts)
    loaded = tf.saved_model.load(str(version))
    tensors = reference["inputs"][:4]
    photos = photo_bytes(reference)
    expected = {
        "logits": loaded.signatures["serving_default"](input=tf.constant(tensors))["output"].numpy(),
        "photos": {
            k: v.numpy() for k, v in loaded.signatures["predict_images"](image_bytes=tf.constant(photos)).items()
        },
    }
    with ServerProcess(embedded_flags(config, models)) as server:
        yield server, tensors, photos, expected


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_both_signatures_answer_as_in_process(arch_served, protocol):
    server, tensors, photos, expected = arch_served
    client = RestClient(server.rest_url, timeout=60) if protocol == "rest" else GrpcClient(server.grpc_target, 60)
    with client:
        status = client.status(ARCHITECTURE)["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("1", "AVAILABLE")]
        logits = client.predict(ARCHITECTURE, {"input": tensors})["output"]
        np.testing.assert_allclose(logits, expected["logits"], atol=ATOL)
        got = client.predict(ARCHITECTURE, {"image_bytes": photos}, signature="predict_images")
    want = expected["photos"]
    np.testing.assert_array_equal(got["classes"], want["classes"])
    np.testing.assert_allclose(got["scores"], want["scores"], atol=ATOL)
    assert [[x.decode() if isinstance(x, bytes) else x for x in row] for row in got["labels"]] == [
        [x.decode() for x in row] for row in want["labels"]
    ]


def test_another_models_name_is_not_found(arch_served):
    server = arch_served[0]
    with RestClient(server.rest_url, timeout=60) as rest:
        status, body = rest.raw("GET", "/v1/models/resnet18")
    assert status == 404 and b"resnet18" in body
