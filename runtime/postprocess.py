"""Optional clean-up of label maps (OpenCV connected components), per class for multiclass maps.

Label maps are ``HxW`` uint8 class indices with 0 the background (binary maps: 0/1).  Objects
are 8-connected; holes (background regions) 4-connected, the usual dual pair.
"""
from __future__ import annotations

import cv2
import numpy as np


def _classes(labels: np.ndarray) -> list[int]:
    """Foreground class indices present in ``labels``."""
    return [int(c) for c in np.unique(labels) if c != 0]


def remove_small_objects(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set every 8-connected object of fewer than ``min_size`` pixels (per class) to background.

    Returns a new array; ``min_size <= 1`` returns a copy unchanged.
    """
    out = labels.copy()
    if min_size <= 1:
        return out
    for c in _classes(labels):
        _, comp, stats, _ = cv2.connectedComponentsWithStats((labels == c).astype(np.uint8), connectivity=8)
        small = stats[:, cv2.CC_STAT_AREA] < min_size
        small[0] = False  # component 0 is everything that is not class c
        out[small[comp]] = 0
    return out


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Fill background holes: a background region that does not touch the image border and is
    enclosed by a single class takes that class.

    For class ``c`` a hole is a 4-connected region of pixels that are not ``c``, does not touch the
    border, and holds only background (a region containing another class is left alone).
    Returns a new array.
    """
    out = labels.copy()
    background = (labels == 0).ravel()
    for c in _classes(labels):
        n, comp = cv2.connectedComponents((labels != c).astype(np.uint8), connectivity=4)
        fill = np.ones(n, dtype=bool)
        fill[0] = False  # the class-c pixels themselves
        fill[np.unique(np.concatenate([comp[0], comp[-1], comp[:, 0], comp[:, -1]]))] = False
        foreign = np.bincount(comp.ravel(), weights=~background, minlength=n) > 0
        fill &= ~foreign
        out[fill[comp]] = c
    return out
