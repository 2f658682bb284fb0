"""Lane suites (convert-<lane>, serve-<lane>) run in one lane's env; nox passes the lane, a fresh export of it and
that export converted (one conversion per lane and run, which the lane's suites share and only read)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pt2tf_toolchain.matrix import load_matrix

DEFAULT_LANE_ONLY = "default_lane_only"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        f"{DEFAULT_LANE_ONLY}(what): the case tests `what`, the project's own logic (the server's, the measuring "
        "code's, verify's checks, convert's publishing), the same in every lane's env: it runs on the default lane "
        "only",
    )


def pytest_collection_modifyitems(config, items):
    """A mark, not a fixture: a lane suite's session fixtures (a repository, answers) would be set up before any
    fixture could skip."""
    default = load_matrix().default_lane
    lane = os.environ.get("PT2TF_LANE", default)
    for item in items:
        mark = item.get_closest_marker(DEFAULT_LANE_ONLY)
        if mark is not None and lane != default:
            item.add_marker(pytest.mark.skip(reason=f"lane {lane}: the default lane ({default}) tests {mark.args[0]}"))


@pytest.fixture(scope="session")
def lane():
    name = os.environ.get("PT2TF_LANE")
    if not name:
        pytest.fail("PT2TF_LANE is not set: run this suite through nox: nox -s 'tests(convert-<lane>)'")
    return load_matrix().lane(name)


def _exported(variable: str, model: str) -> Path:
    """The folder `variable` names, which nox filled with this run's fresh export of `model`."""
    path = Path(os.environ.get(variable, ""))
    if not (path / "model.onnx").is_file():
        pytest.fail(f"{variable}={path} holds no export; nox exports {model} for this suite first")
    return path


@pytest.fixture(scope="session")
def artifacts() -> Path:
    return _exported("PT2TF_TEST_ARTIFACTS", "resnet18")


@pytest.fixture(scope="session")
def architecture_artifacts() -> Path:
    """MobileNetV3-Small, exported by nox in this lane's export env."""
    return _exported("PT2TF_TEST_ARCHITECTURE_ARTIFACTS", "mobilenet_v3_small")


def _converted(variable: str, model: str) -> Path:
    """Version 1 of `model` in the repository `variable` names, which nox converted from this run's fresh export."""
    repository = Path(os.environ.get(variable, ""))
    version = repository / model / "1"
    if not (version / "saved_model.pb").is_file():
        pytest.fail(
            f"{variable}={repository} holds no {model}/1; nox converts this lane's fresh export for this suite first"
        )
    return version


@pytest.fixture(scope="session")
def converted() -> Path:
    """ResNet18's version 1, converted by nox from PT2TF_TEST_ARTIFACTS: read it; copy it to change it."""
    return _converted("PT2TF_TEST_MODELS", "resnet18")


@pytest.fixture(scope="session")
def converted_architecture() -> Path:
    """MobileNetV3-Small's version 1, converted by nox from PT2TF_TEST_ARCHITECTURE_ARTIFACTS: read it only."""
    return _converted("PT2TF_TEST_ARCHITECTURE_MODELS", "mobilenet_v3_small")


@pytest.fixture
def bf16_refusal_expected():
    """A function giving the refusal a bf16 config, flag or variant must meet here, as a regex, or None where bf16
    must run. Called when the test has set up its CPU and environment: the CPU as the server reads it (PT2TF_CPUINFO
    or /proc/cpuinfo) comes first, naming the CPU; then TF_ENABLE_ONEDNN_OPTS=0 (or false), naming the variable,
    which a user may have set to quiet TensorFlow's oneDNN notice."""

    def expected() -> str | None:
        from pt2tf_serve.cpu import cpu_info

        info = cpu_info()
        if not info.bf16:
            return rf"avx512_bf16 or amx_bf16 .*\({re.escape(info.model)}\) has neither"
        if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower() in ("0", "false"):
            return "TF_ENABLE_ONEDNN_OPTS=0 turns oneDNN off"
        return None

    return expected
