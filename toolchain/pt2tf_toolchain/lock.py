"""toolchain.lock: every package of every environment, exact version and sha256 hashes.

Generated from toolchain.toml by `uv pip compile --generate-hashes`; checked against the
matrix (stale lock) and against installed environments (drift).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .matrix import ROOT, Env, Matrix, canonical_name

LOCK_PATH = ROOT / "toolchain.lock"
LOCK_FORMAT = 1

_REQ_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
_HASH = re.compile(r"--hash=(sha256:[0-9a-f]{64})")


class LockError(RuntimeError):
    """toolchain.lock is missing, stale against toolchain.toml, or does not match an install."""


@dataclass(frozen=True)
class Locked:
    name: str
    version: str
    hashes: tuple[str, ...]
    no_deps: bool = False


@dataclass(frozen=True)
class LockedEnv:
    name: str
    inputs: str
    packages: dict[str, Locked]

    def digest(self) -> str:
        """Content digest of the resolved set: names the env's directory in the cache."""
        doc = [[p.name, p.version, sorted(p.hashes)] for p in sorted(self.packages.values(), key=lambda p: p.name)]
        return hashlib.sha256(json.dumps(doc).encode()).hexdigest()

    def requirements(self) -> str:
        """The env as a pip requirements file with hashes (installed with --no-deps)."""
        lines = []
        for pkg in sorted(self.packages.values(), key=lambda p: p.name):
            lines.append(f"{pkg.name}=={pkg.version} \\")
            lines.extend(f"    --hash={h} \\" for h in pkg.hashes[:-1])
            lines.append(f"    --hash={pkg.hashes[-1]}")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Lock:
    python: str
    platform: str
    envs: dict[str, LockedEnv]

    def env(self, name: str) -> LockedEnv:
        if name not in self.envs:
            raise LockError(f"toolchain.lock has no env '{name}' — run `make lock`")
        return self.envs[name]


def parse_requirements(text: str, no_deps: bool = False) -> dict[str, Locked]:
    """Parse `uv pip compile --generate-hashes` output into locked packages."""
    packages: dict[str, Locked] = {}
    current: tuple[str, str] | None = None
    hashes: list[str] = []

    def flush() -> None:
        if current:
            packages[current[0]] = Locked(current[0], current[1], tuple(sorted(hashes)), no_deps)

    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("--hash") else raw.strip()
        if not line:
            continue
        match = _REQ_LINE.match(line)
        if match:
            flush()
            current, hashes = (canonical_name(match.group(1)), match.group(2)), []
        hashes.extend(_HASH.findall(line))
    flush()
    return packages


def _compile(requirements: tuple[str, ...], matrix: Matrix, uv: str, no_deps: bool) -> dict[str, Locked]:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "requirements.in"
        src.write_text("\n".join(requirements) + "\n")
        cmd = [
            uv, "pip", "compile", str(src), "--quiet", "--generate-hashes", "--no-header",
            "--no-annotate", "--python-version", matrix.python, "--python-platform", matrix.platform,
        ]  # fmt: skip
        if no_deps:
            cmd.append("--no-deps")
        result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise LockError(f"uv could not resolve {', '.join(requirements)}:\n{result.stderr.strip()}")
    return parse_requirements(result.stdout, no_deps=no_deps)


def resolve_env(env: Env, matrix: Matrix, uv: str = "uv") -> LockedEnv:
    """Resolve one env from the registry: its packages together, its no_deps packages alone."""
    packages = _compile(env.packages, matrix, uv, no_deps=False)
    if env.no_deps:
        for name, pkg in _compile(env.no_deps, matrix, uv, no_deps=True).items():
            if name in packages:
                raise LockError(f"env '{env.name}': {name} is both resolved and listed in no_deps")
            packages[name] = pkg
    for name, pkg in packages.items():
        if not pkg.hashes:
            raise LockError(f"env '{env.name}': uv returned no sha256 for {name}=={pkg.version}")
    return LockedEnv(env.name, env.inputs_digest(matrix.python, matrix.platform), packages)


def _toml_list(items: list[str], indent: str) -> str:
    inner = "".join(f"{indent}  {json.dumps(item)},\n" for item in items)
    return f"[\n{inner}{indent}]"


