"""Virtualenvs built from toolchain.lock, cached outside the clone and keyed by their content.

A fresh clone (every CI run) finds the env it needs already built when the lock has not
changed, as hatch and poetry do. An env is complete only once its marker file exists; a
half-built one (interrupted install) is removed and rebuilt.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .lock import Lock, LockedEnv, LockError, drift

MARKER = ".pt2tf-env-complete"


def cache_root() -> Path:
    """Where envs live: $PT2TF_CACHE, else $XDG_CACHE_HOME/pt2tf, else ~/.cache/pt2tf."""
    if os.environ.get("PT2TF_CACHE"):
        return Path(os.environ["PT2TF_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pt2tf"


def env_path(locked: LockedEnv, root: Path | None = None) -> Path:
    """The directory of an env: its name plus the digest of its locked contents."""
    return (root or cache_root()) / "envs" / f"{locked.name}-{locked.digest()[:16]}"


def _say(message: str) -> None:
    print(f"[pt2tf] {message}", file=sys.stderr, flush=True)


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lockfile"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _base_python() -> str:
    # A venv made from inside another venv must start from the real interpreter.
    return getattr(sys, "_base_executable", sys.executable)


def installed_packages(path: Path) -> dict[str, str]:
    """name → version of every distribution in the env at `path`."""
    code = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    result = subprocess.run([str(path / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def ensure_env(lock: Lock, name: str, root: Path | None = None) -> Path:
    """Build the env `name` from the lock unless a complete copy is cached; return its path."""
    locked = lock.env(name)
    path = env_path(locked, root)
    if (path / MARKER).exists():
        return path
    with _locked(path):
        if (path / MARKER).exists():
            return path
        if path.exists():
            _say(f"removing half-built env {path}")
            shutil.rmtree(path)
        started = time.monotonic()
        _say(f"building env '{name}' ({len(locked.packages)} packages from toolchain.lock) in {path}")
        install_env(locked, path)
        (path / MARKER).write_text(json.dumps({"env": name, "digest": locked.digest()}) + "\n")
        _say(f"env '{name}' ready in {time.monotonic() - started:.0f} s")
    return path


def install_env(locked: LockedEnv, path: Path) -> None:
    """Create a venv at `path` and install exactly the locked packages, hash-checked; no half env is left."""
    name = locked.name
    subprocess.run([_base_python(), "-m", "venv", str(path)], check=True)
    requirements = path / "requirements.lock.txt"
    requirements.write_text(locked.requirements())
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # --no-deps: the lock is already the whole closure; --require-hashes: every file pip
    # takes, from PyPI or from this machine's local wheel index, must match a locked sha256.
    cmd = [*pip, "--require-hashes", "--no-deps", "--only-binary", ":all:", "-r", str(requirements)]
    result = subprocess.run(cmd)
    if result.returncode != 0:
        shutil.rmtree(path, ignore_errors=True)
        raise LockError(
            f"installing env '{name}' from toolchain.lock failed (pip output above). A 'THESE PACKAGES "
            "DO NOT MATCH THE HASHES' error means a wheel pip found — on PyPI or in a local wheel "
            "index from pip.conf — differs from the one locked; compare its sha256 with "
            "toolchain.lock and run `make lock` if the registry changed."
        )
    problems = drift(locked, installed_packages(path), f"env '{name}'")
    if problems:
        shutil.rmtree(path, ignore_errors=True)
        raise LockError("installed env does not match toolchain.lock:\n  " + "\n  ".join(problems))


def prune_envs(lock: Lock, root: Path | None = None) -> list[Path]:
    """Remove cached envs that no env of the current lock uses; return what was removed."""
    keep = {env_path(env, root) for env in lock.envs.values()}
    envs_dir = (root or cache_root()) / "envs"
    removed = []
    for path in sorted(envs_dir.glob("*")) if envs_dir.exists() else []:
        if path.is_dir() and path not in keep:
            shutil.rmtree(path)
            removed.append(path)
        elif path.suffix == ".lockfile" and path.with_suffix("") not in keep:
            path.unlink()
    return removed
