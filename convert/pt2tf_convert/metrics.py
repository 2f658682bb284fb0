"""Parity metrics between two sets of logits (numpy only)."""

from __future__ import annotations

import numpy as np


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max/mean abs error, max error relative to the reference's largest magnitude, cosine, top-1/top-5."""
    reference = reference.astype(np.float64)
    candidate = candidate.astype(np.float64)
    diff = np.abs(candidate - reference)
    cosine = np.sum(reference * candidate, axis=1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    )
    top5_ref = np.sort(np.argsort(-reference, axis=1)[:, :5], axis=1)
    top5_got = np.sort(np.argsort(-candidate, axis=1)[:, :5], axis=1)
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "max_rel": float(diff.max() / np.abs(reference).max()),
        "min_cosine": float(cosine.min()),
        "top1_agreement": float(np.mean(reference.argmax(1) == candidate.argmax(1))),
        "top5_set_agreement": float(np.mean(np.all(top5_ref == top5_got, axis=1))),
    }


# How far from PyTorch float32 another float32 implementation of a model may land, in units of PyTorch's own float32
# rounding (its float32 vs float64 logits). Measured across resnet18/50, mobilenet_v3_small/large, efficientnet_b0
# and regnet_y_400mf on the three lanes: healthy conversions land 0.6–2.9× it (different summation orders, oneDNN
# kernels); 2× failed four of them. A mis-converted layer is not a rounding-sized error.
ROUNDING_FACTOR = 4.0


# Of the 16 reference inputs, how many distinct top-1 classes a seeded model must give for
# agreement on them to mean anything (issue: answers that collapse to a few classes prove little).
MIN_DISTINCT_TOP1 = 12


def distinct_top1_needed(num_classes: int) -> int:
    """MIN_DISTINCT_TOP1, or half the classes of a model with fewer than 24 (a user's 10-class model cannot give 12)."""
    return min(MIN_DISTINCT_TOP1, max(2, num_classes // 2))


def discrimination(logits: np.ndarray) -> dict:
    """Per input, the top-1 class and its margin (top-1 minus top-2 logit); the distinct-class count."""
    logits = logits.astype(np.float64)
    order = np.argsort(-logits, axis=1, kind="stable")
    rows = np.arange(len(logits))
    margins = logits[rows, order[:, 0]] - logits[rows, order[:, 1]]
    return {
        "top1": [int(c) for c in order[:, 0]],
        "margins": [float(m) for m in margins],
        "distinct_top1": len(set(order[:, 0].tolist())),
        "min_margin": float(margins.min()),
        "inputs": len(logits),
    }
