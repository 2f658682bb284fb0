"""Run the same inputs through ONNX Runtime or a loaded SavedModel, in batches of a given size.

Imports stay inside the functions: the export env has no TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def chunks(inputs: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """`inputs` split along the batch axis; the last chunk may be shorter."""
    return [inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size)]


def onnxruntime_session(path: Path) -> Any:
    """An ONNX Runtime session on the CPU execution provider."""
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnxruntime(session: Any, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits from ONNX Runtime, fed `batch_size` inputs per call."""
    return np.concatenate([session.run(["output"], {"input": c})[0] for c in chunks(inputs, batch_size)])


def run_serving(loaded: Any, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits from a loaded SavedModel's serving_default, fed `batch_size` inputs per call."""
    import tensorflow as tf

    serving = loaded.signatures["serving_default"]
    return np.concatenate([serving(input=tf.constant(c))["output"].numpy() for c in chunks(inputs, batch_size)])
