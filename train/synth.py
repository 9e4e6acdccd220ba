"""Synthetic stained-cell images with exact masks: the project's embedded default data.

The images mimic bright-field microscopy of stained nuclei (H&E / IHC-like): a light, tinted,
unevenly illuminated background with faint stroma texture, cytoplasm halos, debris and fibres
(all background in the mask), and elliptical nuclei in purple, blue or brown with per-cell colour,
chromatin speckle, darker rims, nucleoli, touching cells and clusters, some pale cells.  Rendering
works in optical density (Beer-Lambert), then blurs and adds noise.

Masks are exact: a pixel is foreground iff it lies inside a nucleus ellipse, drawn with the same
OpenCV call geometry as the nucleus in the image.  Everything is deterministic given the seed.

Only numpy and OpenCV are used here (no TensorFlow), so the data can be made anywhere.

Kinds:

``tiles``
    128x128 crops, binary masks (0/255).
``slides``
    2560x1920 (width x height) slide-like images, binary masks, for tiled inference.
``multiclass``
    128x128 crops, colour masks: each nucleus has a class (lymphocyte, plasma, epithelial) that
    shows in its size, shape and colour; see :data:`CLASS_COLORS_RGB`.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from flexunet.core.errors import FlexunetError
from flexunet.core.imageio import write_image

KINDS = ("tiles", "slides", "multiclass")

#: multiclass mask colours (RGB) -> class index; written to files in BGR order.
CLASS_COLORS_RGB: dict[tuple[int, int, int], int] = {
    (0, 0, 0): 0,
    (0, 255, 0): 1,
    (255, 255, 0): 2,
    (0, 255, 255): 3,
}
CLASS_NAMES: list[str] = ["background", "lymphocyte", "plasma", "epithelial"]

#: class index -> BGR colour, as it appears in a mask array / file.
CLASS_COLORS_BGR: dict[int, tuple[int, int, int]] = {
    idx: (rgb[2], rgb[1], rgb[0]) for rgb, idx in CLASS_COLORS_RGB.items()
}

SPLITS = ("train", "valid", "test")

# defaults per kind: (width, height), n_train, n_valid, n_test, n_mini, mini (width, height)
DEFAULTS: dict[str, dict] = {
    "tiles": {"size": (128, 128), "n_train": 160, "n_valid": 32, "n_test": 32,
              "n_mini": 4, "mini_size": (512, 384)},
    "slides": {"size": (2560, 1920), "n_train": 4, "n_valid": 1, "n_test": 2,
               "n_mini": 1, "mini_size": (1280, 960)},
    "multiclass": {"size": (128, 128), "n_train": 160, "n_valid": 32, "n_test": 32,
                   "n_mini": 4, "mini_size": (512, 384)},
}

# Stain optical-density unit vectors in BGR order (Ruifrok & Johnston, RGB reversed).
_HEMA = np.array([0.29, 0.70, 0.65], np.float32)   # hematoxylin: blue-purple
_EOSIN = np.array([0.11, 0.99, 0.07], np.float32)  # eosin: pink
_DAB = np.array([0.78, 0.57, 0.27], np.float32)    # DAB: brown
_GREY = np.array([0.58, 0.58, 0.58], np.float32)

_SHIFT = 4                 # sub-pixel bits for cv2 drawing
_SCALE = 1 << _SHIFT

# class appearance: radius range (semi-major axis, px), minor/major ratio range,
# hematoxylin / eosin / DAB strength ranges, chromatin texture, rim and nucleolus probabilities
_CLASS_LOOK = {
    1: dict(r=(4.0, 6.0), ratio=(0.80, 1.00), h=(1.05, 1.55), e=(0.00, 0.10), d=(0.00, 0.05),
            tex=(0.10, 0.25), rim=0.15, nucleolus=0.0),
    2: dict(r=(5.8, 8.5), ratio=(0.55, 0.80), h=(0.65, 1.00), e=(0.30, 0.55), d=(0.00, 0.05),
            tex=(0.25, 0.45), rim=0.75, nucleolus=0.1),
    3: dict(r=(8.0, 13.5), ratio=(0.45, 0.85), h=(0.35, 0.65), e=(0.00, 0.10), d=(0.15, 0.40),
            tex=(0.45, 0.75), rim=0.5, nucleolus=0.6),
}


# --------------------------------------------------------------------------------------------
# helpers


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise FlexunetError(f"unknown synthetic data kind {kind!r}; allowed kinds: {', '.join(KINDS)}")


def _lowfreq(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth random field, zero mean, std somewhat below 1, with features of about ``cell`` px."""
    gh = max(2, int(math.ceil(h / cell)) + 1)
    gw = max(2, int(math.ceil(w / cell)) + 1)
    small = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _fix(v: float) -> int:
    return int(round(v * _SCALE))


