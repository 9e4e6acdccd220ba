"""Tissue masks of whole-slide images: where a slide holds tissue, so that regions of bare glass are
not computed.

:func:`detect_tissue` thresholds the saturation of a low-resolution thumbnail with Otsu's method
(stained tissue is coloured, glass is grey or white), kept between :data:`MIN_SATURATION` and
:data:`MAX_SATURATION` (so that pale tissue and smears are kept when strongly stained objects make
Otsu's threshold high, and bare glass never counts), closes
small gaps, removes objects smaller than :data:`MIN_OBJECT_SHARE` of the thumbnail and widens the
mask by :data:`MARGIN` pixels so that tissue edges are kept.  :func:`load_tissue_mask` reads a mask
given by the user (any size, stretched over the slide; non-zero is tissue).
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from flexunet.core.imageio import read_mask

MIN_SATURATION = 8         # saturation (0-255) at or below which a pixel is never tissue
MAX_SATURATION = 20        # the threshold never exceeds this
MIN_OBJECT_SHARE = 1e-4    # objects smaller than this share of the thumbnail are removed
MIN_OBJECT_PIXELS = 4
MARGIN = 2                 # thumbnail pixels added around the tissue


def detect_tissue(thumbnail_bgr: np.ndarray) -> np.ndarray:
    """Boolean tissue mask of a BGR thumbnail (Otsu on saturation, small objects removed)."""
    saturation = cv2.cvtColor(thumbnail_bgr, cv2.COLOR_BGR2HSV)[..., 1]
    saturation = cv2.GaussianBlur(saturation, (5, 5), 0)
    otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = (saturation > min(max(otsu, MIN_SATURATION), MAX_SATURATION)).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    smallest = max(MIN_OBJECT_PIXELS, int(MIN_OBJECT_SHARE * mask.size))
    keep = np.zeros(count, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= smallest
    mask = keep[labels].astype(np.uint8)
    if MARGIN:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * MARGIN + 1, 2 * MARGIN + 1)))
    return mask.astype(bool)


def load_tissue_mask(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """A user's tissue mask image resized (nearest) to ``shape``; non-zero pixels are tissue.

    Raises:
        ImageReadError: the file cannot be read.
    """
    mask = read_mask(path)
    return cv2.resize((mask > 0).astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0


def has_tissue(mask: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> bool:
    """Whether the analysed-pixel ``box`` ``(y, x, height, width)`` of an image of ``size``
    ``(height, width)`` touches tissue in ``mask`` (every mask pixel it overlaps counts)."""
    mh, mw = mask.shape
    y, x, h, w = box
    y0, x0 = y * mh // size[0], x * mw // size[1]
    y1, x1 = -(-(y + h) * mh // size[0]), -(-(x + w) * mw // size[1])
    return bool(mask[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)].any())
