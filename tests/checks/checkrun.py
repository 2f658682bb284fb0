"""Helpers of the checks suite: run a tool of the checks env, break a copied file in one place."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the checks env: zizmor, check-jsonschema, hadolint, kubernetes-validate


@dataclass
class Result:
    code: int
    output: str  # stdout and stderr together: the tools differ in where they report


def run(*args: str | Path, cwd: Path | None = None) -> Result:
    """Run a command to completion (bounded), never through a shell."""
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=300)
    return Result(done.returncode, done.stdout + done.stderr)


def tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not in the checks env ({BIN}): run this suite through nox -s 'tests(checks)'")
    return path


def replace_once(path: Path, old: str, new: str) -> None:
    """Break a copy in one named place; fails if `old` is not there exactly once (the test would prove nothing)."""
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: expected {old!r} exactly once"
    path.write_text(text.replace(old, new))
