"""Read what the export stage wrote, with numpy only (every env has it; only one has torch)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


class ArtifactsError(RuntimeError):
    """The export's output is missing; the message says which stage to run."""


def load_reference(artifacts: Path) -> dict[str, np.ndarray]:
    """reference.npz as a dict of arrays (no pickles)."""
    path = artifacts / "reference.npz"
    if not path.is_file():
        raise ArtifactsError(f"{path} is missing: run the export stage for this lane first (nox -s export)")
    with np.load(path, allow_pickle=False) as ref:
        return {key: ref[key] for key in ref.files}


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def photo_bytes(ref: dict[str, np.ndarray]) -> list[bytes]:
    """The photos' encoded files, as export stored them."""
    offsets, blob = ref["photo_offsets"], ref["photo_bytes"]
    return [blob[offsets[i] : offsets[i + 1]].tobytes() for i in range(len(offsets) - 1)]


def weights_description(export_manifest: dict) -> str:
    """The export's one line on which weights the answers come from."""
    if "weights_description" not in export_manifest:
        raise ArtifactsError("export.json does not say which weights it holds (an older export): run the export again")
    return export_manifest["weights_description"]


def read_export(artifacts: Path) -> dict:
    """export.json, the export's manifest."""
    path = artifacts / "export.json"
    if not path.is_file():
        raise ArtifactsError(f"{path} is missing: run the export stage for this lane first (nox -s export)")
    return json.loads(path.read_text())


def check_exported_model(artifacts: Path, model: str | None) -> None:
    """Refuse an export of another model than `model` (None: any), naming both and the export to run."""
    from .preprocessing import exported_model

    if model is None:
        return
    held, _ = exported_model(read_export(artifacts))
    if held != model:
        raise ArtifactsError(
            f"--model {model}: {artifacts} holds an export of {held}; export {model} first "
            f"(nox -s export -- --model {model}, or pt2tf_convert.export --model {model})"
        )