def render_lock(lock: Lock, matrix: Matrix) -> str:
    """The lock as TOML (written by hand: the standard library only reads TOML)."""
    out = [
        "# toolchain.lock — generated from toolchain.toml by `make lock` (nox -s lock). Do not edit.",
        "# Installs go through this file with pip --require-hashes --no-deps; nothing resolves at run time.",
        f"format = {LOCK_FORMAT}",
        f"python = {json.dumps(lock.python)}",
        f"platform = {json.dumps(lock.platform)}",
    ]
    for env in lock.envs.values():
        out += ["", f"[envs.{json.dumps(env.name)}]"]
        out.append(f"lanes = {json.dumps(matrix.lanes_using(env.name))}")
        out.append(f"inputs = {json.dumps(env.inputs)}")
        for pkg in sorted(env.packages.values(), key=lambda p: p.name):
            out += ["", f"[envs.{json.dumps(env.name)}.packages.{json.dumps(pkg.name)}]"]
            out.append(f"version = {json.dumps(pkg.version)}")
            if pkg.no_deps:
                out.append("no_deps = true")
            out.append(f"hashes = {_toml_list(list(pkg.hashes), '')}")
    return "\n".join(out) + "\n"


def load_lock(path: Path = LOCK_PATH) -> Lock:
    """Read toolchain.lock."""
    import tomllib

    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise LockError(f"{path} is missing — run `make lock` to generate it from toolchain.toml") from None
    if doc.get("format") != LOCK_FORMAT:
        raise LockError(f"{path} has format {doc.get('format')}, this code reads {LOCK_FORMAT} — run `make lock`")
    envs = {}
    for name, spec in doc["envs"].items():
        packages = {
            pkg: Locked(pkg, p["version"], tuple(p["hashes"]), bool(p.get("no_deps", False)))
            for pkg, p in spec.get("packages", {}).items()
        }
        envs[name] = LockedEnv(name, spec["inputs"], packages)
    return Lock(doc["python"], doc["platform"], envs)


def write_lock(lock: Lock, matrix: Matrix, path: Path = LOCK_PATH) -> None:
    """Write atomically: a reader never sees half a lock."""
    tmp = path.with_suffix(".lock.tmp")
    tmp.write_text(render_lock(lock, matrix))
    tmp.replace(path)


def _who(matrix: Matrix, env: str) -> str:
    lanes = matrix.lanes_using(env)
    if not lanes:
        return f"env '{env}'"
    return f"lane{'s' if len(lanes) > 1 else ''} {', '.join(repr(x) for x in lanes)} (env '{env}')"


def staleness(matrix: Matrix, lock: Lock) -> list[str]:
    """Every way the lock disagrees with the matrix, one message each; empty when fresh."""
    problems = []
    fix = "— run `make lock`"
    if (lock.python, lock.platform) != (matrix.python, matrix.platform):
        problems.append(
            f"toolchain.lock is for Python {lock.python} on {lock.platform}, toolchain.toml asks for "
            f"Python {matrix.python} on {matrix.platform} {fix}"
        )
    for name, env in matrix.envs.items():
        who = _who(matrix, name)
        if name not in lock.envs:
            problems.append(f"{who}: not in toolchain.lock {fix}")
            continue
        locked = lock.envs[name]
        before = len(problems)
        for pkg, version in env.pins().items():
            have = locked.packages.get(pkg)
            if have is None:
                problems.append(f"{who}: toolchain.toml pins {pkg}=={version}, toolchain.lock lacks {pkg} {fix}")
            elif have.version != version:
                problems.append(
                    f"{who}: toolchain.toml pins {pkg}=={version} but toolchain.lock has {pkg}=={have.version} {fix}"
                )
        if len(problems) == before and locked.inputs != env.inputs_digest(matrix.python, matrix.platform):
            problems.append(f"{who}: its package list in toolchain.toml changed since the lock was made {fix}")
        for pkg in locked.packages.values():
            if not pkg.hashes:
                problems.append(f"{who}: toolchain.lock has no sha256 for {pkg.name}=={pkg.version} {fix}")
    for name in lock.envs.keys() - matrix.envs.keys():
        problems.append(f"env '{name}' is in toolchain.lock but not in toolchain.toml {fix}")
    return problems


IGNORED_WHEN_UNLOCKED = {"pip", "setuptools", "wheel"}  # put there by `python -m venv` itself


def drift(locked: LockedEnv, installed: dict[str, str], who: str) -> list[str]:
    """Differences between an installed env (name → version) and its lock entry."""
    problems = []
    installed = {canonical_name(k): v for k, v in installed.items()}
    for pkg in locked.packages.values():
        have = installed.get(pkg.name)
        if have is None:
            problems.append(f"{who}: {pkg.name}=={pkg.version} is locked but not installed")
        elif have != pkg.version:
            problems.append(f"{who}: {pkg.name} is {have} but toolchain.lock has {pkg.version}")
    for name, version in sorted(installed.items()):
        if name not in locked.packages and name not in IGNORED_WHEN_UNLOCKED:
            problems.append(f"{who}: {name}=={version} is installed but not in toolchain.lock")
    return problems