def _ellipse(img: np.ndarray, cx: float, cy: float, ax: float, ay: float, angle: float,
             color, thickness: int = -1) -> None:
    cv2.ellipse(img, (_fix(cx), _fix(cy)), (max(1, _fix(ax)), max(1, _fix(ay))), angle, 0, 360,
                color, thickness, cv2.LINE_8, _SHIFT)


def _as_size(size, kind: str) -> tuple[int, int]:
    """``size`` (int or (width, height)) -> (width, height)."""
    if size is None:
        return DEFAULTS[kind]["size"]
    if isinstance(size, (int, np.integer)):
        w = h = int(size)
    else:
        try:
            w, h = (int(s) for s in size)
        except (TypeError, ValueError):
            raise FlexunetError(f"synthetic image size must be an int or (width, height), not {size!r}") from None
    if w < 16 or h < 16:
        raise FlexunetError(f"synthetic image size {w}x{h} is too small (at least 16x16)")
    return w, h


class _Grid:
    """Spatial hash of accepted nucleus centres, to keep nuclei from piling up on one another."""

    def __init__(self, cell: float = 32.0):
        self.cell = cell
        self.buckets: dict[tuple[int, int], list[tuple[float, float, float]]] = {}

    def free(self, x: float, y: float, r: float, overlap: float) -> bool:
        c = self.cell
        gx, gy = int(x // c), int(y // c)
        for bx in (gx - 1, gx, gx + 1):
            for by in (gy - 1, gy, gy + 1):
                for (px, py, pr) in self.buckets.get((bx, by), ()):
                    lim = (r + pr) * overlap
                    dx, dy = x - px, y - py
                    if dx * dx + dy * dy < lim * lim:
                        return False
        return True

    def add(self, x: float, y: float, r: float) -> None:
        self.buckets.setdefault((int(x // self.cell), int(y // self.cell)), []).append((x, y, r))


# --------------------------------------------------------------------------------------------
# scene layout


def _image_params(rng: np.random.Generator, kind: str) -> dict:
    multiclass = kind == "multiclass"
    p = {}
    p["ihc"] = (not multiclass) and rng.random() < 0.35          # brown DAB-positive nuclei
    p["dab_pos"] = rng.uniform(0.2, 0.6) if p["ihc"] else 0.0
    p["scale"] = rng.uniform(0.9, 1.15)                            # magnification jitter
    if kind == "slides":
        p["coverage"] = rng.uniform(0.12, 0.25)
    else:
        p["coverage"] = rng.uniform(0.10, 0.38)
    p["cluster_frac"] = rng.uniform(0.3, 0.8)
    p["faint_frac"] = rng.uniform(0.06, 0.22)
    p["halo_frac"] = rng.uniform(0.2, 0.7)
    w = rng.dirichlet([2.0, 1.5, 1.5])
    p["class_p"] = w
    p["blur"] = rng.uniform(0.5, 1.4)
    p["noise"] = rng.uniform(2.0, 6.0)
    p["stain_gain"] = rng.uniform(0.75, 1.15)                      # per-image staining intensity
    p["hue_jitter"] = rng.normal(0.0, 0.05, 3).astype(np.float32)  # per-image stain colour shift
    # background: light, tinted pink or blue
    if rng.random() < 0.6:
        base = np.array([rng.uniform(225, 245), rng.uniform(212, 232), rng.uniform(232, 250)])  # pinkish (BGR)
    else:
        base = np.array([rng.uniform(235, 252), rng.uniform(225, 242), rng.uniform(215, 235)])  # bluish (BGR)
    p["base"] = base.astype(np.float32)
    p["stroma"] = rng.uniform(0.03, 0.12)
    p["stroma_hema"] = rng.uniform(0.0, 0.12)                      # bluish smudges (mucus, out-of-focus)
    p["debris_density"] = rng.uniform(0.3, 1.2)
    # red blood cells (background): none in some images, scattered or many in others
    p["rbc_density"] = 0.0 if rng.random() < 0.3 else rng.uniform(0.02, 0.12)
    if kind == "slides":
        p["rbc_density"] *= 0.4
    return p


_CLASS_KEYS = ("r", "ratio", "h", "e", "d", "tex")


def _class_table(key: str) -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([0.0] + [_CLASS_LOOK[c][key][0] for c in (1, 2, 3)])
    hi = np.array([0.0] + [_CLASS_LOOK[c][key][1] for c in (1, 2, 3)])
    return lo, hi


_TABLES = {k: _class_table(k) for k in _CLASS_KEYS}
_RIM_P = np.array([0.0] + [_CLASS_LOOK[c]["rim"] for c in (1, 2, 3)])
_NUCLEOLUS_P = np.array([0.0] + [_CLASS_LOOK[c]["nucleolus"] for c in (1, 2, 3)])


def _cell_looks(rng: np.random.Generator, cls: np.ndarray, p: dict) -> dict[str, np.ndarray]:
    """Appearance of n nuclei of classes ``cls`` (vectorised)."""
    n = len(cls)

    def u(key):
        lo, hi = _TABLES[key]
        return lo[cls] + (hi[cls] - lo[cls]) * rng.random(n)

    r = u("r") * p["scale"]
    ratio = u("ratio")
    hema, eos, dab = u("h"), u("e"), u("d")
    if p["ihc"]:
        pos = rng.random(n) < p["dab_pos"]
        dab = dab + pos * rng.uniform(0.55, 1.1, n)
        hema = np.where(pos, hema * 0.5, hema)
    od = (hema[:, None] * _HEMA + eos[:, None] * _EOSIN + dab[:, None] * _DAB) * p["stain_gain"]
    od *= 1.0 + p["hue_jitter"][None, :] + rng.normal(0.0, 0.06, (n, 3))
    faint = rng.random(n) < p["faint_frac"]
    od *= np.where(faint, rng.uniform(0.2, 0.38, n), 1.0)[:, None]
    np.clip(od, 0.0, None, out=od)
    return {
        "cls": cls, "a": r, "b": r * ratio, "angle": rng.uniform(0, 180, n), "od": od,
        "tex": u("tex") * np.where(faint, 0.6, 1.0),
        "rim": ~faint & (rng.random(n) < _RIM_P[cls]),
        "rim_gain": rng.uniform(1.25, 1.6, n),
        "nucleolus": ~faint & (rng.random(n) < _NUCLEOLUS_P[cls]),
        "nucleolus_dir": rng.uniform(0, 2 * math.pi, n),
        "halo": rng.random(n) < np.where(cls == 3, 0.9, p["halo_frac"]),
        "halo_a": rng.uniform(1.5, 2.1, n),
        "halo_b": rng.uniform(1.5, 2.3, n),
        "halo_angle": rng.normal(0, 15, n),
        "halo_od": rng.uniform(0.05, 0.25, n),
        # basophilic cytoplasm: plasma cells strongly, others a little
        "halo_hema": np.where(cls == 2, rng.uniform(0.3, 0.65, n), rng.uniform(0.0, 0.3, n)),
    }


def _layout(rng: np.random.Generator, h: int, w: int, p: dict, kind: str) -> tuple[dict, dict]:
    """Place nuclei: clusters (one dominant class each) plus scattered cells, touching allowed.

    Candidates are drawn in vectorised batches; a spatial hash then accepts them in order, keeping
    nuclei from piling up, until the image's target coverage is reached.
    """
    area = float(h * w)
    target = p["coverage"] * area
    mean_area = sum(p["class_p"][c - 1] * math.pi * (np.mean(_CLASS_LOOK[c]["r"]) ** 2)
                    * np.mean(_CLASS_LOOK[c]["ratio"]) for c in (1, 2, 3)) * p["scale"] ** 2
    n_expected = target / mean_area
    n_clusters = max(1, int(rng.poisson(max(1.0, n_expected * p["cluster_frac"] / 14.0))))
    c_cls = rng.choice(3, n_clusters, p=p["class_p"]) + 1
    c_spread = rng.uniform(10, 28, n_clusters) * p["scale"] * np.where(c_cls == 3, 1.6, 1.0)
    c_x = rng.uniform(-10, w + 10, n_clusters)
    c_y = rng.uniform(-10, h + 10, n_clusters)
    # for slides, modulate density over the field (tissue and empty regions)
    density = None
    if kind == "slides":
        density = _lowfreq(rng, max(1, h // 16), max(1, w // 16), 12.0)
        density = np.clip(0.5 + 0.6 * density, 0.05, 1.0)
    grid = _Grid(32.0)
    chosen: list[dict[str, np.ndarray]] = []
    covered = 0.0
    batch = int(n_expected * 2.5) + 16
    for _round in range(8):
        if covered >= target:
            break
        in_cluster = rng.random(batch) < p["cluster_frac"]
        k = rng.integers(0, n_clusters, batch)
        own = rng.choice(3, batch, p=p["class_p"]) + 1
        cls = np.where(in_cluster & (rng.random(batch) < 0.85), c_cls[k], own)
        x = np.where(in_cluster, c_x[k] + rng.normal(0, 1, batch) * c_spread[k], rng.uniform(-4, w + 4, batch))
        y = np.where(in_cluster, c_y[k] + rng.normal(0, 1, batch) * c_spread[k], rng.uniform(-4, h + 4, batch))
        keep = np.ones(batch, bool)
        if density is not None:
            dy = np.clip((y // 16).astype(np.int64), 0, density.shape[0] - 1)
            dx = np.clip((x // 16).astype(np.int64), 0, density.shape[1] - 1)
            keep &= rng.random(batch) <= density[dy, dx]
        look = _cell_looks(rng, cls, p)
        overlap = rng.uniform(0.75, 1.0, batch)
        rr = 0.5 * (look["a"] + look["b"])
        visible = (x > -rr) & (x < w + rr) & (y > -rr) & (y < h + rr)
        cell_area = math.pi * look["a"] * look["b"]
        acc = np.zeros(batch, bool)
        for i, xi, yi, ri, oi, vi, ai in zip(np.flatnonzero(keep).tolist(), x[keep].tolist(), y[keep].tolist(),
                                             rr[keep].tolist(), overlap[keep].tolist(),
                                             visible[keep].tolist(), cell_area[keep].tolist()):
            if covered >= target:
                break
            if not grid.free(xi, yi, ri, oi):
                continue
            grid.add(xi, yi, ri)
            acc[i] = True
            if vi:
                covered += ai
        look["x"], look["y"] = x, y
        chosen.append({key: v[acc] for key, v in look.items()})
    cells = {key: np.concatenate([c[key] for c in chosen]) for key in chosen[0]}

    # red blood cells: background objects that are dark in some channels, placed between nuclei
    n_rbc = int(rng.poisson(p["rbc_density"] * area / 60.0))
    rbcs = {"x": [], "y": [], "a": [], "b": [], "angle": [], "k": []}
    if n_rbc:
        r = rng.uniform(3.5, 5.0, n_rbc) * p["scale"]
        ratio = rng.uniform(0.75, 1.0, n_rbc)
        # some in small clumps, others scattered
        clumped = rng.random(n_rbc) < 0.5
        anchor = rng.integers(0, n_rbc, n_rbc)
        ux, uy = rng.uniform(-4, w + 4, n_rbc), rng.uniform(-4, h + 4, n_rbc)
        x = np.where(clumped, ux[anchor] + rng.normal(0, 12, n_rbc), ux)
        y = np.where(clumped, uy[anchor] + rng.normal(0, 12, n_rbc), uy)
        ang = rng.uniform(0, 180, n_rbc)
        k = rng.uniform(0.35, 0.85, n_rbc)
        for xi, yi, ri, qi, ai, ki in zip(x.tolist(), y.tolist(), r.tolist(), ratio.tolist(), ang.tolist(),
                                          k.tolist()):
            if grid.free(xi, yi, ri * (1 + qi) / 2, 0.9):
                grid.add(xi, yi, ri * (1 + qi) / 2)
                for key, v in zip(("x", "y", "a", "b", "angle", "k"), (xi, yi, ri, ri * qi, ai, ki)):
                    rbcs[key].append(v)
    return cells, rbcs


def _debris(rng: np.random.Generator, layer: np.ndarray, h: int, w: int, p: dict) -> None:
    """Non-cell debris into an optical-density layer: faint blobs and fibres (background)."""
    n_area = h * w / (128.0 * 128.0)
    n_blobs = int(rng.poisson(6 * p["debris_density"] * n_area))
    n_fibres = int(rng.poisson(1.5 * p["debris_density"] * n_area))
    for _ in range(n_blobs):
        vec = (_EOSIN, _GREY, _HEMA * 0.5 + _EOSIN * 0.5, _DAB)[int(rng.integers(4))]
        od = vec * rng.uniform(0.08, 0.3)
        r = rng.uniform(0.8, 2.6)
        _ellipse(layer, rng.uniform(0, w), rng.uniform(0, h), r, r * rng.uniform(0.4, 1.0),
                 rng.uniform(0, 180), tuple(float(v) for v in od))
    for _ in range(n_fibres):
        vec = _EOSIN if rng.random() < 0.7 else _GREY
        od = vec * rng.uniform(0.12, 0.35)
        n = int(rng.integers(4, 12))
        ang = rng.uniform(0, 2 * math.pi)
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        pts = []
        step = rng.uniform(4, 12)
        for _ in range(n):
            pts.append((_fix(x), _fix(y)))
            ang += rng.normal(0, 0.35)
            x += step * math.cos(ang)
            y += step * math.sin(ang)
        cv2.polylines(layer, [np.array(pts, np.int32)], False, tuple(float(v) for v in od),
                      int(rng.integers(1, 3)), cv2.LINE_8,
                      _SHIFT)


# --------------------------------------------------------------------------------------------
# rendering


def render_sample(rng: np.random.Generator, height: int, width: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic image and its exact mask.

    Returns ``(image, mask)``: ``image`` uint8 HxWx3 BGR; ``mask`` uint8 HxW with 0/255 for
    ``tiles`` and ``slides``, or uint8 HxWx3 BGR colour mask (colours of
    :data:`CLASS_COLORS_RGB`, in BGR order) for ``multiclass``.
    """
    _check_kind(kind)
    h, w = int(height), int(width)
    if h < 1 or w < 1:
        raise FlexunetError(f"synthetic image size {w}x{h} is empty")
    p = _image_params(rng, kind)
    cells, rbcs = _layout(rng, h, w, p, kind)

    # background optical density: cytoplasm halos (eosin, soft edges), debris, stroma texture
    halo = np.zeros((h, w, 2), np.float32)   # (eosin, hematoxylin) optical density of cytoplasm
    n = len(cells["x"])
    X, Y, A, B, ANG = (cells[k].tolist() for k in ("x", "y", "a", "b", "angle"))
    sel = cells["halo"]
    for x, y, a, b, ang, sa, sb, da, k, f in zip(*(cells[key][sel].tolist() for key in (
            "x", "y", "a", "b", "angle", "halo_a", "halo_b", "halo_angle", "halo_od", "halo_hema"))):
        _ellipse(halo, x, y, a * sa, b * sb, ang + da, (k * (1.0 - f), k * f))
    halo = cv2.GaussianBlur(halo, (0, 0), rng.uniform(1.0, 2.2))
    # stroma: eosin texture at two scales, bluish smudges; added to the halo channels
    eosin = _lowfreq(rng, h, w, 40.0) * 0.6 + _lowfreq(rng, h, w, 6.0) * 0.4 + 0.5
    np.maximum(eosin, 0.0, out=eosin)
    eosin *= np.float32(p["stroma"])
    hema = _lowfreq(rng, h, w, 24.0) - 0.3
    np.maximum(hema, 0.0, out=hema)
    hema *= np.float32(p["stroma_hema"])
    halo += cv2.merge([eosin, hema])
    del eosin, hema
    extra = np.zeros((h, w, 3), np.float32)
    _debris(rng, extra, h, w, p)
    rbc_vec = np.array([0.45, 1.0, 0.1], np.float32)  # red-orange (BGR optical density)
    for x, y, a, b, ang, k in zip(rbcs["x"], rbcs["y"], rbcs["a"], rbcs["b"], rbcs["angle"], rbcs["k"]):
        _ellipse(extra, x, y, a, b, ang, tuple(float(v) for v in rbc_vec * k))
        _ellipse(extra, x, y, a * 0.5, b * 0.5, ang, tuple(float(v) for v in rbc_vec * (k * 0.6)))

    # nuclei: optical density, chromatin texture amplitude, class labels (same geometry)
    nuc = np.zeros((h, w, 3), np.float32)
    tex = np.zeros((h, w), np.float32)
    labels = np.zeros((h, w), np.uint8)
    OD = cells["od"].tolist()
    TEX = cells["tex"].tolist()
    CLS = cells["cls"].tolist()
    RIM = cells["rim"].tolist()
    RIM_GAIN = cells["rim_gain"].tolist()
    NUCL = cells["nucleolus"].tolist()
    NUCL_DIR = cells["nucleolus_dir"].tolist()
    for i in range(n):
        x, y, a, b, ang = X[i], Y[i], A[i], B[i], ANG[i]
        od = OD[i]
        _ellipse(nuc, x, y, a, b, ang, od)
        _ellipse(tex, x, y, a, b, ang, TEX[i])
        _ellipse(labels, x, y, a, b, ang, CLS[i])
        if RIM[i] and b > 3.0:
            t = 1 if b < 6 else 2
            # the rim stays inside the nucleus ellipse
            ra, rb = a - t * 0.5 - 1.0, b - t * 0.5 - 1.0
            if rb > 1.0:
                g = RIM_GAIN[i]
                _ellipse(nuc, x, y, ra, rb, ang, (od[0] * g, od[1] * g, od[2] * g), t)
        if NUCL[i] and b > 4.0:
            rad = max(1.0, 0.18 * b)
            off = 0.35 * b
            th = NUCL_DIR[i]
            _ellipse(nuc, x + off * math.cos(th), y + off * math.sin(th), rad, rad, 0.0,
                     (od[0] * 1.6, od[1] * 1.6, od[2] * 1.6))

    # chromatin speckle inside nuclei
    speckle = rng.standard_normal((h, w), dtype=np.float32)
    speckle = cv2.GaussianBlur(speckle, (0, 0), rng.uniform(0.7, 1.1))
    speckle *= np.float32(1.0 / max(1e-6, float(speckle[: min(h, 256), : min(w, 256)].std())))
    speckle *= tex
    speckle += 1.0
    np.maximum(speckle, 0.15, out=speckle)
    od = nuc
    od *= speckle[..., None]
    od += extra
    od += cv2.transform(halo, np.stack([_EOSIN, _HEMA], axis=1))   # (eosin, hema) -> BGR density

    cv2.GaussianBlur(od, (0, 0), p["blur"], dst=od)

    # illumination: smooth field + linear gradient, times the background colour
    yy = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    gx, gy = rng.uniform(-0.12, 0.12, 2)
    illum = _lowfreq(rng, h, w, max(h, w) / 2.5)
    illum *= np.float32(0.035)
    illum += np.float32(gx) * xx
    illum += np.float32(gy) * yy
    illum += np.float32(1.0)

    # Beer-Lambert: I = I0 * exp(-OD), then sensor noise (buffers reused: large arrays are costly)
    np.negative(od, out=od)
    img = cv2.exp(od, dst=od)
    img *= illum[..., None]
    img *= p["base"][None, None, :]
    noise = rng.standard_normal(dtype=np.float32, out=extra)
    noise *= np.float32(p["noise"])
    img += noise
    np.clip(img, 0.0, 255.0, out=img)
    np.rint(img, out=img)
    image = img.astype(np.uint8)

    if kind == "multiclass":
        lut = np.zeros((256, 3), np.uint8)
        for idx, bgr in CLASS_COLORS_BGR.items():
            lut[idx] = bgr
        mask = lut[labels]
    else:
        mask = np.where(labels > 0, np.uint8(255), np.uint8(0))
    return image, mask


# --------------------------------------------------------------------------------------------
# data set writer


def _sample_rng(seed: int, kind: str, split: str, index: int) -> np.random.Generator:
    """Independent generator per (seed, kind, split, index): splits use different derived seeds."""
    split_id = (SPLITS + ("mini_test",)).index(split)
    return np.random.default_rng([int(seed), KINDS.index(kind), split_id, int(index)])


_NAME_RE = re.compile(r"^\d{4,}\.png$")


def _remove_stale(folder: Path, keep: set[str]) -> None:
    """Remove files this writer made in an earlier run (NNNN.png) that this run does not write."""
    if not folder.is_dir():
        return
    for f in folder.iterdir():
        if f.is_file() and _NAME_RE.match(f.name) and f.name not in keep:
            try:
                f.unlink()
            except OSError as exc:
                raise FlexunetError(f"{f}: cannot remove stale file ({exc.strerror or exc})") from None


def make_dataset(out_dir: str | os.PathLike, kind: str = "tiles", n_train: int | None = None,
                 n_valid: int | None = None, n_test: int | None = None, size=None, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None, n_mini: int | None = None,
                 mini_size=None) -> dict:
    """Write a synthetic data set and return a summary.

    Layout: ``out_dir/{train,valid,test,mini_test}/{images,masks}/NNNN.png`` (a mask has the same
    file name as its image).  ``size`` is an int (square) or ``(width, height)``; defaults depend on
    ``kind`` (see :data:`DEFAULTS`).  ``mini_test`` holds a few larger images (``mini_size``) for
    previews and tiled inference.  ``progress(done, total)`` is called after each file written.
    Same arguments -> byte-identical files.
    """
    _check_kind(kind)
    d = DEFAULTS[kind]
    width, height = _as_size(size, kind)
    mini_w, mini_h = _as_size(mini_size, kind) if mini_size is not None else d["mini_size"]
    counts = {
        "train": d["n_train"] if n_train is None else int(n_train),
        "valid": d["n_valid"] if n_valid is None else int(n_valid),
        "test": d["n_test"] if n_test is None else int(n_test),
        "mini_test": d["n_mini"] if n_mini is None else int(n_mini),
    }
    for split, n in counts.items():
        if n < 0:
            raise FlexunetError(f"number of {split} samples must be >= 0, not {n}")
    out = Path(out_dir)
    total = 2 * sum(counts.values())
    done = 0
    summary: dict = {
        "kind": kind,
        "out_dir": str(out),
        "seed": int(seed),
        "mask_type": "color" if kind == "multiclass" else "binary",
        "splits": {},
    }
    if kind == "multiclass":
        summary["class_names"] = list(CLASS_NAMES)
        summary["class_colors_rgb"] = {str(list(k)): v for k, v in CLASS_COLORS_RGB.items()}
    for split, n in counts.items():
        sw, sh = (mini_w, mini_h) if split == "mini_test" else (width, height)
        img_dir = out / split / "images"
        mask_dir = out / split / "masks"
        digits = max(4, len(str(max(0, n - 1))))
        names = [f"{i:0{digits}d}.png" for i in range(n)]
        _remove_stale(img_dir, set(names))
        _remove_stale(mask_dir, set(names))
        img_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            image, mask = render_sample(_sample_rng(seed, kind, split, i), sh, sw, kind)
            write_image(img_dir / name, image)
            done += 1
            if progress is not None:
                progress(done, total)
            write_image(mask_dir / name, mask)
            done += 1
            if progress is not None:
                progress(done, total)
        summary["splits"][split] = {
            "count": n,
            "width": sw,
            "height": sh,
            "images": str(img_dir),
            "masks": str(mask_dir),
        }
    summary["counts"] = {k: v for k, v in counts.items()}
    return summary
