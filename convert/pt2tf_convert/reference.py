"""The fixed input set every stage compares on: seeded random tensors and natural photos.

Photos come from scikit-image's bundled data and are preprocessed exactly as the model's torchvision
weights specify (ResNet18's: resize 256, center crop 224, ImageNet mean/std), so later stages
can check in-graph preprocessing against the PyTorch pipeline without importing torch.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skimage
import torch
from PIL import Image
from torchvision.models import ResNet18_Weights, WeightsEnum

from .preprocessing import INPUT_SIZE

# JPEG and PNG, colour and greyscale (camera), so decoding paths are all exercised.
PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "motorcycle_left.png",
    "retina.jpg",
    "camera.png",
)
RANDOM_COUNT = 8


@dataclass
class ReferenceInputs:
    names: list[str]
    kinds: list[str]  # "random" or "photo"
    inputs: np.ndarray  # float32 [N, 3, 224, 224], normalized, NCHW
    photo_names: list[str]
    photo_bytes: list[bytes]


def photo_dir() -> Path:
    return Path(skimage.__file__).parent / "data"


def torchvision_preprocess(
    data: bytes, weights: WeightsEnum = ResNet18_Weights.IMAGENET1K_V1, transform: Callable | None = None
) -> torch.Tensor:
    """torchvision's own inference transform of `weights` (or `transform`) on an encoded image: [3, 224, 224]."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return (transform or weights.transforms())(image)


def reference_inputs(
    seed: int = 0, weights: WeightsEnum = ResNet18_Weights.IMAGENET1K_V1, transform: Callable | None = None
) -> ReferenceInputs:
    """Seeded random tensors followed by the photos, preprocessed as `weights` specify (or `transform`, a user's
    model's spec as torchvision's transform)."""
    generator = torch.Generator().manual_seed(seed + 1)
    random = torch.randn(RANDOM_COUNT, 3, INPUT_SIZE, INPUT_SIZE, generator=generator)
    photo_bytes = []
    for name in PHOTOS:
        path = photo_dir() / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: scikit-image's bundled photo is missing; reinstall the export env")
        photo_bytes.append(path.read_bytes())
    photos = torch.stack([torchvision_preprocess(data, weights, transform) for data in photo_bytes])
    return ReferenceInputs(
        names=[f"random-{i}" for i in range(RANDOM_COUNT)] + [n.rsplit(".", 1)[0] for n in PHOTOS],
        kinds=["random"] * RANDOM_COUNT + ["photo"] * len(PHOTOS),
        inputs=torch.cat([random, photos]).numpy().astype(np.float32),
        photo_names=list(PHOTOS),
        photo_bytes=photo_bytes,
    )


def save_reference(path: Path, ref: ReferenceInputs, logits: np.ndarray, labels: list[str]) -> None:
    """Write reference.npz: no pickles, so stages without torch read it with plain numpy."""
    offsets = np.cumsum([0] + [len(b) for b in ref.photo_bytes]).astype(np.int64)
    np.savez_compressed(
        path,
        names=np.array(ref.names),
        kinds=np.array(ref.kinds),
        inputs=ref.inputs,
        logits=logits.astype(np.float32),
        photo_names=np.array(ref.photo_names),
        photo_bytes=np.frombuffer(b"".join(ref.photo_bytes), dtype=np.uint8),
        photo_offsets=offsets,
        labels=np.array(labels),
    )
