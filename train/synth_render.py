"""Rendering one synthetic image and its exact mask from a random scene.

The stages, in the order they draw from the random generator: the scene (:mod:`.synth_scene`),
cytoplasm halos and stroma, debris and red blood cells, the nuclei (no randomness: the scene fixed
them), chromatin speckle and blur, illumination, then Beer-Lambert and sensor noise.  Keeping this
order keeps every image byte-identical for a given generator state.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from flexunet.core.errors import FlexunetError
from flexunet.train.synth_draw import EOSIN, HEMA, draw_debris, ellipse, lowfreq
from flexunet.train.synth_scene import CLASS_COLORS_BGR, check_kind, image_params, layout

_RBC_OD = np.array([0.45, 1.0, 0.1], np.float32)  # red-orange (BGR optical density)


def render_sample(rng: np.random.Generator, height: int, width: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic image and its exact mask.

    Returns ``(image, mask)``: ``image`` uint8 HxWx3 BGR; ``mask`` uint8 HxW with 0/255 for
    ``tiles`` and ``slides``, or uint8 HxWx3 BGR colour mask (colours of
    :data:`~flexunet.train.synth.CLASS_COLORS_RGB`, in BGR order) for ``multiclass``.
    """
    check_kind(kind)
    h, w = int(height), int(width)
    if h < 1 or w < 1:
        raise FlexunetError(f"synthetic image size {w}x{h} is empty")
    p = image_params(rng, kind)
    cells, rbcs = layout(rng, h, w, p, kind)
    halo = _halos_and_stroma(rng, h, w, p, cells)
    extra = _debris_and_red_cells(rng, h, w, p, rbcs)
    nuc, tex, labels = _nuclei(h, w, cells)
    od = _optical_density(rng, h, w, p, nuc, tex, extra, halo)
    illum = _illumination(rng, h, w)
    image = _beer_lambert(rng, p, od, illum, noise_buffer=extra)
    return image, _mask(labels, kind)


def _halos_and_stroma(rng: np.random.Generator, h: int, w: int, p: dict, cells: dict) -> np.ndarray:
    """(eosin, hematoxylin) optical density of the background: cytoplasm halos with soft edges,
    eosin stroma texture at two scales and bluish smudges."""
    halo = np.zeros((h, w, 2), np.float32)
    sel = cells["halo"]
    for x, y, a, b, ang, sa, sb, da, k, f in zip(*(cells[key][sel].tolist() for key in (
            "x", "y", "a", "b", "angle", "halo_a", "halo_b", "halo_angle", "halo_od", "halo_hema"))):
        ellipse(halo, x, y, a * sa, b * sb, ang + da, (k * (1.0 - f), k * f))
    halo = cv2.GaussianBlur(halo, (0, 0), rng.uniform(1.0, 2.2))
    eosin = lowfreq(rng, h, w, 40.0) * 0.6 + lowfreq(rng, h, w, 6.0) * 0.4 + 0.5
    np.maximum(eosin, 0.0, out=eosin)
    eosin *= np.float32(p["stroma"])
    hema = lowfreq(rng, h, w, 24.0) - 0.3
    np.maximum(hema, 0.0, out=hema)
    hema *= np.float32(p["stroma_hema"])
    halo += cv2.merge([eosin, hema])
    return halo


def _debris_and_red_cells(rng: np.random.Generator, h: int, w: int, p: dict, rbcs: dict) -> np.ndarray:
    """BGR optical density of debris, fibres and red blood cells (all background in the mask)."""
    extra = np.zeros((h, w, 3), np.float32)
    draw_debris(rng, extra, h, w, p)
    for x, y, a, b, ang, k in zip(rbcs["x"], rbcs["y"], rbcs["a"], rbcs["b"], rbcs["angle"], rbcs["k"]):
        ellipse(extra, x, y, a, b, ang, tuple(float(v) for v in _RBC_OD * k))
        ellipse(extra, x, y, a * 0.5, b * 0.5, ang, tuple(float(v) for v in _RBC_OD * (k * 0.6)))
    return extra


