"""onnx-tf: ONNX → TensorFlow graph in NCHW, keeping the names `input` and `output`.

Quirks kept here: it needs onnx ≤ 1.14 (IR ≤ 9), its handlers import tensorflow_probability
and tensorflow_addons at load time, and it only writes a SavedModel (export_graph), which
is loaded back so the wrapper can save it once behind the project's signatures.

onnx-tf 1.10 converts a node with its handler's `version_<n>` method, n the op's version at the
model's opset, and has none for Unsqueeze 13 and Squeeze 13 (opset 13 moved `axes` from an
attribute to an input: the TorchScript exporter writes Unsqueeze 489 times in Swin-T, Squeeze 24
times in ViT-B/16's attention, two per layer). This backend adds those methods to onnx-tf's handlers
for the length of a conversion (_axes_as_input_added); the pre-check counts them as handled where
they can run: with axes the file holds as a constant (or, for Squeeze, no axes at all).
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
from onnx_tf.handlers.backend.squeeze import Squeeze
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


def _constant_axes(node, tensor_dict) -> list[int]:
    """An opset-13 (Un)Squeeze's axes, its second input, read as the constant they are."""
    axes = tf.get_static_value(tensor_dict[node.inputs[1]])
    if axes is None:
        raise ConversionError(
            f"{node.op_type} node '{node.name}': its axes ('{node.inputs[1]}') are computed at run time; the onnx-tf "
            f"lane converts {node.op_type} 13 with constant axes only — export the axes as constants, or use lane "
            "onnx2tf"
        )
    return [int(axis) for axis in np.atleast_1d(axes)]


def _unsqueeze_13(cls, node, **kwargs) -> list[tf.Tensor]:
    """Unsqueeze from opset 13: the axes are the node's second input."""
    tensor_dict = kwargs["tensor_dict"]
    x = tensor_dict[node.inputs[0]]
    axes = _constant_axes(node, tensor_dict)
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


def _squeeze_13(cls, node, **kwargs) -> list[tf.Tensor]:
    """Squeeze from opset 13: the axes are the node's optional second input; without it, every axis of size 1
    goes (as in ONNX), and so it does for an empty axes tensor, as ONNX Runtime, which parity is measured
    against, reads one. Negative axes count from the end of the input in both ONNX and TensorFlow."""
    tensor_dict = kwargs["tensor_dict"]
    x = tensor_dict[node.inputs[0]]
    if len(node.inputs) < 2 or not node.inputs[1]:
        return [tf.squeeze(x)]
    return [tf.squeeze(x, axis=_constant_axes(node, tensor_dict))]


# The methods added for opset 13, each to the handler that lacks it.
AXES_AS_INPUT = ((Unsqueeze, _unsqueeze_13), (Squeeze, _squeeze_13))


@contextlib.contextmanager
def _axes_as_input_added() -> Iterator[None]:
    """onnx-tf's Unsqueeze and Squeeze handlers with a version_13, for one conversion, taken out again after."""
    added = [(handler, method) for handler, method in AXES_AS_INPUT if not hasattr(handler, "version_13")]
    for handler, method in added:  # a newer onnx-tf's own version_13 wins
        handler.version_13 = classmethod(method)
    try:
        yield
    finally:
        for handler, _ in added:
            del handler.version_13


def _constants(graph: onnx.GraphProto) -> set[str]:
    """The names whose values the file holds: initializers and Constant nodes' outputs."""
    return {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Ops onnx-tf has no handler for at the model's opset.

    onnx-tf runs an op with the handler of the op's version at that opset (the schema's since_version)
    and fails on the spot when it has none: it handles Unsqueeze and Squeeze 1 and 11, and with the methods
    _axes_as_input_added adds, 13 (axes as an input) where the axes are a constant or, for Squeeze, absent."""
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
        if node.op_type in ("Unsqueeze", "Squeeze") and version == 13:  # added, with constant axes only
            axes = node.input[1] if len(node.input) > 1 else ""
            if not axes and node.op_type == "Unsqueeze":
                missing.add("Unsqueeze v13 without axes")
            elif axes and axes not in constants:
                missing.add(f"{node.op_type} v13 with axes computed at run time")
            continue
        if version not in handled:
            missing.add(f"{node.op_type} v{version}" if handled else node.op_type)
    return sorted(missing)


def convert(model: onnx.ModelProto, onnx_path: Path, workdir: Path) -> ConvertedModel:
    out = workdir / "onnx-tf-savedmodel"
    try:
        with _axes_as_input_added():
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
