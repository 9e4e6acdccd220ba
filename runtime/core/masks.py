"""Masks: ground truth decoding, probability -> label maps, colourising.

One implementation used by training targets, evaluation, parity and the runtime's writers.
Label maps are HxW uint8 class indices (binary: 0/1).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import cv2
import numpy as np


def binary_labels(mask: np.ndarray, threshold: int = 128, blur_size: tuple[int, int] | None = None) -> np.ndarray:
    """A grayscale (or colour) ground-truth mask -> 0/1 uint8 labels.

    JPEG masks are lossy, so values are thresholded (``>= threshold`` is foreground); a colour mask
    is foreground where any channel reaches the threshold. ``blur_size`` optionally smooths first.
    """
    m = mask
    if m.ndim == 3:
        m = m.max(axis=2)
    if blur_size is not None:
        m = cv2.blur(m, tuple(blur_size))
    return (m >= threshold).astype(np.uint8)


def class_labels(mask_bgr: np.ndarray, rgb_map: Mapping[tuple[int, int, int], int]) -> np.ndarray:
    """A colour ground-truth mask (BGR, as decoded) -> class indices via an RGB colour map.

    Exact colours map directly; any other colour (lossy files, anti-aliased edges) takes the class
    of the nearest listed colour.
    """
    colors = np.array([rgb[::-1] for rgb in rgb_map], dtype=np.int32)  # BGR
    classes = np.array(list(rgb_map.values()), dtype=np.uint8)
    flat = mask_bgr.reshape(-1, 3).astype(np.int32)
    # Pack colours to ints and map the distinct colours only (fast on exact-colour PNGs).
    packed = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    uniq, inverse = np.unique(packed, return_inverse=True)
    uniq_bgr = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], axis=1)
    d = ((uniq_bgr[:, None, :] - colors[None, :, :]) ** 2).sum(axis=2)
    labels = classes[d.argmin(axis=1)][inverse]
    return labels.reshape(mask_bgr.shape[:2])


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """HxW class indices -> HxWxC float32 one-hot."""
    return np.eye(num_classes, dtype=np.float32)[labels]


def labels_from_probabilities(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """HxWx1 sigmoid probabilities -> 0/1 (``> threshold``); HxWxC softmax -> argmax. uint8 HxW."""
    if probs.shape[-1] == 1:
        return (probs[..., 0] > threshold).astype(np.uint8)
    return probs.argmax(axis=-1).astype(np.uint8)


def colorize(labels: np.ndarray, colors_rgb: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """Class indices -> BGR uint8 image with each class in its RGB colour."""
    lut = np.array([c[::-1] for c in colors_rgb], dtype=np.uint8)
    if labels.max(initial=0) >= len(lut):
        raise ValueError(f"label {int(labels.max())} has no colour (only {len(lut)} given)")
    return lut[labels]


def overlay(image_bgr: np.ndarray, labels: np.ndarray, colors_rgb: Sequence[tuple[int, int, int]],
            alpha: float = 0.45) -> np.ndarray:
    """Blend the colourised labels over the image (background class 0 left untouched)."""
    color = colorize(labels, colors_rgb)
    img = image_bgr if image_bgr.ndim == 3 and image_bgr.shape[2] == 3 else cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
    out = img.copy()
    fg = labels > 0
    out[fg] = (img[fg].astype(np.float32) * (1 - alpha) + color[fg].astype(np.float32) * alpha).round().astype(np.uint8)
    return out
