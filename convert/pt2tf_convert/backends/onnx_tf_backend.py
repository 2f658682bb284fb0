"""onnx-tf: ONNX → TensorFlow graph in NCHW, keeping the names `input` and `output`.

Quirks kept here: it needs onnx ≤ 1.14 (IR ≤ 9), its handlers import tensorflow_probability
and tensorflow_addons at load time, and it only writes a SavedModel (export_graph), which
is loaded back so the wrapper can save it once behind the project's signatures.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_tf
import tensorflow as tf
from onnx_tf.backend import prepare
from onnx_tf.opset_version import backend_opset_version

from ..signatures import SERVING_DEFAULT, ConvertedModel
from . import ConversionError

NAME = "onnx-tf"
DEFAULT_DOMAINS = ("", "ai.onnx")


def describe() -> str:
    return f"onnx-tf {onnx_tf.version.version} on TensorFlow {tf.__version__}"


def versions() -> dict[str, str]:
    return {"onnx-tf": onnx_tf.version.version, "onnx": onnx.__version__}


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Ops onnx-tf has no handler for at the model's opset.

    onnx-tf runs an op with the handler of the op's version at that opset (the schema's since_version)
    and fails on the spot when it has none: it handles Unsqueeze 1 and 11, not 13 (axes as an input)."""
    opset = next(o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS)
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
        if version not in handled:
            missing.add(f"{node.op_type} v{version}" if handled else node.op_type)
    return sorted(missing)


def convert(model: onnx.ModelProto, onnx_path: Path, workdir: Path) -> ConvertedModel:
    out = workdir / "onnx-tf-savedmodel"
    try:
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
