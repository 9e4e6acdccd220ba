"""The pixel-moving transforms of :mod:`flexunet.train.augment` and its sharpening, in OpenCV.

Why not Keras 3's layers: RandomRotation, RandomZoom and RandomShear draw from ranges, the seed's keys
are lists; RandomElasticTransform draws another field than the seed's ``[deformation]`` (normal noise
scaled by sigma, the same field along x and y); none does the seed's radial (barrel / pincushion)
warps or its gaussian-filtered distortion; and Keras' transform op (``keras.ops.image.affine_transform``)
took 30 ms per 512x512x3 image here against 3 ms for ``cv2.warpAffine``.

Each transform maps an output pixel to the input position it samples (an inverse map, the
``cv2.remap`` convention) and is applied to an image (bilinear) and its mask (nearest neighbour on
the class indices) alike, both with reflected borders, so mask and image stay aligned.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

BORDER = cv2.BORDER_REFLECT_101


def grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (x, y) of an h x w image, float32."""
    yy, xx = np.indices((h, w), dtype=np.float32)
    return xx, yy


def elastic_field(rng: np.random.Generator, h: int, w: int, alpha: float, sigma: float):
    """The seed's elastic deformation (Simard et al. 2003): uniform noise in [-1, 1] smoothed by a
    gaussian of ``sigma`` pixels and scaled by ``alpha``, one independent field per axis.

    For sigma >= 4 the noise is drawn and smoothed on a grid ``step`` = sigma // 4 times coarser and
    resized up (its amplitude divided by ``step``, which keeps the smoothed field's spread)."""
    step = max(1, int(sigma // 4))
    sh, sw = math.ceil(h / step), math.ceil(w / step)
    xx, yy = grid(h, w)
    out = []
    for base in (xx, yy):
        d = cv2.GaussianBlur(rng.uniform(-1, 1, (sh, sw)).astype(np.float32), (0, 0), sigma / step)
        if step > 1:
            d = cv2.resize(d, (w, h), interpolation=cv2.INTER_LINEAR) / step
        out.append(base + d * alpha)
    return out[0], out[1]


def distortion_field(rng: np.random.Generator, h: int, w: int, rsigma: float, size: float):
    """The seed's ``[distortion]``: the gradient of gaussian-smoothed (``rsigma`` pixels) normal noise,
    scaled so that the largest displacement is ``size`` times the longer side.

    The noise is smoothed at a reduced resolution (a quarter of ``rsigma`` per step) and resized
    up: the same smooth field at a small fraction of the cost of a full-size 240-tap blur."""
    step = max(1, int(rsigma // 4))
    sh, sw = max(2, math.ceil(h / step)), max(2, math.ceil(w / step))
    noise = cv2.GaussianBlur(rng.standard_normal((sh, sw)).astype(np.float32), (0, 0), rsigma / step)
    field = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    gy, gx = np.gradient(field)
    side = max(h, w)
    xx, yy = grid(h, w)
    out = []
    for base, g in ((xx, gx), (yy, gy)):
        peak = float(np.abs(g).max())
        out.append(base - (g * (size * side / peak) if peak > 0 else 0.0))
    return out[0].astype(np.float32), out[1].astype(np.float32)


def radial_field(h: int, w: int, center: tuple[float, float], radius: float, amount: float):
    """The seed's barrel (``amount`` > 0) / pincushion (``amount`` < 0) warp: inside a circle of
    ``radius`` x width around ``center`` (fractions of width, height), a pixel at distance r samples
    from distance r * sin(pi r / 2R) ** amount; outside it, nothing moves."""
    xx, yy = grid(h, w)
    cx, cy, rad = w * center[0], h * center[1], w * radius
    dx, dy = xx - cx, yy - cy
    dist = np.sqrt(dx * dx + dy * dy)
    inside = (dist < rad) & (dist > 0)
    factor = np.ones_like(dist)
    factor[inside] = np.sin(np.pi * dist[inside] / rad / 2) ** amount
    return (factor * dx + cx).astype(np.float32), (factor * dy + cy).astype(np.float32)


def affine_matrix(kind: str, value: float, h: int, w: int) -> np.ndarray:
    """The inverse 2x3 map of a rotation by ``value`` degrees, a shrink by factor ``value`` or the
    seed's vertical shear ``y' = y + value (x - cx)``, each about the image centre."""
    if kind == "rotation":
        t = math.radians(value)
        a = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    elif kind == "shrink":
        a = np.eye(2) / value
    elif kind == "shear":
        a = np.array([[1.0, 0.0], [-value, 1.0]])
    else:
        raise ValueError(f"unknown affine transform {kind!r}")
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    return np.hstack([a, (c - a @ c)[:, None]]).astype(np.float32)


def warp_affine_pair(x: np.ndarray, y: np.ndarray, m: np.ndarray):
    """:func:`remap_pair` for an inverse affine map ``m`` (2x3)."""
    h, w = x.shape[:2]
    flags = cv2.WARP_INVERSE_MAP
    xo = cv2.warpAffine(x, m, (w, h), flags=flags | cv2.INTER_LINEAR, borderMode=BORDER).reshape(x.shape)
    labels = _labels(y)
    lo = cv2.warpAffine(labels, m, (w, h), flags=flags | cv2.INTER_NEAREST, borderMode=BORDER)
    return xo.astype(x.dtype), _target(lo, y)


def sharpen(image: np.ndarray, k: float, value_max: float) -> np.ndarray:
    """The seed's 3x3 sharpening kernel (centre 1 + 8k, neighbours -k), clipped to [0, value_max]."""
    kernel = np.full((3, 3), -k, np.float32)
    kernel[1, 1] = 1 + 8 * k
    out = cv2.filter2D(image, -1, kernel, borderType=BORDER).reshape(image.shape)
    return np.clip(out, 0, value_max).astype(image.dtype)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``sigma`` pixels (the seed's ``gaussian_filter_sigma``); 0 leaves it."""
    if sigma <= 0:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigma).reshape(image.shape)


def remap_pair(x: np.ndarray, y: np.ndarray, map_x: np.ndarray, map_y: np.ndarray):
    """Warp image ``x`` (HxWxC float32, bilinear) and target ``y`` (HxWx1 0/1 or HxWxC one-hot,
    nearest neighbour on the class indices) through the same field."""
    xo = cv2.remap(x, map_x, map_y, cv2.INTER_LINEAR, borderMode=BORDER).reshape(x.shape)
    lo = cv2.remap(_labels(y), map_x, map_y, cv2.INTER_NEAREST, borderMode=BORDER)
    return xo.astype(x.dtype), _target(lo, y)


def _labels(y: np.ndarray) -> np.ndarray:
    """Class indices (uint8 HxW) of a 0/1 (HxWx1) or one-hot (HxWxK) target."""
    return (y[..., 0] > 0.5).astype(np.uint8) if y.shape[-1] == 1 else y.argmax(-1).astype(np.uint8)


def _target(labels: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Class indices back to the target form of ``like``."""
    if like.shape[-1] == 1:
        return labels[..., None].astype(like.dtype)
    return np.eye(like.shape[-1], dtype=like.dtype)[labels]
