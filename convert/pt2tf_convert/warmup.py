"""assets.extra/tf_serving_warmup_requests: PredictionLog records TF Serving replays at load.

Without them the first real request pays for graph initialization (hundreds of ms).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from .signatures import PREDICT_IMAGES, SERVING_DEFAULT

WARMUP_FILE = "tf_serving_warmup_requests"
TENSOR_BATCH_SIZES = (1, 4)
IMAGE_BATCH_SIZES = (1, 4)


def _record(model_name: str, signature: str, key: str, value: np.ndarray) -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    return log.SerializeToString()


def warmup_records(model_name: str, image: bytes, seed: int = 0) -> list[bytes]:
    """One request per signature and batch size: tensors for serving_default, bytes for predict_images."""
    rng = np.random.default_rng(seed)
    records = []
    for batch in TENSOR_BATCH_SIZES:
        tensor = rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)
        records.append(_record(model_name, SERVING_DEFAULT, "input", tensor))
    for batch in IMAGE_BATCH_SIZES:
        records.append(_record(model_name, PREDICT_IMAGES, "image_bytes", np.array([image] * batch, dtype=object)))
    return records


def write_warmup(saved_model: Path, model_name: str, image: bytes) -> Path:
    """Write the warmup file into the SavedModel's assets.extra/."""
    path = saved_model / "assets.extra" / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in warmup_records(model_name, image):
            writer.write(record)
    return path


def read_warmup(path: Path) -> list[prediction_log_pb2.PredictionLog]:
    """Parse the warmup file back, as TF Serving would."""
    logs = []
    for raw in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(raw.numpy())
        logs.append(log)
    return logs
