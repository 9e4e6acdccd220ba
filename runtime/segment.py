"""Tiled and whole-image prediction of one image with any batch predictor.

``predict`` is any callable taking an (N, h, w, C) float32 batch and returning (N, h, w, K)
probabilities: a backend's ``predict``, or ``keras_model.predict_on_batch`` during training previews.
Geometry and blending come from :mod:`runtime.tiling`; tiles are never resized.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import tiling

Predictor = Callable[[np.ndarray], np.ndarray]


def predict_tiled(image: np.ndarray, predict: Predictor, tile: tuple[int, int], overlap: int = 64,
                  blend: str = "cosine", batch_size: int = 4) -> np.ndarray:
    """Probabilities (H, W, K) for a pre-processed (H, W, C) float32 image.

    The image is reflect-padded when smaller than a tile; overlapping tile predictions are blended
    with the ``blend`` window ('cosine', 'gaussian' or 'none').
    """
    h, w = image.shape[:2]
    th, tw = tile
    ph, pw, grid = tiling.plan(h, w, th, tw, overlap)
    padded = tiling.pad_image(image, ph, pw, mode="reflect")
    window = tiling.blend_window(th, tw, blend, overlap)
    stitcher = None
    corners = list(grid)
    for start in range(0, len(corners), batch_size):
        chunk = corners[start:start + batch_size]
        batch = np.stack([padded[y:y + th, x:x + tw] for y, x in chunk])
        probs = np.asarray(predict(batch), dtype=np.float32)
        if stitcher is None:
            stitcher = tiling.Stitcher(ph, pw, probs.shape[-1], window)
        stitcher.add_batch(probs, chunk)
    return stitcher.result(h, w)


def predict_whole(image: np.ndarray, predict: Predictor, multiple: int = 1) -> np.ndarray:
    """Probabilities (H, W, K) from one pass over the whole image, reflect-padded to ``multiple``."""
    h, w = image.shape[:2]
    ph, pw = tiling.padded_size(h, w, 1, 1, multiple)
    padded = tiling.pad_image(image, ph, pw, mode="reflect")
    probs = np.asarray(predict(padded[None]), dtype=np.float32)[0]
    return probs[:h, :w]
