"""The serving contract every lane's SavedModel exports, whatever its converter did inside.

- `serving_default`: input `input` float32 [batch, 3, 224, 224] (NCHW, normalized as for
  the PyTorch model) → output `output` float32 [batch, classes] logits (1000 for torchvision's classifiers).
- `predict_images`: input `image_bytes` string [batch] of JPEG/PNG → `probabilities`
  [batch, classes], `classes` int32 [batch, 5], `labels` string [batch, 5], `scores` [batch, 5],
  and `weights` string [batch]: which weights the answer comes from ("seeded weights: labels
  are not ImageNet predictions ..." or the weights' name and sha256), so no answer is taken
  for what it is not. The model's torchvision preprocessing (its weights' resize, crop,
  interpolation, mean/std: `Preprocessing`) is done in the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tensorflow as tf

from .preprocessing import INPUT_SIZE, NUM_CLASSES, RESNET18, TOP_K, Preprocessing

SERVING_DEFAULT = "serving_default"
PREDICT_IMAGES = "predict_images"
CROP = INPUT_SIZE

Contract = dict[str, dict[str, dict[str, tuple[str, tuple[int | None, ...]]]]]


def contract(num_classes: int = NUM_CLASSES) -> Contract:
    """signature → ("inputs" | "outputs") → name → (dtype, shape); None is the batch axis. A user's model answers
    its own class count (ImageNet's 1000 for torchvision's)."""
    return {
        SERVING_DEFAULT: {
            "inputs": {"input": ("float32", (None, 3, CROP, CROP))},
            "outputs": {"output": ("float32", (None, num_classes))},
        },
        PREDICT_IMAGES: {
            "inputs": {"image_bytes": ("string", (None,))},
            "outputs": {
                "probabilities": ("float32", (None, num_classes)),
                "classes": ("int32", (None, TOP_K)),
                "labels": ("string", (None, TOP_K)),
                "scores": ("float32", (None, TOP_K)),
                "weights": ("string", (None,)),
            },
        },
    }


CONTRACT = contract()


@dataclass(frozen=True)
class ConvertedModel:
    """What a converter backend hands over: the converted graph, in memory, ready to wrap.

    Backends do not save their own SavedModel for us to reload: onnx2tf's Keras model takes
    ~70 s to serialize as Keras layers (240 s with its default TFLite output), while the
    wrapper saves only the traced graph and the variables in about a second.
    """

    call: Callable[[tf.Tensor], tf.Tensor]  # a batch in `layout` → logits [batch, classes]
    trackable: Any  # what owns the variables (a loaded SavedModel, or a list of variables)
    layout: str  # "NCHW" or "NHWC": the layout the converted graph's input expects


def _resized_size(height: tf.Tensor, width: tf.Tensor, size: int = RESNET18.resize) -> tuple[tf.Tensor, tf.Tensor]:
    # torchvision Resize(size): the shorter side becomes `size`, the longer int(size * long / short).
    short = tf.minimum(height, width)
    long = tf.maximum(height, width)
    new_long = tf.cast(tf.math.floor(size * tf.cast(long, tf.float64) / tf.cast(short, tf.float64)), tf.int32)
    new_height = tf.where(height <= width, size, new_long)
    new_width = tf.where(height <= width, new_long, size)
    return new_height, new_width


def preprocess_image(encoded: tf.Tensor, spec: Preprocessing = RESNET18) -> tf.Tensor:
    """JPEG/PNG bytes → float32 [3, crop, crop], as the model's torchvision transforms on a PIL image.

    PIL resizes a uint8 image in two passes, horizontal then vertical, with an antialiased bilinear
    or bicubic filter, rounding and clipping to uint8 after each; the graph does the same with two
    tf.image.resize(antialias=...) calls. One pass differed from PIL by up to 5 grey levels with
    bicubic (whose negative lobes PIL clips between passes) and 1 with bilinear; two passes leave
    at most one grey level on 0.2% (bicubic) and 3% (bilinear) of the pixels. Not bit-identical,
    which is why preprocessing parity has its own, measured bound.
    """
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        # PIL decodes JPEG with libjpeg's accurate integer IDCT; TF's default is the fast one.
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    shape = tf.shape(image)
    new_height, new_width = _resized_size(shape[0], shape[1], spec.resize)
    resized = tf.cast(image, tf.float32)
    for size in (tf.stack([shape[0], new_width]), tf.stack([new_height, new_width])):  # PIL's passes
        # "bilinear" and "bicubic" are tf.image.ResizeMethod's names too.
        resized = tf.image.resize(resized, size, method=spec.interpolation, antialias=spec.antialias)
        resized = tf.round(tf.clip_by_value(resized, 0.0, 255.0))
    # torchvision CenterCrop: top = int(round((h - crop) / 2)), Python's round (half to even) like tf.round.
    top = tf.cast(tf.round(tf.cast(new_height - spec.crop, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_width - spec.crop, tf.float32) / 2.0), tf.int32)
    cropped = tf.slice(resized, tf.stack([top, left, 0]), [spec.crop, spec.crop, 3])
    normalized = (cropped / 255.0 - tf.constant(spec.mean)) / tf.constant(spec.std)
    return tf.transpose(normalized, [2, 0, 1])


class ServingModule(tf.Module):
    """Wraps a converted SavedModel behind the project's two signatures."""

    def __init__(self, converted: ConvertedModel, labels: list[str], weights: str, preprocessing: Preprocessing):
        super().__init__()
        if converted.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be NCHW or NHWC, not {converted.layout!r}")
        if preprocessing.crop != CROP:
            raise ValueError(f"{preprocessing.source} crops to {preprocessing.crop}; the contract's input is {CROP}")
        self._preprocessing = preprocessing
        self.converted = converted.trackable  # tracked: its variables are saved with this module
        self._call = converted.call  # not tracked: only the traced graph is saved
        self._layout = converted.layout
        self.labels = tf.constant(labels, dtype=tf.string)
        self.weights = tf.constant(weights, dtype=tf.string)

    def logits(self, images_nchw: tf.Tensor) -> tf.Tensor:
        if self._layout == "NHWC":
            images_nchw = tf.transpose(images_nchw, [0, 2, 3, 1])
        return self._call(images_nchw)

    @tf.function(input_signature=[tf.TensorSpec([None, 3, CROP, CROP], tf.float32, name="input")])
    def serve(self, input):  # the argument name is the signature's input key
        return {"output": tf.identity(self.logits(input), name="output")}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def predict_images(self, image_bytes):
        images = tf.map_fn(
            lambda encoded: preprocess_image(encoded, self._preprocessing),
            image_bytes,
            fn_output_signature=tf.TensorSpec([3, CROP, CROP], tf.float32),
        )
        probabilities = tf.nn.softmax(self.logits(images), axis=-1)
        scores, classes = tf.math.top_k(probabilities, k=TOP_K)
        return {
            "probabilities": probabilities,
            "classes": classes,
            "labels": tf.gather(self.labels, classes),
            "scores": scores,
            "weights": tf.fill(tf.shape(image_bytes), self.weights),
        }


