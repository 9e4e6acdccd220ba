"""Mask agreement metrics (numpy): the one dice/IoU implementation used by evaluation, export
verification, parity and benchmarks.

Conventions, stated once: masks are compared as booleans; when both masks are empty the dice and the
IoU are 1.0 (the two agree perfectly); when exactly one is empty they are 0.0.
"""
from __future__ import annotations

import numpy as np


def _counts(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int]:
    a = np.asarray(a).astype(bool, copy=False)
    b = np.asarray(b).astype(bool, copy=False)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    inter = int(np.count_nonzero(a & b))
    return inter, int(np.count_nonzero(a)), int(np.count_nonzero(b))


def dice_from_counts(inter: int, na: int, nb: int) -> float:
    """2|A∩B| / (|A|+|B|) from pixel counts (which may be pooled over images); 1.0 if both are empty."""
    return 1.0 if na + nb == 0 else 2.0 * inter / (na + nb)


def iou_from_counts(inter: int, na: int, nb: int) -> float:
    """|A∩B| / |A∪B| from pixel counts; 1.0 if both are empty."""
    union = na + nb - inter
    return 1.0 if union == 0 else inter / union


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A|+|B|) of two binary masks; 1.0 if both are empty."""
    return dice_from_counts(*_counts(a, b))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two binary masks; 1.0 if both are empty."""
    return iou_from_counts(*_counts(a, b))


def per_class_dice(a: np.ndarray, b: np.ndarray, num_classes: int) -> list[float]:
    """Dice of each class index in two label maps (HxW ints); a class absent from both scores 1.0."""
    return [dice(a == c, b == c) for c in range(num_classes)]


def flipped_fraction(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels whose label differs between two label maps or masks."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    return float(np.count_nonzero(a != b)) / float(a.size) if a.size else 0.0
