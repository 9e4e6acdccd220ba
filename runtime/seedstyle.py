"""The seed API's tiled inference, reproduced as a baseline for speed and quality comparisons.

What the seed's TiledInferencer does, per image: split it into ``size`` x ``size`` tiles; for each,
crop the tile plus ``margin`` pixels around it (clipped at the image border), RESIZE the crop to the
model input, predict it alone (batch 1), resize the prediction back to the crop and paste its centre;
then (``bitwise_blending``) AND the mask with a prediction of the whole image downscaled to the model
input.  Resizing changes the scale the model sees near the borders, and the whole-image AND removes
small objects; flexunet's runtime replaces all of it.  Used by benchmarks and ``flexunet bench
--baseline seed`` only.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from flexunet.core.masks import labels_from_probabilities


def _resize(a: np.ndarray, width: int, height: int) -> np.ndarray:
    out = cv2.resize(a, (width, height), interpolation=cv2.INTER_LINEAR)
    return out.reshape(height, width, -1)


def seed_style_probabilities(x: np.ndarray, predict_one: Callable[[np.ndarray], np.ndarray], size: int,
                             margin: int = 64) -> np.ndarray:
    """Tile-by-tile probabilities (H, W, K) of a pre-processed (H, W, C) image, the seed's way."""
    h, w = x.shape[:2]
    out = None
    for top in range(0, h, size):
        for left in range(0, w, size):
            y0, x0 = max(top - margin, 0), max(left - margin, 0)
            y1, x1 = min(top + size + margin, h), min(left + size + margin, w)
            crop = _resize(x[y0:y1, x0:x1], size, size)
            pred = np.asarray(predict_one(crop[None]), dtype=np.float32)[0]
            pred = _resize(pred, x1 - x0, y1 - y0)
            if out is None:
                out = np.zeros((h, w, pred.shape[-1]), np.float32)
            ty1, tx1 = min(top + size, h), min(left + size, w)
            out[top:ty1, left:tx1] = pred[top - y0:ty1 - y0, left - x0:tx1 - x0]
    return out


def seed_style_labels(x: np.ndarray, predict_one: Callable[[np.ndarray], np.ndarray], size: int,
                      margin: int = 64, bitwise_blending: bool = True, threshold: float = 0.5) -> np.ndarray:
    """Label map (H, W) the seed's tiled inferencer would produce (binary models AND the whole-image mask)."""
    probs = seed_style_probabilities(x, predict_one, size, margin)
    labels = labels_from_probabilities(probs, threshold)
    if bitwise_blending and probs.shape[-1] == 1:
        h, w = x.shape[:2]
        whole = np.asarray(predict_one(_resize(x, size, size)[None]), dtype=np.float32)[0]
        whole = labels_from_probabilities(_resize(whole, w, h), threshold)
        labels &= whole
    return labels
