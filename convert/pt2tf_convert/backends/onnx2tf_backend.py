"""onnx2tf: ONNX → tf_keras graph in NHWC (its input becomes NHWC, its output `output_0`).

Quirks kept here: onnx2tf rewrites the ONNX file it is given in place (onnxsim, renaming),
so it gets a copy; by default it also writes TFLite files (4 minutes on two cores), so it
converts in memory only; on failure it may call sys.exit.
"""

from __future__ import annotations

import contextlib
import io
import pkgutil
import shutil
from pathlib import Path

import onnx
import onnx2tf
import onnx2tf.ops
import tensorflow as tf

from ..signatures import ConvertedModel
from . import ConversionError

NAME = "onnx2tf"
DEFAULT_DOMAINS = ("", "ai.onnx")


def describe() -> str:
    return f"onnx2tf {onnx2tf.__version__} on TensorFlow {tf.__version__}"


def versions() -> dict[str, str]:
    return {"onnx2tf": onnx2tf.__version__, "onnx": onnx.__version__}


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Ops with no module in onnx2tf.ops (one module per ONNX op it converts)."""
    supported = {module.name for module in pkgutil.iter_modules(onnx2tf.ops.__path__)}
    missing = set()
    for node in model.graph.node:
        if node.domain not in DEFAULT_DOMAINS:
            missing.add(f"{node.domain}::{node.op_type}")
        elif node.op_type not in supported:
            missing.add(node.op_type)
    return sorted(missing)


def convert(model: onnx.ModelProto, onnx_path: Path, workdir: Path) -> ConvertedModel:
    copy = workdir / "onnx2tf-input.onnx"
    shutil.copyfile(onnx_path, copy)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            keras_model = onnx2tf.convert(
                input_onnx_file_path=str(copy),
                output_folder_path=str(workdir / "onnx2tf-output"),
                disable_model_save=True,  # no SavedModel, no TFLite: the wrapper saves once
                non_verbose=True,
            )
    except (SystemExit, Exception) as exc:
        tail = "\n".join(log.getvalue().strip().splitlines()[-15:])
        raise ConversionError(
            f"onnx2tf {onnx2tf.__version__} failed on {onnx_path} ({exc!r}); its last output:\n{tail}"
        ) from None
    if keras_model is None:
        raise ConversionError(
            f"onnx2tf {onnx2tf.__version__} returned no model for {onnx_path}:\n{log.getvalue()[-2000:]}"
        )
    shape = keras_model.inputs[0].shape
    if shape[0] is not None:
        raise ConversionError(f"onnx2tf fixed the batch axis to {shape[0]}; TF Serving could not batch this model")
    layout = "NHWC" if shape[-1] == 3 else "NCHW"
    return ConvertedModel(
        call=lambda x: keras_model(x, training=False),
        trackable=list(keras_model.variables),
        layout=layout,
    )
