"""Cutting one image into model inputs, and tiled or whole-image prediction with any predictor.

``predict`` is any callable taking an (N, h, w, C) float32 batch and returning (N, h, w, K)
probabilities: a backend's ``predict``, or ``keras_model.predict_on_batch`` during training previews.
:class:`Layout` is the one description of how an image is cut (the pipeline uses it too); geometry
and blending come from :mod:`runtime.tiling`; tiles are never resized.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from flexunet.core import tiling

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Layout:
    """How an image is cut into model inputs.

    Attributes:
        tile: ``(height, width)`` of the tiles, or None for one pass over the whole image.
        overlap: minimum overlap of neighbouring tiles (and the cosine ramp length), pixels.
        blend: blending window of overlapping tiles: ``cosine``, ``gaussian`` or ``none``.
        multiple: whole-image passes pad the image to a multiple of this.
    """

    tile: tuple[int, int] | None
    overlap: int = 0
    blend: str = "cosine"
    multiple: int = 1

    def cut(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int], list[tuple[int, int]], np.ndarray | None]:
        """``(padded image, tile size, tile corners, blending window or None for a whole pass)``.

        The image is reflect-padded at the bottom/right: to a tile when smaller than one, or to
        ``multiple`` for a whole pass; tiles are never resized.
        """
        h, w = image.shape[:2]
        if self.tile is None:
            ph, pw = tiling.padded_size(h, w, 1, 1, self.multiple)
            return tiling.pad_image(image, ph, pw, mode="reflect"), (ph, pw), [(0, 0)], None
        th, tw = self.tile
        ph, pw, grid = tiling.plan(h, w, th, tw, self.overlap)
        window = tiling.blend_window(th, tw, self.blend, self.overlap)
        return tiling.pad_image(image, ph, pw, mode="reflect"), (th, tw), list(grid), window

    def tiles(self, image: np.ndarray) -> np.ndarray:
        """The (N, h, w, C) model inputs this layout cuts from a pre-processed image (a copy)."""
        padded, (th, tw), corners, _ = self.cut(image)
        return np.stack([padded[y:y + th, x:x + tw] for y, x in corners])


def predict_image(image: np.ndarray, predict: Predictor, layout: Layout, batch_size: int = 4) -> np.ndarray:
    """Probabilities (H, W, K) for a pre-processed (H, W, C) float32 image cut by ``layout``:
    overlapping tile predictions blended with its window, or one padded whole-image pass."""
    h, w = image.shape[:2]
    padded, (th, tw), corners, window = layout.cut(image)
    if window is None:
        return np.asarray(predict(padded[None]), dtype=np.float32)[0][:h, :w]
    stitcher = None
    for start in range(0, len(corners), batch_size):
        chunk = corners[start:start + batch_size]
        probs = np.asarray(predict(np.stack([padded[y:y + th, x:x + tw] for y, x in chunk])), dtype=np.float32)
        if stitcher is None:
            stitcher = tiling.Stitcher(padded.shape[0], padded.shape[1], probs.shape[-1], window)
        stitcher.add_batch(probs, chunk)
    return stitcher.result(h, w)


def predict_tiled(image: np.ndarray, predict: Predictor, tile: tuple[int, int], overlap: int = 64,
                  blend: str = "cosine", batch_size: int = 4) -> np.ndarray:
    """Tiled probabilities (H, W, K): tiles of ``tile`` overlapping by ``overlap``, blended with
    the ``blend`` window ('cosine', 'gaussian' or 'none'); small images are reflect-padded."""
    return predict_image(image, predict, Layout(tuple(tile), overlap, blend), batch_size)


def predict_whole(image: np.ndarray, predict: Predictor, multiple: int = 1) -> np.ndarray:
    """Probabilities (H, W, K) from one pass over the whole image, reflect-padded to ``multiple``."""
    return predict_image(image, predict, Layout(None, multiple=multiple))