def save_serving_model(
    converted: ConvertedModel, labels: list[str], weights: str, path: Path, preprocessing: Preprocessing = RESNET18
) -> None:
    """Write the wrapped SavedModel with exactly the contract's signatures; `weights` says whose answers."""
    module = ServingModule(converted, labels, weights, preprocessing)
    signatures = {
        SERVING_DEFAULT: module.serve.get_concrete_function(),
        PREDICT_IMAGES: module.predict_images.get_concrete_function(),
    }
    tf.saved_model.save(module, str(path), signatures=signatures)


def _describe(spec: tf.TensorSpec) -> tuple[str, tuple[int | None, ...]]:
    return spec.dtype.name, tuple(spec.shape.as_list())


def contract_problems(loaded: Any, num_classes: int = NUM_CLASSES) -> list[str]:
    """Every difference between a loaded SavedModel's signatures and the contract for `num_classes`; empty when
    exact."""
    wanted = contract(num_classes)
    problems = []
    names = set(loaded.signatures.keys())
    if names != set(wanted):
        problems.append(f"signatures are {sorted(names)}, the contract has {sorted(wanted)}")
    for name in sorted(names & set(wanted)):
        function = loaded.signatures[name]
        _, kwargs = function.structured_input_signature
        found = {
            "inputs": {key: _describe(spec) for key, spec in kwargs.items()},
            "outputs": {key: _describe(spec) for key, spec in function.structured_outputs.items()},
        }
        for side in ("inputs", "outputs"):
            want, have = wanted[name][side], found[side]
            if set(want) != set(have):
                problems.append(f"{name} {side} are {sorted(have)}, the contract has {sorted(want)}")
            for key in sorted(set(want) & set(have)):
                if want[key] != have[key]:
                    problems.append(f"{name} {side[:-1]} '{key}' is {have[key]}, the contract says {want[key]}")
    return problems
