"""Refuse, before converting, an ONNX file the lane's converter cannot take — with one clear message.

Limits per lane (IR version, opset range) live in toolchain.toml, so the message can name
the lanes that would take the file; the operator list comes from the installed converter.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from pt2tf_toolchain.matrix import Matrix, load_matrix

from .backends import Backend, ConversionError


def _other_lanes(matrix: Matrix, lane: str, ir_version: int, opset: int) -> str:
    others = [
        other.name
        for other in matrix.lanes.values()
        if other.name != lane and ir_version <= other.max_ir_version and other.opsets[0] <= opset <= other.opsets[1]
    ]
    return f"lanes that take IR {ir_version} / opset {opset}: {', '.join(others)}" if others else "no lane takes it"


def check_supported(path: Path, lane: str, backend: Backend) -> onnx.ModelProto:
    """Load `path` and check it against the lane's limits and the converter's operators."""
    if not path.is_file():
        raise ConversionError(f"{path}: no such file — run the export stage for lane '{lane}' first (nox -s export)")
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ConversionError(f"{path} is not an ONNX file (the protobuf does not parse: {exc})") from None
    if not model.graph.node:
        raise ConversionError(f"{path} is not an ONNX model: it has no graph nodes")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ConversionError(f"{path} imports no default-domain opset; it is not a model any lane converts")
    matrix = load_matrix()
    lane_spec = matrix.lane(lane)
    if model.ir_version > lane_spec.max_ir_version:
        raise ConversionError(
            f"{path} has ONNX IR version {model.ir_version}; lane '{lane}' ({backend.describe()}) reads IR ≤ "
            f"{lane_spec.max_ir_version}. {_other_lanes(matrix, lane, model.ir_version, opset)}. For this lane, "
            "export with the TorchScript exporter (dynamo=False), which writes an older IR"
        )
    low, high = lane_spec.opsets
    if not low <= opset <= high:
        raise ConversionError(
            f"{path} uses opset {opset}; lane '{lane}' ({backend.describe()}) converts opsets {low}–{high}. "
            f"{_other_lanes(matrix, lane, model.ir_version, opset)}"
        )
    missing = backend.unsupported_ops(model)
    if missing:
        raise ConversionError(
            f"{path}: {backend.describe()} (lane '{lane}') has no conversion for op "
            f"{', '.join(missing)} at opset {opset}. {_other_lanes(matrix, lane, model.ir_version, opset)} may; "
            "otherwise replace the op in the PyTorch model before export"
        )
    return model
