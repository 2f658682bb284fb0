"""onnx-tf: ONNX → TensorFlow graph in NCHW, keeping the names `input` and `output`.

Quirks kept here: it needs onnx ≤ 1.14 (IR ≤ 9), its handlers import tensorflow_probability
and tensorflow_addons at load time, and it only writes a SavedModel (export_graph), which
is loaded back so the wrapper can save it once behind the project's signatures.

onnx-tf 1.10 converts a node with its handler's `version_<n>` method, n the op's version at the
model's opset, and has none for Unsqueeze 13 (opset 13 moved `axes` from an attribute to an
input: the TorchScript exporter writes it 489 times in Swin-T). This backend adds that method
to onnx-tf's Unsqueeze handler for the length of a conversion (_unsqueeze_13_added); the
pre-check counts it as handled where it can run: with axes the file holds as a constant.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_tf
import tensorflow as tf
from onnx_tf.backend import prepare
from onnx_tf.handlers.backend.unsqueeze import Unsqueeze
from onnx_tf.opset_version import backend_opset_version

from ..signatures import SERVING_DEFAULT, ConvertedModel
from . import ConversionError

NAME = "onnx-tf"
DEFAULT_DOMAINS = ("", "ai.onnx")


def describe() -> str:
    return f"onnx-tf {onnx_tf.version.version} on TensorFlow {tf.__version__}"


def versions() -> dict[str, str]:
    return {"onnx-tf": onnx_tf.version.version, "onnx": onnx.__version__}


def _unsqueeze_13(cls, node, **kwargs) -> list[tf.Tensor]:
    """Unsqueeze from opset 13: the axes are the node's second input, read here as the constant they are."""
    tensor_dict = kwargs["tensor_dict"]
    x = tensor_dict[node.inputs[0]]
    axes = tf.get_static_value(tensor_dict[node.inputs[1]])
    if axes is None:
        raise ConversionError(
            f"Unsqueeze node '{node.name}': its axes ('{node.inputs[1]}') are computed at run time; the onnx-tf "
            "lane converts Unsqueeze 13 with constant axes only — export the axes as constants, or use lane onnx2tf"
        )
    axes = [int(axis) for axis in np.atleast_1d(axes)]
    if len(axes) == 1:
        return [tf.expand_dims(x, axes[0])]  # a negative axis counts from the end in both ONNX and TensorFlow
    if x.shape.rank is None:
        raise ConversionError(
            f"Unsqueeze node '{node.name}': axes {axes} need the rank of '{node.inputs[0]}', which the graph leaves "
            "unknown; use lane onnx2tf"
        )
    rank = x.shape.rank + len(axes)  # ONNX counts negative axes from the end of the output
    for axis in sorted(axis % rank for axis in axes):
        x = tf.expand_dims(x, axis)
    return [x]


@contextlib.contextmanager
def _unsqueeze_13_added() -> Iterator[None]:
    """onnx-tf's Unsqueeze handler with _unsqueeze_13 as its version_13, for one conversion, taken out again after."""
    added = not hasattr(Unsqueeze, "version_13")  # a newer onnx-tf's own handler wins
    if added:
        Unsqueeze.version_13 = classmethod(_unsqueeze_13)
    try:
        yield
    finally:
        if added:
            del Unsqueeze.version_13


def _constants(graph: onnx.GraphProto) -> set[str]:
    """The names whose values the file holds: initializers and Constant nodes' outputs."""
    return {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Ops onnx-tf has no handler for at the model's opset.

    onnx-tf runs an op with the handler of the op's version at that opset (the schema's since_version)
    and fails on the spot when it has none: it handles Unsqueeze 1 and 11, and with _unsqueeze_13 13
    (axes as an input) where the axes are a constant; Squeeze 1 and 11, not 13."""
    opset = next(o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS)
    constants = _constants(model.graph)
    missing = set()
    for node in model.graph.node:
        if node.domain not in DEFAULT_DOMAINS:
            missing.add(f"{node.domain}::{node.op_type}")
            continue
        try:
            version = onnx.defs.get_schema(node.op_type, opset).since_version
        except onnx.defs.SchemaError:
            missing.add(node.op_type)  # not a standard op at this opset
            continue
        handled = backend_opset_version.get(node.op_type, [])
        if (node.op_type, version) == ("Unsqueeze", 13):  # converted by _unsqueeze_13, with constant axes only
            if len(node.input) < 2 or node.input[1] not in constants:
                missing.add("Unsqueeze v13 with axes computed at run time")
            continue
        if version not in handled:
            missing.add(f"{node.op_type} v{version}" if handled else node.op_type)
    return sorted(missing)


def convert(model: onnx.ModelProto, onnx_path: Path, workdir: Path) -> ConvertedModel:
    out = workdir / "onnx-tf-savedmodel"
    try:
        with _unsqueeze_13_added():
            prepare(model, device="CPU", strict=True, logging_level="ERROR").export_graph(str(out))
    except Exception as exc:
        raise ConversionError(f"onnx-tf {onnx_tf.version.version} failed on {onnx_path}: {exc!r}") from exc
    loaded = tf.saved_model.load(str(out))
    signature = loaded.signatures[SERVING_DEFAULT]
    _, inputs = signature.structured_input_signature
    if list(inputs) != ["input"] or list(signature.structured_outputs) != ["output"]:
        raise ConversionError(
            f"onnx-tf wrote inputs {list(inputs)} and outputs {list(signature.structured_outputs)}; "
            "expected the export's 'input' and 'output'"
        )
    return ConvertedModel(call=lambda x: signature(input=x)["output"], trackable=loaded, layout="NCHW")
