"""The checks suite: the deployment files (GitHub workflow, Dockerfile, compose file, Kubernetes
manifests) through the tools their ecosystems publish, in the `checks` env, and the lanes'
consistency across them. Each check also runs on a deliberately broken copy and must fail there,
naming the problem: a check that cannot fail proves nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from checkrun import ROOT


@pytest.fixture
def copy_of(tmp_path):
    """copy_of('docker', ...) copies those paths of the checkout into tmp_path and returns the copy's root."""

    def make(*paths: str) -> Path:
        for rel in paths:
            src, dst = ROOT / rel, tmp_path / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(src, dst)
        return tmp_path

    return make