def _nuclei(h: int, w: int, cells: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nuclei optical density, chromatin texture amplitude and class labels, all drawn with the
    same ellipse geometry (so the mask is exact)."""
    nuc = np.zeros((h, w, 3), np.float32)
    tex = np.zeros((h, w), np.float32)
    labels = np.zeros((h, w), np.uint8)
    columns = ("x", "y", "a", "b", "angle", "od", "tex", "cls", "rim", "rim_gain", "nucleolus",
               "nucleolus_dir")
    for x, y, a, b, ang, od, t, c, rim, rim_gain, nucleolus, nucleolus_dir in zip(
            *(cells[key].tolist() for key in columns)):
        ellipse(nuc, x, y, a, b, ang, od)
        ellipse(tex, x, y, a, b, ang, t)
        ellipse(labels, x, y, a, b, ang, c)
        if rim and b > 3.0:
            _rim(nuc, x, y, a, b, ang, od, rim_gain)
        if nucleolus and b > 4.0:
            _nucleolus(nuc, x, y, b, od, nucleolus_dir)
    return nuc, tex, labels


def _rim(nuc: np.ndarray, x, y, a, b, ang, od, gain) -> None:
    """A darker rim that stays inside the nucleus ellipse."""
    t = 1 if b < 6 else 2
    ra, rb = a - t * 0.5 - 1.0, b - t * 0.5 - 1.0
    if rb > 1.0:
        ellipse(nuc, x, y, ra, rb, ang, (od[0] * gain, od[1] * gain, od[2] * gain), t)


def _nucleolus(nuc: np.ndarray, x, y, b, od, direction) -> None:
    """A small dark dot off the nucleus centre."""
    rad = max(1.0, 0.18 * b)
    off = 0.35 * b
    ellipse(nuc, x + off * math.cos(direction), y + off * math.sin(direction), rad, rad, 0.0,
            (od[0] * 1.6, od[1] * 1.6, od[2] * 1.6))


def _optical_density(rng: np.random.Generator, h: int, w: int, p: dict, nuc: np.ndarray,
                     tex: np.ndarray, extra: np.ndarray, halo: np.ndarray) -> np.ndarray:
    """Total BGR optical density: nuclei with chromatin speckle, plus background, blurred.
    Works in ``nuc``'s buffer."""
    speckle = rng.standard_normal((h, w), dtype=np.float32)
    speckle = cv2.GaussianBlur(speckle, (0, 0), rng.uniform(0.7, 1.1))
    speckle *= np.float32(1.0 / max(1e-6, float(speckle[: min(h, 256), : min(w, 256)].std())))
    speckle *= tex
    speckle += 1.0
    np.maximum(speckle, 0.15, out=speckle)
    od = nuc
    od *= speckle[..., None]
    od += extra
    od += cv2.transform(halo, np.stack([EOSIN, HEMA], axis=1))   # (eosin, hema) -> BGR density
    cv2.GaussianBlur(od, (0, 0), p["blur"], dst=od)
    return od


def _illumination(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Uneven illumination: a smooth field plus a linear gradient, around 1."""
    yy = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    gx, gy = rng.uniform(-0.12, 0.12, 2)
    illum = lowfreq(rng, h, w, max(h, w) / 2.5)
    illum *= np.float32(0.035)
    illum += np.float32(gx) * xx
    illum += np.float32(gy) * yy
    illum += np.float32(1.0)
    return illum


def _beer_lambert(rng: np.random.Generator, p: dict, od: np.ndarray, illum: np.ndarray,
                  noise_buffer: np.ndarray) -> np.ndarray:
    """I = I0 * exp(-OD) times the background colour, then sensor noise; uint8 BGR.
    Buffers are reused (``od`` and ``noise_buffer`` are overwritten): large arrays are costly."""
    np.negative(od, out=od)
    img = cv2.exp(od, dst=od)
    img *= illum[..., None]
    img *= p["base"][None, None, :]
    noise = rng.standard_normal(dtype=np.float32, out=noise_buffer)
    noise *= np.float32(p["noise"])
    img += noise
    np.clip(img, 0.0, 255.0, out=img)
    np.rint(img, out=img)
    return img.astype(np.uint8)


def _mask(labels: np.ndarray, kind: str) -> np.ndarray:
    """0/255 for binary kinds; the class colours (BGR) for ``multiclass``."""
    if kind == "multiclass":
        lut = np.zeros((256, 3), np.uint8)
        for idx, bgr in CLASS_COLORS_BGR.items():
            lut[idx] = bgr
        return lut[labels]
    return np.where(labels > 0, np.uint8(255), np.uint8(0))
