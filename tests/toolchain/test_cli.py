"""The toolchain's command line as the Dockerfile and the compose pipeline call it."""

from __future__ import annotations

import pytest
from pt2tf_toolchain.__main__ import main
from pt2tf_toolchain.matrix import load_matrix

MATRIX = load_matrix()


@pytest.mark.parametrize("lane", list(MATRIX.lanes))
def test_lane_prints_what_the_container_pipeline_reads(lane, capsys):
    expected = MATRIX.lane(lane)
    for field in ("exporter", "opset", "converter", "serving_image"):
        assert main(["lane", lane, field]) == 0
        assert capsys.readouterr().out.strip() == str(getattr(expected, field))


def test_lane_refuses_an_unknown_lane(capsys):
    assert main(["lane", "nope", "opset"]) == 2
    assert "unknown lane 'nope'" in capsys.readouterr().err


def test_install_refuses_a_directory_that_holds_something(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["install", "checks", str(tmp_path)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_install_refuses_an_env_the_lock_does_not_have(tmp_path, capsys):
    assert main(["install", "nope", str(tmp_path / "venv")]) == 2
    assert "toolchain.lock has no env 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "venv").exists()
