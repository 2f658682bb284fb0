"""Read toolchain.toml: environments (pinned package sets) and lanes (which env each stage uses)."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MATRIX_PATH = ROOT / "toolchain.toml"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)$")


class MatrixError(ValueError):
    """toolchain.toml says something this project cannot use."""


def canonical_name(name: str) -> str:
    """PEP 503 normalized distribution name (what pip and uv compare)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pin(spec: str, where: str) -> tuple[str, str]:
    """Split 'name==version' into (canonical name, version); anything looser is refused."""
    match = _PIN.match(spec.strip())
    if not match:
        raise MatrixError(
            f"{where}: {spec!r} is not an exact pin; write it as 'name==version' "
            "(the matrix pins every direct dependency exactly)"
        )
    return canonical_name(match.group(1)), match.group(2)


@dataclass(frozen=True)
class Env:
    """One virtualenv: the packages resolved together, and those added beside them unresolved."""

    name: str
    description: str
    stages: tuple[str, ...]
    packages: tuple[str, ...]
    no_deps: tuple[str, ...] = ()

    def pins(self) -> dict[str, str]:
        """Direct pins, canonical name → version."""
        where = f"env '{self.name}'"
        return dict(parse_pin(p, where) for p in self.packages + self.no_deps)

    def inputs_digest(self, python: str, platform: str) -> str:
        """Digest of everything the lock of this env was resolved from."""
        doc = {
            "python": python,
            "platform": platform,
            "packages": sorted(self.packages),
            "no_deps": sorted(self.no_deps),
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Lane:
    """A PyTorch → ONNX → TensorFlow path known to work: exporter, opset, converter, envs."""

    name: str
    description: str
    exporter: str
    opset: int
    converter: str
    serving_image: str
    max_ir_version: int
    opsets: tuple[int, int]
    envs: dict[str, str] = field(hash=False)

    def env_for(self, stage: str) -> str:
        """Name of the environment this lane runs `stage` in."""
        try:
            return self.envs[stage]
        except KeyError:
            raise MatrixError(
                f"lane '{self.name}' names no environment for stage '{stage}' in toolchain.toml "
                f"(it has: {', '.join(sorted(self.envs))})"
            ) from None


@dataclass(frozen=True)
class Matrix:
    python: str
    platform: str
    default_lane: str
    envs: dict[str, Env]
    lanes: dict[str, Lane]

    def lane(self, name: str | None) -> Lane:
        """The named lane, or the default lane when name is None."""
        name = name or self.default_lane
        if name not in self.lanes:
            raise MatrixError(f"unknown lane '{name}': toolchain.toml has {', '.join(self.lanes)}")
        return self.lanes[name]

    def lanes_using(self, env: str) -> list[str]:
        """Lanes that run at least one stage in `env`."""
        return [lane.name for lane in self.lanes.values() if env in lane.envs.values()]


EXPORTERS = ("torchscript", "dynamo")


def load_matrix(path: Path = MATRIX_PATH) -> Matrix:
    """Parse and validate toolchain.toml."""
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise MatrixError(f"{path} is missing: it is the toolchain matrix this project runs on") from None
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(f"{path} is not valid TOML: {exc}") from None

    envs = {
        name: Env(
            name=name,
            description=spec.get("description", ""),
            stages=tuple(spec.get("stages", ())),
            packages=tuple(spec["packages"]),
            no_deps=tuple(spec.get("no_deps", ())),
        )
        for name, spec in doc.get("envs", {}).items()
    }
    for env in envs.values():
        env.pins()  # validates every pin
    lanes = {}
    for name, spec in doc.get("lanes", {}).items():
        lane = Lane(
            name=name,
            description=spec.get("description", ""),
            exporter=spec["exporter"],
            opset=int(spec["opset"]),
            converter=spec["converter"],
            serving_image=spec["serving_image"],
            max_ir_version=int(spec["max_ir_version"]),
            opsets=(int(spec["opsets"][0]), int(spec["opsets"][1])),
            envs=dict(spec["envs"]),
        )
        if not lane.opsets[0] <= lane.opset <= lane.opsets[1]:
            raise MatrixError(f"lane '{name}' exports opset {lane.opset}, outside its converter's opsets {lane.opsets}")
        if lane.exporter not in EXPORTERS:
            raise MatrixError(f"lane '{name}': exporter must be one of {EXPORTERS}, not '{lane.exporter}'")
        for stage, env in lane.envs.items():
            if env not in envs:
                raise MatrixError(f"lane '{name}' runs stage '{stage}' in env '{env}', which [envs] does not define")
        lanes[name] = lane
    matrix = Matrix(
        python=doc["python"],
        platform=doc["platform"],
        default_lane=doc["default_lane"],
        envs=envs,
        lanes=lanes,
    )
    matrix.lane(matrix.default_lane)
    return matrix
