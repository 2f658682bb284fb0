"""A TF Serving model repository: <base>/<model_name>/<integer version>/.

A version directory appears in one rename, complete, and is never overwritten, so a server
polling the base path never loads half a model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# What convert writes into every version it publishes: lane, tools, weights, parity.
MANIFEST_FILE = "pt2tf_manifest.json"


class RepositoryError(RuntimeError):
    """The version asked for cannot be published."""


def versions(model_dir: Path) -> list[int]:
    """Integer versions present (TF Serving ignores any other directory name)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def served_model(artifacts: Path | None, models: Path | None) -> str:
    """The model a lane's later stages (serve check, load test, rollout) work on: the one its export holds
    (artifacts/export.json), else the only model in its repository; an error saying what to pass otherwise."""
    from .preprocessing import exported_model

    export = artifacts / "export.json" if artifacts is not None else None
    if export is not None and export.is_file():
        return exported_model(json.loads(export.read_text()))[0]
    held = sorted(p.name for p in models.iterdir() if versions(p)) if models is not None and models.is_dir() else []
    if len(held) == 1:
        return held[0]
    where = f"no export.json in {artifacts}" if artifacts is not None else "no export given"
    if held:
        raise RepositoryError(f"{where}, and {models} holds several models ({', '.join(held)}): pass --model NAME")
    if models is None:
        raise RepositoryError(f"{where}: run the export stage, or pass the served model's name (--model NAME)")
    raise RepositoryError(
        f"{where}, and no model version in {models}: run the export and convert stages, or pass --model NAME"
    )


def resolve_version(model_dir: Path, version: int | None) -> Path:
    """The directory of `version` (default: the newest); exits with what is missing when it is not there."""
    found = versions(model_dir)
    if not found:
        raise SystemExit(f"error: {model_dir} has no model version — run the convert stage first")
    number = version if version is not None else found[-1]
    if number not in found:
        raise SystemExit(f"error: {model_dir} has no version {number} (it has {found})")
    return model_dir / str(number)


def read_manifest(version_dir: Path) -> dict:
    """The manifest convert published with the version; exits saying so when the version has none."""
    path = version_dir / "assets.extra" / MANIFEST_FILE
    if not path.is_file():
        raise SystemExit(
            f"error: {path} is missing: {version_dir} was not published by this project's convert stage "
            "(run nox -s convert to publish one)"
        )
    return json.loads(path.read_text())


def next_version(model_dir: Path) -> int:
    return max(versions(model_dir), default=0) + 1


@contextmanager
def staged_version(model_dir: Path, version: int | None = None) -> Iterator[tuple[Path, int]]:
    """Yield (staging directory, version); on success the staging directory becomes the version.

    Staging lives beside the versions under a dot-name TF Serving does not read. On any
    failure, KeyboardInterrupt included, it is removed and no version directory appears.
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir) if version is None else version
    target = model_dir / str(version)
    if target.exists():
        raise RepositoryError(f"{target} exists; versions are never overwritten — omit --version to take the next one")
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
    try:
        yield staging, version
        os.rename(staging, target)  # atomic; fails if another writer took the version meanwhile
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
