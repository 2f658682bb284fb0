"""Which model the load test and rollout send to: the export's, else the repository's only one, else an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pt2tf_convert.repository import RepositoryError, served_model


def _version(models: Path, name: str) -> None:
    (models / name / "1").mkdir(parents=True)


def test_the_exported_model_is_the_one_served(tmp_path):
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "export.json").write_text(
        json.dumps({"model": "mobilenet_v3_small", "preprocessing": {"source": "s", "resize": 256, "crop": 224,
                    "interpolation": "bilinear", "antialias": True, "mean": [0, 0, 0], "std": [1, 1, 1]}})
    )  # fmt: skip
    _version(tmp_path / "models", "resnet18")
    assert served_model(tmp_path / "artifacts", tmp_path / "models") == "mobilenet_v3_small"


def test_an_export_from_before_models_were_a_parameter_is_resnet18(tmp_path):
    (tmp_path / "export.json").write_text(json.dumps({"lane": "onnx2tf"}))
    assert served_model(tmp_path, None) == "resnet18"


def test_without_an_export_the_repositorys_only_model(tmp_path):
    _version(tmp_path / "models", "efficientnet_b0")
    (tmp_path / "models" / "empty").mkdir()  # no version: not a model TF Serving would load
    assert served_model(tmp_path / "no-export", tmp_path / "models") == "efficientnet_b0"


def test_several_models_and_no_export_ask_for_the_name(tmp_path):
    for name in ("resnet18", "swin_t"):
        _version(tmp_path / "models", name)
    with pytest.raises(RepositoryError, match=r"several models \(resnet18, swin_t\): pass --model NAME"):
        served_model(tmp_path / "no-export", tmp_path / "models")
    with pytest.raises(RepositoryError, match="run the export and convert stages, or pass --model NAME"):
        served_model(tmp_path / "no-export", tmp_path / "nothing")
    with pytest.raises(
        RepositoryError, match=r"no export\.json in .*: run the export stage, or pass the served model's"
    ):
        served_model(tmp_path / "no-export", None)
