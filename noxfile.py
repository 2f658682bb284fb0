"""Sessions for every stage, per lane. `nox -l` is the table of contents.

Each stage runs in an environment built from toolchain.lock and cached outside the clone
(see toolchain/pt2tf_toolchain/envs.py), so nox itself creates no virtualenvs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "toolchain"))

from pt2tf_toolchain.envs import ensure_env, installed_packages  # noqa: E402
from pt2tf_toolchain.lock import drift, load_lock, staleness  # noqa: E402
from pt2tf_toolchain.matrix import load_matrix  # noqa: E402

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests"]
nox.options.error_on_missing_interpreters = True

MATRIX = load_matrix()
ARTIFACTS = ROOT / "artifacts"
SOURCE_PATHS = [ROOT / "convert", ROOT / "toolchain"]


def env_python(session: nox.Session, env: str) -> str:
    """The interpreter of a locked env, built first if the cache lacks it; refuses a stale lock."""
    lock = load_lock()
    problems = staleness(MATRIX, lock)
    if problems:
        session.error("toolchain.lock is stale:\n  " + "\n  ".join(problems))
    path = ensure_env(lock, env)
    drifted = drift(lock.env(env), installed_packages(path), f"env '{env}' ({path})")
    if drifted:
        session.error(
            "an installed env drifted from toolchain.lock (changed by hand?):\n  "
            + "\n  ".join(drifted)
            + f"\nremove {path} and run again to rebuild it from the lock"
        )
    return str(path / "bin" / "python")


def run_in(session: nox.Session, env: str, *args: str) -> None:
    """Run `python *args` in a locked env, with the project's packages importable."""
    pythonpath = os.pathsep.join(str(p) for p in SOURCE_PATHS)
    session.run(env_python(session, env), *args, env={"PYTHONPATH": pythonpath}, external=True)


@nox.session(python=False)
def lock(session: nox.Session) -> None:
    """Resolve toolchain.toml against PyPI and rewrite toolchain.lock with sha256 hashes."""
    session.run(sys.executable, "-m", "pt2tf_toolchain", "lock", env={"PYTHONPATH": str(ROOT / "toolchain")})


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    """Check style with ruff (lint rules and formatting)."""
    session.run(sys.executable, "-m", "ruff", "check", ".")
    session.run(sys.executable, "-m", "ruff", "format", "--check", ".")


# Each suite runs in the env whose packages it imports.
TEST_SUITES = {"toolchain": "tools", "export": "export"}


@nox.session(python=False)
@nox.parametrize("suite", list(TEST_SUITES), ids=list(TEST_SUITES))
def tests(session: nox.Session, suite: str) -> None:
    """Run one test suite in its locked env."""
    env = TEST_SUITES[suite]
    args = ["-m", "pytest", f"tests/{suite}", *session.posargs]
    if env == "tools":
        session.run(sys.executable, *args)
    else:
        run_in(session, env, *args)


def _export(session: nox.Session, lane_name: str) -> None:
    lane = MATRIX.lane(lane_name)
    run_in(
        session,
        lane.env_for("export"),
        "-m",
        "pt2tf_convert.export",
        "--lane",
        lane.name,
        "--exporter",
        lane.exporter,
        "--opset",
        str(lane.opset),
        "--out",
        str(ARTIFACTS / lane.name),
        *session.posargs,
    )


def _register_lane_sessions() -> None:
    """`<stage>` runs the default lane; `<stage>-<lane>` runs one lane and carries the tag 'matrix'."""
    default = MATRIX.lane(None)

    def export_default(session: nox.Session) -> None:
        _export(session, default.name)

    export_default.__doc__ = f"Export ResNet18 to ONNX + PyTorch reference for the default lane ({default.name})."
    nox.session(python=False, name="export")(export_default)

    for lane in MATRIX.lanes.values():

        def export_lane(session: nox.Session, lane_name: str = lane.name) -> None:
            _export(session, lane_name)

        export_lane.__doc__ = f"Export for lane {lane.name}: {lane.exporter} exporter, opset {lane.opset}."
        nox.session(python=False, name=f"export-{lane.name}", tags=["matrix"])(export_lane)


_register_lane_sessions()
