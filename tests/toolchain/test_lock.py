"""The matrix, the lock made from it, and the environments built from the lock agree."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pt2tf_toolchain.envs import MARKER, cache_root, env_path, installed_packages
from pt2tf_toolchain.lock import LOCK_PATH, drift, load_lock, parse_requirements, render_lock, staleness
from pt2tf_toolchain.matrix import MATRIX_PATH, MatrixError, load_matrix

MATRIX = load_matrix()
LOCK = load_lock()


def test_lock_is_fresh_against_the_matrix():
    assert staleness(MATRIX, LOCK) == []


def test_every_locked_package_has_a_sha256():
    for env in LOCK.envs.values():
        for pkg in env.packages.values():
            assert pkg.hashes, f"{env.name}: {pkg.name} has no hash"
            assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pkg.hashes)


def test_lock_file_is_exactly_what_the_generator_writes():
    assert render_lock(LOCK, MATRIX) == LOCK_PATH.read_text()


@pytest.mark.parametrize(
    ("lane", "old", "new"),
    [("onnx2tf", "tensorflow==2.19.0", "tensorflow==2.19.1"), ("onnx-tf", "onnx==1.14.1", "onnx==1.15.0")],
)
def test_editing_one_pin_makes_the_check_name_lane_and_package(tmp_path: Path, lane: str, old: str, new: str):
    text = MATRIX_PATH.read_text()
    assert text.count(f'"{old}"') == 1
    edited = tmp_path / "toolchain.toml"
    edited.write_text(text.replace(f'"{old}"', f'"{new}"'))
    problems = staleness(load_matrix(edited), LOCK)
    assert len(problems) == 1
    name = new.split("==")[0]
    assert f"lane '{lane}'" in problems[0]
    assert f"pins {new} but toolchain.lock has {name}==" in problems[0]
    assert "make lock" in problems[0]


def test_adding_a_package_makes_the_check_fail(tmp_path: Path):
    edited = tmp_path / "toolchain.toml"
    edited.write_text(
        MATRIX_PATH.read_text().replace(
            '"rich==15.0.0",\n]\n\n[envs.onnx-tf]', '"rich==15.0.0",\n"six==1.17.0",\n]\n\n[envs.onnx-tf]'
        )
    )
    problems = staleness(load_matrix(edited), LOCK)
    assert problems and "six==1.17.0" in problems[0] and "lanes 'onnx-tf', 'onnx2tf', 'latest'" in problems[0]


def test_loose_pins_are_refused(tmp_path: Path):
    edited = tmp_path / "toolchain.toml"
    edited.write_text(MATRIX_PATH.read_text().replace('"tensorflow==2.19.0"', '"tensorflow>=2.19"'))
    with pytest.raises(MatrixError, match=r"'tensorflow>=2.19' is not an exact pin"):
        load_matrix(edited)


def test_lock_check_command_exits_nonzero_on_a_stale_lock(tmp_path: Path):
    # Run the real command line against a copy of the repository's toolchain files.
    root = tmp_path / "repo"
    shutil.copytree(MATRIX_PATH.parent / "toolchain", root / "toolchain", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(LOCK_PATH, root / "toolchain.lock")
    (root / "toolchain.toml").write_text(MATRIX_PATH.read_text().replace("torch==2.14.1", "torch==2.14.0"))
    cmd = [sys.executable, "-m", "pt2tf_toolchain", "check"]
    result = subprocess.run(cmd, cwd=root, env={"PYTHONPATH": str(root / "toolchain")}, capture_output=True, text=True)
    assert result.returncode == 1
    assert "torch==2.14.0 but toolchain.lock has torch==2.14.1" in result.stderr


def test_parse_requirements_reads_uv_output():
    text = (
        "numpy==1.26.4 \\\n    --hash=sha256:" + "a" * 64 + " \\\n    --hash=sha256:" + "b" * 64 + "\n"
        "Onnx_Graphsurgeon==0.5.8 \\\n    --hash=sha256:" + "c" * 64 + "\n    # via onnx2tf\n"
    )
    parsed = parse_requirements(text)
    assert parsed["numpy"].version == "1.26.4" and len(parsed["numpy"].hashes) == 2
    assert parsed["onnx-graphsurgeon"].hashes == ("sha256:" + "c" * 64,)


def test_drift_names_env_and_package():
    locked = LOCK.env("onnx2tf")
    installed = {pkg.name: pkg.version for pkg in locked.packages.values()}
    assert drift(locked, installed, "env 'onnx2tf'") == []
    installed["tensorflow"] = "2.20.0"
    installed["left-pad"] = "1.0"
    problems = drift(locked, installed, "env 'onnx2tf'")
    assert "env 'onnx2tf': tensorflow is 2.20.0 but toolchain.lock has 2.19.0" in problems
    assert "env 'onnx2tf': left-pad==1.0 is installed but not in toolchain.lock" in problems


def test_latest_lane_installs_onnx2tf_without_its_dependencies():
    onnx2tf = LOCK.env("latest").packages["onnx2tf"]
    assert onnx2tf.version == "1.28.8" and onnx2tf.no_deps


@pytest.mark.parametrize("env", sorted(MATRIX.envs))
def test_installed_envs_match_the_lock(env: str):
    path = env_path(LOCK.env(env))
    if not (path / MARKER).exists():
        pytest.skip(f"env '{env}' is not built in {cache_root()} yet (a stage that needs it builds it)")
    assert drift(LOCK.env(env), installed_packages(path), f"env '{env}'") == []


@pytest.mark.parametrize("env", sorted(MATRIX.envs))
def test_no_env_installs_two_tensorflows(env: str):
    # tensorflow and tensorflow-cpu write the same files; tf-keras and tensorflow-serving-api
    # require `tensorflow`, so beside tensorflow-cpu they must be installed with --no-deps.
    names = set(LOCK.env(env).packages)
    assert not {"tensorflow", "tensorflow-cpu"} <= names, f"env '{env}' locks both tensorflow and tensorflow-cpu"


def test_the_github_workflow_runs_every_lane_through_existing_make_targets():
    # actionlint cannot be installed here (its package downloads the binary from GitHub at
    # build time), so this checks what would silently rot: lane names and make targets.
    root = MATRIX_PATH.parent
    workflow = (root / ".github" / "workflows" / "lanes.yml").read_text()
    lanes = re.search(r"lane: \[([^\]]*)\]", workflow).group(1)
    assert [x.strip() for x in lanes.split(",")] == list(MATRIX.lanes)
    makefile = (root / "Makefile").read_text()
    for target in set(re.findall(r"run: make ([\w-]+)", workflow)):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.MULTILINE), f"make {target} does not exist"
