"""The tiled engine: one place that turns images, a :class:`~flexunet.runtime.layout.Layout` and a
predictor into blended probabilities.

Used by :meth:`Segmenter.segment <flexunet.runtime.segmenter.Segmenter.segment>` (one image,
:func:`predict_image`), by folder runs (:mod:`flexunet.runtime.pipeline` runs the same steps in
threads) and by training previews (:func:`predict_tiled`).  The steps:

1. :class:`TiledImage` cuts a pre-processed image by the layout (padding, tile corners, window);
2. :func:`batches` groups the tiles of consecutive images into batches of ``batch_size``;
3. :func:`stack_tiles` copies a batch's tiles into one array (and frees inputs fully batched);
4. :func:`predict_batch` runs the predictor and checks its output;
5. :func:`blend_batch` blends each tile's prediction into its image (:class:`~flexunet.core.blending.Stitcher`).

``predict`` is any callable taking an (N, h, w, C) float32 batch and returning (N, h, w, K)
probabilities: a backend's ``predict``, or ``keras_model.predict_on_batch`` during training previews.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

from flexunet.core.blending import Stitcher
from flexunet.core.errors import ModelError
from flexunet.runtime.layout import Layout

__all__ = ["Layout", "Predictor", "TiledImage", "batches", "blend_batch", "predict_batch", "predict_image",
           "predict_tiled", "predict_whole", "stack_tiles", "tile_refs"]

Predictor = Callable[[np.ndarray], np.ndarray]


class TiledImage:
    """One pre-processed ``(H, W, C)`` image cut by a layout: its tiles as model inputs, then the
    blend of their predictions (a whole-image layout gives one tile: the padded image)."""

    def __init__(self, x: np.ndarray, layout: Layout):
        self.height, self.width = x.shape[:2]
        self._padded, self.tile, self.corners, self._window = layout.cut(x)
        self.padded_size = self._padded.shape[:2]
        self.channels = self._padded.shape[2]
        self.remaining = len(self.corners)  # tiles whose prediction is not blended yet
        self._stitcher: Stitcher | None = None
        self._probs: np.ndarray | None = None

    def __len__(self) -> int:
        """Number of tiles."""
        return len(self.corners)

    def tile_input(self, i: int) -> np.ndarray:
        """The ``i``-th tile of the padded input (a view)."""
        y, x = self.corners[i]
        return self._padded[y:y + self.tile[0], x:x + self.tile[1]]

    def release_input(self) -> None:
        """Drop the padded input (every tile was copied into a batch)."""
        self._padded = None

    def add(self, pred: np.ndarray, i: int) -> bool:
        """Blend the ``(h, w, K)`` prediction of the ``i``-th tile; True when it was the last one."""
        if self._window is None:
            self._probs = pred[:self.height, :self.width]
        else:
            if self._stitcher is None:
                self._stitcher = Stitcher(*self.padded_size, pred.shape[-1], self._window)
            self._stitcher.add(pred, *self.corners[i])
        self.remaining -= 1
        return self.remaining == 0

    def probabilities(self) -> np.ndarray:
        """The blended ``(H, W, K)`` float32 probabilities (once every tile was added)."""
        if self.remaining:
            raise RuntimeError(f"{self.remaining} of {len(self)} tiles have no prediction yet")
        if self._window is None:
            return self._probs
        return self._stitcher.result(self.height, self.width)


TileRef = tuple[TiledImage, int]  # the i-th tile of an image


def tile_refs(images: Iterable[TiledImage]) -> Iterator[TileRef]:
    """Every tile of every image, in order."""
    for image in images:
        for i in range(len(image)):
            yield image, i


def batches(refs: Iterable[TileRef], batch_size: int) -> Iterator[list[TileRef]]:
    """Consecutive tiles in batches of ``batch_size``, across images; a batch is cut short only
    where the tile shape changes (whole-image layouts) and at the end."""
    pending: list[TileRef] = []
    for ref in refs:
        if pending and pending[0][0].tile != ref[0].tile:
            yield pending
            pending = []
        pending.append(ref)
        if len(pending) == batch_size:
            yield pending
            pending = []
    if pending:
        yield pending


def stack_tiles(refs: list[TileRef]) -> tuple[np.ndarray, int]:
    """``(batch, completed)``: the float32 ``(N, h, w, C)`` batch of these tiles, and how many images
    had their last tile in it (their inputs are released)."""
    first = refs[0][0]
    batch = np.empty((len(refs), *first.tile, first.channels), dtype=np.float32)
    completed = 0
    for k, (image, i) in enumerate(refs):
        batch[k] = image.tile_input(i)
        if i == len(image) - 1:
            image.release_input()
            completed += 1
    return batch, completed


def predict_batch(predict: Predictor, batch: np.ndarray, name: str = "the model") -> np.ndarray:
    """``predict(batch)`` as float32, checked to be ``N x h x w x K`` for an ``N x h x w x C`` batch.

    Raises:
        ModelError: an output of another shape (``name`` says which model).
    """
    preds = np.asarray(predict(batch), dtype=np.float32)
    if preds.ndim != 4 or preds.shape[:3] != batch.shape[:3]:
        raise ModelError(f"{name}: output of shape {preds.shape} for an input batch of shape {batch.shape}; "
                         "expected N x H x W x classes probabilities")
    return preds


def blend_batch(preds: np.ndarray, refs: list[TileRef]) -> list[TiledImage]:
    """Blend each prediction into its image; the images that are now complete, in order."""
    return [image for pred, (image, i) in zip(preds, refs) if image.add(pred, i)]


def predict_image(image: np.ndarray, predict: Predictor, layout: Layout, batch_size: int = 4,
                  name: str = "the model") -> np.ndarray:
    """Probabilities (H, W, K) for a pre-processed (H, W, C) float32 image cut by ``layout``:
    overlapping tile predictions blended with its window, or one padded whole-image pass."""
    tiled = TiledImage(image, layout)
    for refs in batches(tile_refs([tiled]), batch_size):
        batch, _ = stack_tiles(refs)
        blend_batch(predict_batch(predict, batch, name), refs)
    return tiled.probabilities()


def predict_tiled(image: np.ndarray, predict: Predictor, tile: tuple[int, int], overlap: int = 64,
                  blend: str = "cosine", batch_size: int = 4) -> np.ndarray:
    """Tiled probabilities (H, W, K): tiles of ``tile`` overlapping by ``overlap``, blended with
    the ``blend`` window ('cosine', 'gaussian' or 'none'); small images are reflect-padded."""
    return predict_image(image, predict, Layout(tuple(tile), overlap, blend), batch_size)


def predict_whole(image: np.ndarray, predict: Predictor, multiple: int = 1) -> np.ndarray:
    """Probabilities (H, W, K) from one pass over the whole image, reflect-padded to ``multiple``."""
    return predict_image(image, predict, Layout(None, multiple=multiple))
