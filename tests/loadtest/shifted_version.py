"""Publish a copy of a model version whose answers are all wrong: every class shifted by one.

Run with the lane's python (TensorFlow): `python shifted_version.py SRC_VERSION_DIR DST_VERSION_DIR`.
It stands for a candidate that loads, serves both signatures at the same speed and shape, and
answers differently from the version it replaces — what the gate's answer check must catch.
The warmup records are kept, so the server loads it exactly as it loads a converted version.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import tensorflow as tf

CLASSES = 1000


class Shifted(tf.Module):
    def __init__(self, source: Path):
        super().__init__()
        self.loaded = tf.saved_model.load(str(source))

    @tf.function(input_signature=[tf.TensorSpec([None, 3, 224, 224], tf.float32, name="input")])
    def serving_default(self, input):  # the signature's input key is "input"
        logits = self.loaded.signatures["serving_default"](input=input)["output"]
        return {"output": tf.roll(logits, shift=1, axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def predict_images(self, image_bytes):
        out = dict(self.loaded.signatures["predict_images"](image_bytes=image_bytes))
        out["probabilities"] = tf.roll(out["probabilities"], shift=1, axis=1)
        out["classes"] = (out["classes"] + 1) % CLASSES
        return out


def main(source: Path, target: Path) -> None:
    module = Shifted(source)
    staging = target.with_name("." + target.name + ".staging")
    signatures = {"serving_default": module.serving_default, "predict_images": module.predict_images}
    tf.saved_model.save(module, str(staging), signatures=signatures)
    shutil.copytree(source / "assets.extra", staging / "assets.extra")
    staging.rename(target)  # a polling server sees the version whole or not at all


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
