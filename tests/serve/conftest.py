"""The serve suite: the lane's real converted model, served by real servers on loopback ports.

A session fixture copies nox's conversion of the lane's fresh export into a model repository with two
versions (both copies of it), as tests/serve/conformance/models.config expects, and computes the
in-process `tf.saved_model.load` answers every served answer is compared with. Each server runs
in its own process on ports the OS hands out and is stopped in teardown, also on failure.

Setting PT2TF_CONFORMANCE_REST and PT2TF_CONFORMANCE_GRPC points the conformance suite at an
external server (the real tensorflow/serving image) instead of starting the embedded one, and
PT2TF_CONFORMANCE_MODELS at the model repository that server loaded.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from pt2tf_convert.artifacts import load_reference, photo_bytes
from pt2tf_serve.process import ServerProcess, config_copy, embedded_flags

CONFORMANCE_CONFIG = Path(__file__).parent / "conformance" / "models.config"
MODEL = "resnet18"


@dataclass
class Expected:
    """In-process answers of version 1, via tf.saved_model.load, for the reference inputs."""

    tensors: np.ndarray  # [8, 3, 224, 224] float32
    logits: np.ndarray  # [8, 1000]
    photos: list[bytes]  # encoded JPEG/PNG files
    photo_outputs: dict[str, np.ndarray]  # predict_images outputs for `photos`
    labels: list[str]


@dataclass
class Target:
    """A server to test: its addresses, and the process when this suite started it."""

    rest_url: str
    grpc_target: str
    model_name: str
    reference: dict[str, np.ndarray]
    batching: bool | None  # None: an external server, configured elsewhere
    server: ServerProcess | None = None


@pytest.fixture(scope="session")
def repository(request, tmp_path_factory) -> Path:
    """models/ with resnet18/1 (nox's conversion of this lane's fresh export) and resnet18/2, copies of it, as the
    conformance layout wants.

    PT2TF_CONFORMANCE_MODELS names the repository an external server serves instead, so the
    in-process answers come from the very files it loaded.
    """
    served = os.environ.get("PT2TF_CONFORMANCE_MODELS")
    if served:
        missing = [v for v in ("1", "2") if not (Path(served) / MODEL / v / "saved_model.pb").is_file()]
        if missing:
            pytest.fail(
                f"PT2TF_CONFORMANCE_MODELS={served} lacks {MODEL}/{' and '.join(missing)} (see conformance/README.md)"
            )
        return Path(served)
    converted = request.getfixturevalue("converted")  # asked here: an external server's run has no conversion
    models = tmp_path_factory.mktemp("models")
    for version in ("1", "2"):
        shutil.copytree(converted, models / MODEL / version)
    return models


@pytest.fixture(scope="session")
def reference(artifacts) -> dict[str, np.ndarray]:
    return load_reference(artifacts)


@pytest.fixture(scope="session")
def expected(repository, reference) -> Expected:
    loaded = tf.saved_model.load(str(repository / MODEL / "1"))
    tensors = reference["inputs"][:8]
    logits = loaded.signatures["serving_default"](input=tf.constant(tensors))["output"].numpy()
    photos = photo_bytes(reference)
    outputs = loaded.signatures["predict_images"](image_bytes=tf.constant(photos))
    photo_outputs = {name: value.numpy() for name, value in outputs.items()}
    return Expected(tensors, logits, photos, photo_outputs, [str(x) for x in reference["labels"]])


def _start(tmp_path_factory, repository: Path, reference, batching: bool) -> ServerProcess:
    config = config_copy(tmp_path_factory.mktemp("server") / "config", CONFORMANCE_CONFIG)
    extra = ["--allow_version_labels_for_unavailable_models=true"]
    if not batching:
        extra += ["--enable_batching=false", "--batching_parameters_file="]
    return ServerProcess(embedded_flags(config, repository, *extra)).start()


def _external(reference) -> Target | None:
    rest, grpc_target = os.environ.get("PT2TF_CONFORMANCE_REST"), os.environ.get("PT2TF_CONFORMANCE_GRPC")
    if not rest and not grpc_target:
        return None
    if not (rest and grpc_target):
        pytest.fail("set both PT2TF_CONFORMANCE_REST and PT2TF_CONFORMANCE_GRPC to test an external server")
    return Target(rest.rstrip("/"), grpc_target, MODEL, reference, None)


@pytest.fixture(scope="session")
def served(tmp_path_factory, repository, reference):
    """The embedded server with batching on (docker/config as is), or the external target."""
    external = _external(reference)
    if external is not None:
        yield external
        return
    server = _start(tmp_path_factory, repository, reference, batching=True)
    try:
        yield Target(server.rest_url, server.grpc_target, MODEL, reference, True, server)
    finally:
        server.close()


@pytest.fixture(scope="session")
def served_unbatched(tmp_path_factory, repository, reference):
    """The embedded server with batching off."""
    if _external(reference) is not None:
        pytest.skip("an external target is tested as it is configured; batching off needs the embedded server")
    server = _start(tmp_path_factory, repository, reference, batching=False)
    try:
        yield Target(server.rest_url, server.grpc_target, MODEL, reference, False, server)
    finally:
        server.close()


@pytest.fixture(params=["batching", "no-batching"])
def target(request) -> Target:
    """Each conformance test runs against the server with batching on and with it off."""
    return request.getfixturevalue("served" if request.param == "batching" else "served_unbatched")
