"""Drawing primitives of the synthetic data, in optical density: stain colours, sub-pixel ellipses,
smooth random fields, and background debris.

Optical density (OD) layers are float32 arrays in BGR order; an image is ``I0 * exp(-OD)``
(Beer-Lambert), so stains add up where objects overlap.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

# Stain optical-density unit vectors in BGR order (Ruifrok & Johnston, RGB reversed).
HEMA = np.array([0.29, 0.70, 0.65], np.float32)   # hematoxylin: blue-purple
EOSIN = np.array([0.11, 0.99, 0.07], np.float32)  # eosin: pink
DAB = np.array([0.78, 0.57, 0.27], np.float32)    # DAB: brown
GREY = np.array([0.58, 0.58, 0.58], np.float32)

SHIFT = 4                 # sub-pixel bits for cv2 drawing
SCALE = 1 << SHIFT


def lowfreq(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth random field, zero mean, std somewhat below 1, with features of about ``cell`` px."""
    gh = max(2, int(math.ceil(h / cell)) + 1)
    gw = max(2, int(math.ceil(w / cell)) + 1)
    small = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def fix(v: float) -> int:
    """A coordinate in OpenCV's fixed-point sub-pixel units."""
    return int(round(v * SCALE))


def ellipse(img: np.ndarray, cx: float, cy: float, ax: float, ay: float, angle: float,
            color, thickness: int = -1) -> None:
    """A filled (or ``thickness``-wide) ellipse at sub-pixel position, semi-axes ``ax``, ``ay``."""
    cv2.ellipse(img, (fix(cx), fix(cy)), (max(1, fix(ax)), max(1, fix(ay))), angle, 0, 360,
                color, thickness, cv2.LINE_8, SHIFT)


def draw_debris(rng: np.random.Generator, layer: np.ndarray, h: int, w: int, p: dict) -> None:
    """Non-cell debris into an optical-density layer: faint blobs and fibres (background)."""
    n_area = h * w / (128.0 * 128.0)
    n_blobs = int(rng.poisson(6 * p["debris_density"] * n_area))
    n_fibres = int(rng.poisson(1.5 * p["debris_density"] * n_area))
    for _ in range(n_blobs):
        vec = (EOSIN, GREY, HEMA * 0.5 + EOSIN * 0.5, DAB)[int(rng.integers(4))]
        od = vec * rng.uniform(0.08, 0.3)
        r = rng.uniform(0.8, 2.6)
        ellipse(layer, rng.uniform(0, w), rng.uniform(0, h), r, r * rng.uniform(0.4, 1.0),
                rng.uniform(0, 180), tuple(float(v) for v in od))
    for _ in range(n_fibres):
        _fibre(rng, layer, h, w)


def _fibre(rng: np.random.Generator, layer: np.ndarray, h: int, w: int) -> None:
    """A thin random-walk polyline, mostly eosin-coloured."""
    vec = EOSIN if rng.random() < 0.7 else GREY
    od = vec * rng.uniform(0.12, 0.35)
    n = int(rng.integers(4, 12))
    ang = rng.uniform(0, 2 * math.pi)
    x, y = rng.uniform(0, w), rng.uniform(0, h)
    pts = []
    step = rng.uniform(4, 12)
    for _ in range(n):
        pts.append((fix(x), fix(y)))
        ang += rng.normal(0, 0.35)
        x += step * math.cos(ang)
        y += step * math.sin(ang)
    cv2.polylines(layer, [np.array(pts, np.int32)], False, tuple(float(v) for v in od),
                  int(rng.integers(1, 3)), cv2.LINE_8, SHIFT)
