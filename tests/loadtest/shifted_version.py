"""Publish a copy of a model version that answers wrongly, or slowly: a candidate a gate must catch.

Run with the lane's python (TensorFlow):

    python shifted_version.py SRC_VERSION_DIR DST_VERSION_DIR            # every class shifted by one
    python shifted_version.py SRC_VERSION_DIR DST_VERSION_DIR --slower 6 # same answers, the model run 6 times

The first stands for a candidate that loads, serves both signatures at the same speed and shape, and
answers differently from the version it replaces; the second for a heavier model behind the same
signatures. The warmup records are kept, so the server loads either as it loads a converted version.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import tensorflow as tf

CLASSES = 1000


class Candidate(tf.Module):
    def __init__(self, source: Path, shift: int, runs: int):
        super().__init__()
        self.loaded = tf.saved_model.load(str(source))
        self.shift, self.runs = shift, runs

    @tf.function(input_signature=[tf.TensorSpec([None, 3, 224, 224], tf.float32, name="input")])
    def serving_default(self, input):  # the signature's input key is "input"
        logits = self.loaded.signatures["serving_default"](input=input)["output"]
        for _ in range(self.runs - 1):
            # Each run depends on the last (by a term that is zero), so none can be folded or run in parallel.
            again = input + 0.0 * tf.reduce_min(logits)
            logits = self.loaded.signatures["serving_default"](input=again)["output"]
        return {"output": tf.roll(logits, shift=self.shift, axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def predict_images(self, image_bytes):
        out = dict(self.loaded.signatures["predict_images"](image_bytes=image_bytes))
        out["probabilities"] = tf.roll(out["probabilities"], shift=self.shift, axis=1)
        out["classes"] = (out["classes"] + self.shift) % CLASSES
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--slower", type=int, help="keep the answers; run the model this many times per call")
    args = parser.parse_args()
    module = Candidate(args.source, shift=0 if args.slower else 1, runs=args.slower or 1)
    staging = args.target.with_name("." + args.target.name + ".staging")
    signatures = {"serving_default": module.serving_default, "predict_images": module.predict_images}
    tf.saved_model.save(module, str(staging), signatures=signatures)
    shutil.copytree(args.source / "assets.extra", staging / "assets.extra")
    staging.rename(args.target)  # a polling server sees the version whole or not at all


if __name__ == "__main__":
    main()
