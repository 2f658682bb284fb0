"""Lane suites (convert-<lane>, serve-<lane>) run in one lane's env; nox passes the lane and a fresh export of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pt2tf_toolchain.matrix import load_matrix


@pytest.fixture(scope="session")
def lane():
    name = os.environ.get("PT2TF_LANE")
    if not name:
        pytest.fail("PT2TF_LANE is not set: run this suite through nox: nox -s 'tests(convert-<lane>)'")
    return load_matrix().lane(name)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    path = Path(os.environ.get("PT2TF_TEST_ARTIFACTS", ""))
    if not (path / "model.onnx").is_file():
        pytest.fail(f"PT2TF_TEST_ARTIFACTS={path} holds no export; nox runs the export for this suite first")
    return path
