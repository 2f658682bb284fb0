"""The user's own model at the export stage: `--model package.module:factory` with a weights file and a
preprocessing spec, and each kind of bad input refused with what to do, leaving nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pt2tf_convert import export as export_mod
from pt2tf_convert.export import ExportError, export
from pt2tf_convert.model import ModelError, WeightsError
from pt2tf_convert.reference import reference_inputs
from pt2tf_convert.user_model import SpecError, load_spec

DATA = Path(__file__).resolve().parents[1] / "data" / "user_model"
PACKAGE = "pt2tf_test_usernets"
FACTORY = f"{PACKAGE}.tiny_shuffle:build"


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A temporary package holding the user's module, importable for this module's tests."""
    root = tmp_path_factory.mktemp("user")
    (root / PACKAGE).mkdir()
    (root / PACKAGE / "__init__.py").write_text("")
    shutil.copy(DATA / "tiny_shuffle.py", root / PACKAGE / "tiny_shuffle.py")
    shutil.copy(DATA / "spec.toml", root / "spec.toml")
    shutil.copy(DATA / "labels.txt", root / "labels.txt")
    sys.path.insert(0, str(root))
    from pt2tf_test_usernets import tiny_shuffle

    torch.save(tiny_shuffle.trained_like().state_dict(), root / "weights.pt")
    yield root
    sys.path.remove(str(root))
    for name in [m for m in sys.modules if m.startswith(PACKAGE)]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def user_export(package, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export") / "lane"
    manifest = export("onnx2tf", "dynamo", 18, out, str(package / "weights.pt"), model_name=FACTORY,
                      spec=package / "spec.toml")  # fmt: skip
    return out, manifest


def test_the_export_records_the_factory_spec_and_labels(user_export, package):
    out, manifest = user_export
    assert json.loads((out / "export.json").read_text()) == manifest
    assert manifest["model"] == "tiny_shuffle" and manifest["factory"] == FACTORY
    assert manifest["num_classes"] == 10 and manifest["output"]["shape"][1] == 10
    assert manifest["labels_source"] == str(package / "labels.txt")
    assert manifest["preprocessing"] == {"source": "spec spec.toml", "resize": 232, "crop": 224,
                                         "interpolation": "bicubic", "antialias": True, "mean": [0.5, 0.5, 0.5],
                                         "std": [0.25, 0.25, 0.25]}  # fmt: skip
    assert manifest["weights"] == str(package / "weights.pt") and manifest["weights_sha256"]
    with np.load(out / "reference.npz") as ref:
        assert list(ref["labels"])[:2] == ["tench", "goldfish"] and ref["logits"].shape == (16, 10)
        # The photos went through the spec's transform (torchvision's own), not ImageNet's.
        spec = load_spec(package / "spec.toml", FACTORY)
        expected = reference_inputs(0, transform=spec.transform()).inputs
        np.testing.assert_array_equal(ref["inputs"], expected)


def test_seeded_weights_calibrate_the_users_classifier_for_its_class_count(package, tmp_path):
    manifest = export("x", "torchscript", 13, tmp_path / "out", model_name=FACTORY, spec=package / "spec.toml")
    assert manifest["weights"] == "seeded" and manifest["classifier_calibration"]["rank"] > 0
    assert manifest["reference_answers"]["distinct_top1"] >= 5  # half of 10 classes


def _refused(tmp_path: Path, error: type, match: str, exporter: str = "dynamo", opset: int = 18, **kwargs) -> None:
    """`export` with `kwargs` fails with `error` matching `match` and leaves the previous export as it was."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.onnx").write_bytes(b"previous")
    kwargs.setdefault("model_name", FACTORY)
    with pytest.raises(error, match=match):
        export("x", exporter, opset, tmp_path / "out", **kwargs)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["model.onnx"]
    assert (tmp_path / "out" / "model.onnx").read_bytes() == b"previous"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_a_module_that_does_not_import_is_named_with_the_path_to_set(package, tmp_path):
    _refused(tmp_path, ModelError, r"cannot import no_such_pkg\.net .*put the folder that holds it on PYTHONPATH",
             model_name="no_such_pkg.net:build", spec=package / "spec.toml")  # fmt: skip


def test_a_factory_that_is_missing_not_callable_or_not_a_module_is_refused(package, tmp_path):
    spec = package / "spec.toml"
    with pytest.raises(ModelError, match=r"tiny_shuffle \(.*\) has no nope"):
        export("x", "dynamo", 18, tmp_path / "a", model_name=f"{PACKAGE}.tiny_shuffle:nope", spec=spec)
    with pytest.raises(ModelError, match="not_a_function is a int, not a function"):
        export("x", "dynamo", 18, tmp_path / "b", model_name=f"{PACKAGE}.tiny_shuffle:not_a_function", spec=spec)
    _refused(tmp_path, ModelError, "returned a str, not a torch.nn.Module",
             model_name=f"{PACKAGE}.tiny_shuffle:not_a_module", spec=spec)  # fmt: skip
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_weights_of_another_module_name_the_keys_and_shapes_that_differ(package, tmp_path):
    from pt2tf_test_usernets import tiny_shuffle

    state = tiny_shuffle.TinyShuffleNet(num_classes=7).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["stem.0.weight"]
    torch.save(state, tmp_path / "other.pt")
    _refused(tmp_path, WeightsError,
             r"not a state_dict of what .*: 1 missing \(e\.g\. stem\.0\.weight\); "
             r"1 unexpected \(e\.g\. extra\.weight\); "
             r"2 of another shape \(e\.g\. head\.weight \[7, 32\] ≠ \[10, 32\], head\.bias \[7\] ≠ \[10\]\)",
             weights=str(tmp_path / "other.pt"), spec=package / "spec.toml")  # fmt: skip


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"crop": None}, r"missing crop; a spec gives all of"),
        ({"interpolation": '"nearest"'}, r"interpolation = 'nearest'; one of bilinear, bicubic"),
        ({"crop": "256"}, r"crop = 256; the serving contract's input is \[batch, 3, 224, 224\]"),
        ({"mean": "[0.5, 0.5]"}, r"mean = \[0\.5, 0\.5\]; three numbers, one per RGB channel"),
        ({"labels": '"missing.txt"'}, r"labels = .*missing\.txt: no such file"),
        ({"labels": None}, r"answers 10 classes: give the spec a labels file with 10 lines"),
        ({"sizes": "1"}, r"unknown field sizes"),
        ({"name": '"a/b"'}, r"name = 'a/b'; letters, digits"),
    ],
    ids=["missing-field", "interpolation", "crop", "mean", "labels-file", "no-labels", "unknown-field", "name"],
)
def test_a_bad_spec_is_refused_naming_the_field(package, tmp_path, change, match):
    lines = {line.split(" = ")[0]: line for line in (package / "spec.toml").read_text().splitlines() if " = " in line}
    for key, value in change.items():
        lines.pop(key, None)
        if value is not None:
            lines[key] = f"{key} = {value}"
    (tmp_path / "spec.toml").write_text("\n".join(lines.values()) + "\n")
    shutil.copy(package / "labels.txt", tmp_path / "labels.txt")
    _refused(tmp_path, SpecError, match, weights=str(package / "weights.pt"), spec=tmp_path / "spec.toml")


def test_labels_that_do_not_count_the_outputs_are_refused(package, tmp_path):
    (tmp_path / "spec.toml").write_text((package / "spec.toml").read_text())
    (tmp_path / "labels.txt").write_text("cat\ndog\n\nfish\n")
    _refused(tmp_path, SpecError, r"labels\.txt: line 3 is blank", spec=tmp_path / "spec.toml")
    (tmp_path / "labels.txt").write_text("a\nb\nc\nd\ne\nf\n")
    shutil.rmtree(tmp_path / "out")
    _refused(tmp_path, SpecError, "6 class names for a model that answers 10 classes", spec=tmp_path / "spec.toml")


def test_a_spec_is_needed_for_a_users_model_and_refused_for_torchvisions(package, tmp_path):
    _refused(tmp_path, SpecError, "your own model needs --spec FILE")
    with pytest.raises(SpecError, match="mobilenet_v3_small's preprocessing and labels are its torchvision weights'"):
        export("x", "dynamo", 18, tmp_path / "b", model_name="mobilenet_v3_small", spec=package / "spec.toml")


def test_a_construct_the_exporter_cannot_take_is_named_at_export(package, tmp_path):
    (package / PACKAGE / "fourier.py").write_text(
        "import torch\n\n\nclass Fourier(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.head = torch.nn.Linear(3 * 224 * 113, 10)\n\n"
        "    def forward(self, x):\n        return self.head(torch.fft.rfft2(x).abs().flatten(1))\n\n\n"
        "def build():\n    return Fourier()\n"
    )
    (tmp_path / "spec.toml").write_text((package / "spec.toml").read_text())
    shutil.copy(package / "labels.txt", tmp_path / "labels.txt")
    _refused(tmp_path, ExportError, r"the torchscript exporter \(opset 13\) cannot take tiny_shuffle .*fft_rfft2",
             "torchscript", 13, model_name=f"{PACKAGE}.fourier:build", spec=tmp_path / "spec.toml")  # fmt: skip


def test_command_line_names_the_bad_input_and_writes_nothing(package, tmp_path):
    cmd = [sys.executable, "-m", "pt2tf_convert.export", "--lane", "x", "--exporter", "dynamo", "--opset", "18"]
    cmd += ["--out", str(tmp_path / "out"), "--model", f"{PACKAGE}.tiny_shuffle:not_a_module"]
    cmd += ["--spec", str(package / "spec.toml")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(export_mod.__file__).parents[1]), str(package)])}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert result.returncode == 1 and not (tmp_path / "out").exists()
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --model {PACKAGE}.tiny_shuffle:not_a_module: returned a str, not a torch.nn.Module; the factory must "
        "return the model (e.g. `return MyNet(num_classes=10)`)"
    )
