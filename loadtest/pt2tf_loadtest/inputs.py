"""Request payloads, prepared once from the export's reference photos and tensors, with the answers expected.

The photos are scikit-image's natural images as the export stored them (JPEG bytes), the
tensors their torchvision preprocessing; the expected top-1 class of each is PyTorch's, which
the verify stage proved equal to TensorFlow's in-process answer. Nothing is built per request.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

SERVING_DEFAULT = "serving_default"
PREDICT_IMAGES = "predict_images"


@dataclass(frozen=True)
class Payload:
    """One request's body in each protocol's form, and the top-1 class a correct answer has."""

    name: str
    expected_class: int
    rest_body: bytes  # TF Serving REST JSON, row format
    grpc_value: np.ndarray  # the input tensor for a PredictRequest


@dataclass(frozen=True)
class Inputs:
    tensors: list[Payload]  # serving_default: each photo preprocessed, float32 [1, 3, 224, 224]
    images: list[Payload]  # predict_images: JPEG bytes [1]
    weights: str  # which weights answer: export.json's description (name and sha256, or "seeded weights: ...")


def load_inputs(artifacts: Path) -> Inputs:
    """Payloads from `artifacts/reference.npz` (numpy only, no TensorFlow needed)."""
    path = Path(artifacts) / "reference.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the export stage first (nox -s export)")
    with np.load(path, allow_pickle=False) as ref:
        inputs, logits = ref["inputs"], ref["logits"]
        kinds = [str(k) for k in ref["kinds"]]
        names = [str(n) for n in ref["names"]]
        offsets, blob = ref["photo_offsets"], ref["photo_bytes"]
        photo_names = [str(n) for n in ref["photo_names"]]
    photos = {Path(photo_names[i]).stem: blob[offsets[i] : offsets[i + 1]].tobytes() for i in range(len(photo_names))}
    tensors, images = [], []
    for index, (kind, name) in enumerate(zip(kinds, names, strict=True)):
        if kind != "photo":  # the seeded random tensors are for parity, not for traffic
            continue
        tensor = inputs[index : index + 1]
        expected = int(np.argmax(logits[index]))
        body = orjson.dumps({"signature_name": SERVING_DEFAULT, "instances": tensor}, option=orjson.OPT_SERIALIZE_NUMPY)
        tensors.append(Payload(name, expected, body, tensor))
        photo = photos.get(name)
        if photo is not None and photo[:2] == b"\xff\xd8":  # JPEG files, as clients send photos
            b64 = base64.b64encode(photo).decode()
            body = orjson.dumps({"signature_name": PREDICT_IMAGES, "instances": [{"b64": b64}]})
            images.append(Payload(name, expected, body, np.array([photo], dtype=object)))
    export = Path(artifacts) / "export.json"
    manifest = orjson.loads(export.read_bytes()) if export.is_file() else {}
    # The export's one line on which weights the answers come from (seeded ones are not ImageNet predictions).
    weights = manifest.get("weights_description") or manifest.get("weights", "unknown (no export.json)")
    if not images:
        raise ValueError(f"{path} holds no JPEG photo to send as predict_images requests")
    return Inputs(tensors, images, str(weights))
