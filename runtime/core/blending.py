"""Blending overlapping tile predictions (numpy only): windows and the stitcher.

Overlapping predictions are blended with a strictly positive window (:func:`blend_window`): each
output pixel is ``sum(w_i * p_i) / sum(w_i)`` over the tiles covering it (:class:`Stitcher`).
Hence constant predictions stitch to the same constant, and a translation-equivariant model gives
the same tiled and whole-image output, whatever the window.  Windows are computed once per (tile
shape, mode) and cached.  The geometry (grids, padding) is :mod:`flexunet.core.tiling`.
"""
from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence

import numpy as np

from flexunet.core.tiling import BLEND_MODES, checked_int

MIN_WEIGHT = 1e-3  # smallest blending weight (cosine: per axis), relative to the window maximum of 1
RAMP_MARGIN = 0.25  # share of a cosine ramp, at the tile border, held at MIN_WEIGHT


def _cosine_profile(size: int, ramp: int) -> np.ndarray:
    """1-D raised-cosine window over ``ramp`` pixels at each end, 1 in between, symmetric, at least
    :data:`MIN_WEIGHT`: the outer quarter of the ramp (:data:`RAMP_MARGIN`) stays at MIN_WEIGHT, the
    rest rises.  Predictions nearest a tile's border, where its zero padding reaches, then count
    next to nothing where a neighbouring tile sees the same pixels further inside."""
    ramp = min(ramp, size // 2)
    profile = np.ones(size, dtype=np.float64)
    if ramp > 0:
        margin = int(ramp * RAMP_MARGIN)
        # Samples of 0.5 * (1 - cos(pi * t)) at t = 1/(n+1) ... n/(n+1): > 0 and < 1.
        t = np.arange(1, ramp - margin + 1, dtype=np.float64) / (ramp - margin + 1)
        rise = np.concatenate([np.zeros(margin), 0.5 * (1.0 - np.cos(math.pi * t))])
        profile[:ramp] = rise
        profile[size - ramp:] = rise[::-1]
    return np.maximum(profile, MIN_WEIGHT)


def _gaussian_profile(size: int, sigma_scale: float) -> np.ndarray:
    """1-D gaussian centred on the middle of ``size`` pixels with ``sigma = sigma_scale * size``."""
    centre = (size - 1) / 2.0
    sigma = sigma_scale * size
    return np.exp(-0.5 * ((np.arange(size, dtype=np.float64) - centre) / sigma) ** 2)


@functools.lru_cache(maxsize=64)
def _cached_window(tile_h: int, tile_w: int, mode: str, ramp_h: int, ramp_w: int,
                   sigma_scale: float) -> np.ndarray:
    """The window for validated, normalised arguments (see :func:`blend_window`)."""
    if mode == "none":
        window = np.ones((tile_h, tile_w), dtype=np.float64)
    elif mode == "cosine":
        window = np.outer(_cosine_profile(tile_h, ramp_h), _cosine_profile(tile_w, ramp_w))
    else:
        window = np.outer(_gaussian_profile(tile_h, sigma_scale), _gaussian_profile(tile_w, sigma_scale))
    # Cosine windows are clamped per axis (in the profiles), so that along an image border, where
    # the tiles' windows are small on both axes, their ratio still follows the ramp across a seam.
    window = window / window.max()
    window = (window if mode == "cosine" else np.maximum(window, MIN_WEIGHT)).astype(np.float32)
    window.flags.writeable = False
    return window


def blend_window(tile_h: int, tile_w: int, mode: str = "cosine", overlap: int | None = None,
                 sigma_scale: float = 0.125) -> np.ndarray:
    """Blending weights for one tile, computed once per argument set and cached.

    Args:
        tile_h, tile_w: tile size.
        mode: ``"none"`` (all ones: plain averaging of overlaps), ``"cosine"`` (separable; 1 in
            the centre, rising with a raised cosine over ``overlap`` pixels at each border) or
            ``"gaussian"`` (separable gaussian with ``sigma = sigma_scale * size`` per axis).
        overlap: cosine ramp length in pixels (clamped to half the tile side); ``None`` uses
            ``tile_h // 4`` along y and ``tile_w // 4`` along x; 0 gives all ones.  Ignored by
            other modes.
        sigma_scale: gaussian sigma as a fraction of the tile side.  Ignored by other modes.

    Returns:
        A read-only float32 ``(tile_h, tile_w)`` array, symmetric under flips, with maximum 1 and
        every weight ``>= 1e-3`` (cosine: ``>= 1e-6``, 1e-3 per axis; strictly positive, so every
        covered pixel has a defined blend).
        The same array object is returned for repeated calls with the same arguments.

    Raises:
        ValueError: for an unknown mode, a negative overlap or a non-positive sigma_scale.
    """
    tile_h = checked_int(tile_h, "tile_h", 1)
    tile_w = checked_int(tile_w, "tile_w", 1)
    if mode not in BLEND_MODES:
        raise ValueError(f"blend mode must be one of {BLEND_MODES}, got {mode!r}")
    if overlap is None:
        ramp_h, ramp_w = tile_h // 4, tile_w // 4
    else:
        ramp_h = ramp_w = checked_int(overlap, "overlap", 0)
    sigma_scale = float(sigma_scale)
    if not sigma_scale > 0 or not math.isfinite(sigma_scale):
        raise ValueError(f"sigma_scale must be a positive number, got {sigma_scale}")
    # Arguments a mode ignores are normalised so that equivalent calls share one cache entry.
    if mode != "cosine":
        ramp_h = ramp_w = 0
    if mode != "gaussian":
        sigma_scale = 0.0
    return _cached_window(tile_h, tile_w, mode, ramp_h, ramp_w, sigma_scale)


class Stitcher:
    """Accumulates weighted tile predictions into a full-size map.

    Each :meth:`add` does ``acc[y:y+th, x:x+tw] += pred * window`` and
    ``wsum[y:y+th, x:x+tw] += window``; :meth:`result` returns ``acc / wsum``.  Accumulators are
    float32: ``(H, W, C)`` for the predictions and ``(H, W)`` for the weights.

    Args:
        height, width: size of the (possibly padded) image the tiles index.
        channels: number of prediction channels ``C``.
        window: strictly positive ``(tile_h, tile_w)`` blending weights, e.g. from
            :func:`blend_window`; its shape is the tile size.

    Raises:
        ValueError: if the window is not 2-D, larger than the image, or not strictly positive.
    """

    def __init__(self, height: int, width: int, channels: int, window: np.ndarray):
        self.height = checked_int(height, "height", 1)
        self.width = checked_int(width, "width", 1)
        self.channels = checked_int(channels, "channels", 1)
        window = np.asarray(window, dtype=np.float32)
        if window.ndim != 2:
            raise ValueError(f"window must be a 2-D array, got shape {window.shape}")
        self.tile_h, self.tile_w = window.shape
        if self.tile_h > self.height or self.tile_w > self.width:
            raise ValueError(
                f"window {self.tile_h}x{self.tile_w} is larger than the image {self.height}x{self.width}"
            )
        if not np.all(window > 0) or not np.all(np.isfinite(window)):
            raise ValueError("window weights must be finite and strictly positive")
        self._window = window
        self._window3 = window[:, :, None]
        self._acc = np.zeros((self.height, self.width, self.channels), dtype=np.float32)
        self._wsum = np.zeros((self.height, self.width), dtype=np.float32)

    def add(self, pred_tile: np.ndarray, y: int, x: int) -> None:
        """Add one ``(tile_h, tile_w, C)`` prediction whose top-left corner is ``(y, x)``.

        Raises:
            ValueError: if the prediction has the wrong shape or the tile leaves the image.
        """
        expected = (self.tile_h, self.tile_w, self.channels)
        if pred_tile.shape != expected:
            raise ValueError(f"prediction tile has shape {pred_tile.shape}, expected {expected}")
        y, x = operator.index(y), operator.index(x)
        if not (0 <= y <= self.height - self.tile_h and 0 <= x <= self.width - self.tile_w):
            raise ValueError(
                f"tile at ({y}, {x}) of size {self.tile_h}x{self.tile_w} leaves the "
                f"{self.height}x{self.width} image"
            )
        rows, cols = slice(y, y + self.tile_h), slice(x, x + self.tile_w)
        self._acc[rows, cols] += pred_tile * self._window3
        self._wsum[rows, cols] += self._window

    def add_batch(self, preds: np.ndarray, corners: Sequence[tuple[int, int]]) -> None:
        """Add ``(N, tile_h, tile_w, C)`` predictions whose top-left corners are ``corners[i]``.

        Raises:
            ValueError: if ``preds`` and ``corners`` differ in length (or as for :meth:`add`).
        """
        if len(preds) != len(corners):
            raise ValueError(f"{len(preds)} predictions but {len(corners)} corners")
        for pred, (y, x) in zip(preds, corners):
            self.add(pred, y, x)

    def coverage(self) -> np.ndarray:
        """Read-only ``(H, W)`` float32 view of the accumulated weight sum (0 where no tile was added)."""
        view = self._wsum.view()
        view.flags.writeable = False
        return view

    def result(self, height: int | None = None, width: int | None = None) -> np.ndarray:
        """Blended ``(H, W, C)`` float32 map ``acc / wsum``, optionally cropped to the top-left
        ``height x width`` (to drop the padding added by :func:`pad_image`).

        Raises:
            ValueError: if the crop is larger than the image.
            RuntimeError: if any pixel of the (cropped) area was never covered by a tile.
        """
        height = self.height if height is None else checked_int(height, "height", 1)
        width = self.width if width is None else checked_int(width, "width", 1)
        if height > self.height or width > self.width:
            raise ValueError(f"crop {height}x{width} is larger than the image {self.height}x{self.width}")
        wsum = self._wsum[:height, :width]
        uncovered = int(np.count_nonzero(wsum <= 0))
        if uncovered:
            raise RuntimeError(f"{uncovered} of {height * width} pixels were not covered by any tile")
        return self._acc[:height, :width] / wsum[:, :, None]
