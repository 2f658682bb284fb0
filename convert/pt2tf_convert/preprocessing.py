"""How a model's encoded images become its input tensor, as data every stage can read without torch.

The export reads it from the torchvision weights' own `transforms()` (resize, crop, interpolation,
antialias, mean, std) and records it in export.json; convert builds `predict_images` from it and
verify measures that graph against torchvision's pipeline on the same photos.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

DEFAULT_MODEL = "resnet18"
# The serving contract's input: [batch, 3, 224, 224]. Weights that crop to another size are refused at export.
INPUT_SIZE = 224
NUM_CLASSES = 1000
INTERPOLATIONS = ("bilinear", "bicubic")
TOP_K = 5  # predict_images answers each image's top 5 classes: a model needs at least 5
IMAGENET_STD = (0.229, 0.224, 0.225)  # the std verify's preprocessing bounds are stated for
# verify's bounds on predict_images' preprocessing against torchvision's, in normalized units (one grey level is
# 1/255/std ≈ 0.0175). Measured on every lane: no pixel differs by more than one grey level (rounding of two
# antialiased filters), mean 0.0024 when the graph resized in one pass, 0.0006 (bilinear) and 0.00004 (bicubic) in
# PIL's two. Bounds: twice the one-pass measurement.
PREPROCESS_MEAN_ABS = 0.005
PREPROCESS_MAX_ABS = 2 / 255 / min(IMAGENET_STD)
# The share of colour values one grey level off that PREPROCESS_MEAN_ABS admits (0.29): the seeded classifier's
# margins are measured against a difference that large (model.calibrate_classifier).
GREY_LEVEL_SHARE = PREPROCESS_MEAN_ABS * 255 * min(IMAGENET_STD)


@dataclass(frozen=True)
class Preprocessing:
    """torchvision's ImageClassification transform: resize the shorter side, center-crop, scale, normalize."""

    source: str  # the weights whose transforms these are, e.g. "ResNet18_Weights.IMAGENET1K_V1"
    resize: int
    crop: int
    interpolation: str  # one of INTERPOLATIONS
    antialias: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"{self.source}: interpolation {self.interpolation!r} is not one of {INTERPOLATIONS}")

    def to_json(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}  # as json.loads gives them back

    @classmethod
    def from_json(cls, data: dict) -> Preprocessing:
        return cls(**{**data, "mean": tuple(data["mean"]), "std": tuple(data["std"])})

    def describe(self) -> str:
        return (
            f"resize {self.resize} ({self.interpolation}{', antialiased' if self.antialias else ''}), "
            f"center crop {self.crop}, mean {list(self.mean)}, std {list(self.std)} ({self.source})"
        )


# What every export wrote before a model was a parameter: torchvision's ResNet18 transform.
RESNET18 = Preprocessing(
    "ResNet18_Weights.IMAGENET1K_V1", 256, 224, "bilinear", True, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
)


def exported_model(export_manifest: dict) -> tuple[str, Preprocessing]:
    """The model an export holds and its preprocessing (an export made before models were a parameter is ResNet18)."""
    if "model" not in export_manifest:
        return DEFAULT_MODEL, RESNET18
    return export_manifest["model"], Preprocessing.from_json(export_manifest["preprocessing"])
