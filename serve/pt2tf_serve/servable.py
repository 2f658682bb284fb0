"""One loaded model version, run as TF Serving runs it: a Session on the SavedModel's MetaGraph.

TF Serving's C++ `LoadSavedModel` puts the MetaGraph into a Session; the Python equivalent is
`tf.compat.v1.saved_model.loader.load` into a `tf.compat.v1.Session`. Measured here, that path
ran 1.4× faster at batch 1 than `tf.saved_model.load(...).signatures[...]` on the same model.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import prediction_log_pb2

from .status import ServingError, from_tensorflow

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving refuses files with more


def type_name(numpy_name: str) -> str:
    """TensorFlow's DataTypeString for a dtype name (float32 → float), as TF Serving's messages use it."""
    return {"float32": "float", "float64": "double", "float16": "half"}.get(numpy_name, numpy_name)


@dataclass(frozen=True)
class TensorSpec:
    """One signature input or output: its tensor name, dtype and shape (-1 where unknown)."""

    key: str
    tensor: str
    dtype: tf.DType
    shape: tuple[int, ...] | None  # None: unknown rank

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(object) if self.dtype == tf.string else np.dtype(self.dtype.as_numpy_dtype)

    @property
    def type_name(self) -> str:
        """TensorFlow's DataTypeString, which TF Serving's messages use: float, double, int32, string, ..."""
        return type_name(self.dtype.name)

    def describe(self) -> str:
        dims = "unknown rank" if self.shape is None else "[" + ",".join(str(d) for d in self.shape) + "]"
        return f"{self.type_name} {dims}"

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        if self.shape is None:
            return True
        return len(shape) == len(self.shape) and all(w in (-1, h) for w, h in zip(self.shape, shape, strict=True))


def _spec(key: str, info: meta_graph_pb2.TensorInfo) -> TensorSpec:
    shape = None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)
    return TensorSpec(key, info.name, tf.dtypes.as_dtype(info.dtype), shape)


@dataclass(frozen=True)
class Signature:
    """A SignatureDef, resolved to tensor names in the loaded graph."""

    name: str
    method_name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    @property
    def batchable(self) -> bool:
        """Every input and output has a leading batch axis, so requests can be merged."""
        specs = [*self.inputs.values(), *self.outputs.values()]
        return bool(self.inputs) and all(s.shape is not None and len(s.shape) >= 1 for s in specs)


class Servable:
    """A SavedModel version in its own graph and Session; thread-safe `run`."""

    def __init__(self, name: str, version: int, path: Path, session_config: tf.compat.v1.ConfigProto, tags: list[str]):
        self.name = name
        self.version = version
        self.path = Path(path)
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph, config=session_config)
        try:
            with self.graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(self.session, tags, str(self.path))
        except Exception:
            self.session.close()
            raise
        self.signature_defs = dict(meta_graph.signature_def)
        self.signatures = {
            key: Signature(
                key,
                sig.method_name,
                {k: _spec(k, v) for k, v in sorted(sig.inputs.items())},
                {k: _spec(k, v) for k, v in sorted(sig.outputs.items())},
            )
            for key, sig in self.signature_defs.items()
            if not key.startswith("__")  # __saved_model_init_op is not callable
        }
        self._callables: dict[tuple[str, tuple[str, ...]], object] = {}
        self._callables_lock = threading.Lock()

    def _callable(self, signature: Signature, outputs: tuple[str, ...]):
        key = (signature.name, outputs)
        with self._callables_lock:
            if key not in self._callables:
                feeds = [spec.tensor for spec in signature.inputs.values()]
                fetches = [signature.outputs[name].tensor for name in outputs]
                self._callables[key] = self.session.make_callable(fetches, feed_list=feeds)
            return self._callables[key]

    def run(self, signature: Signature, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> dict:
        """Run `signature` on validated inputs; returns output name → array."""
        call = self._callable(signature, outputs)
        try:
            values = call(*(inputs[key] for key in signature.inputs))
        except tf.errors.OpError as exc:
            raise from_tensorflow(exc) from None
        return dict(zip(outputs, values, strict=True))

    def warmup_requests(self) -> list[prediction_log_pb2.PredictionLog]:
        """The version's warmup records (assets.extra/tf_serving_warmup_requests), if any."""
        path = self.path / WARMUP_FILE
        if not path.is_file():
            return []
        logs = []
        for raw in tf.compat.v1.io.tf_record_iterator(str(path)):
            if len(logs) == MAX_WARMUP_RECORDS:
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}",
                )
            log = prediction_log_pb2.PredictionLog()
            log.ParseFromString(raw)
            logs.append(log)
        return logs

    def close(self) -> None:
        self.session.close()
