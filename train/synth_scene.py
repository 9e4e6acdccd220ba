"""The random scene of one synthetic image: its kind, its look, and where its cells are.

:func:`image_params` draws the image-wide settings (staining, coverage, background tint, blur,
noise ...); :func:`layout` places nuclei (clusters of one dominant class plus scattered cells,
touching allowed) and red blood cells, each nucleus with its class and appearance from
:func:`cell_looks`.  Nothing is drawn here; :mod:`flexunet.train.synth_render` draws the scene.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from flexunet.core.errors import FlexunetError
from flexunet.train.synth_draw import DAB, EOSIN, HEMA, lowfreq

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


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise FlexunetError(f"unknown synthetic data kind {kind!r}; allowed kinds: {', '.join(KINDS)}")


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
# image-wide settings and cell appearance


def image_params(rng: np.random.Generator, kind: str) -> dict:
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


def cell_looks(rng: np.random.Generator, cls: np.ndarray, p: dict) -> dict[str, np.ndarray]:
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
    od = (hema[:, None] * HEMA + eos[:, None] * EOSIN + dab[:, None] * DAB) * p["stain_gain"]
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


# --------------------------------------------------------------------------------------------
# placement


class _Clusters(NamedTuple):
    cls: np.ndarray      # dominant class of each cluster
    spread: np.ndarray   # its standard deviation (px)
    x: np.ndarray
    y: np.ndarray


def layout(rng: np.random.Generator, h: int, w: int, p: dict, kind: str) -> tuple[dict, dict]:
    """Place nuclei: clusters (one dominant class each) plus scattered cells, touching allowed;
    then red blood cells between them.  Returns ``(cells, rbcs)``, columns of per-object values.

    Candidates are drawn in vectorised batches; a spatial hash then accepts them in order, keeping
    nuclei from piling up, until the image's target coverage is reached.
    """
    area = float(h * w)
    target = p["coverage"] * area
    mean_area = sum(p["class_p"][c - 1] * math.pi * (np.mean(_CLASS_LOOK[c]["r"]) ** 2)
                    * np.mean(_CLASS_LOOK[c]["ratio"]) for c in (1, 2, 3)) * p["scale"] ** 2
    n_expected = target / mean_area
    clusters = _clusters(rng, h, w, p, n_expected)
    # for slides, modulate density over the field (tissue and empty regions)
    density = None
    if kind == "slides":
        density = lowfreq(rng, max(1, h // 16), max(1, w // 16), 12.0)
        density = np.clip(0.5 + 0.6 * density, 0.05, 1.0)
    grid = _Grid(32.0)
    batch = int(n_expected * 2.5) + 16
    chosen: list[dict[str, np.ndarray]] = []
    covered = 0.0
    for _round in range(8):
        if covered >= target:
            break
        look, keep, overlap = _candidates(rng, h, w, p, clusters, density, batch)
        accepted, covered = _accept(grid, look, keep, overlap, h, w, covered, target)
        chosen.append({key: v[accepted] for key, v in look.items()})
    cells = {key: np.concatenate([c[key] for c in chosen]) for key in chosen[0]}
    return cells, _red_blood_cells(rng, h, w, p, grid, area)


def _clusters(rng: np.random.Generator, h: int, w: int, p: dict, n_expected: float) -> _Clusters:
    n_clusters = max(1, int(rng.poisson(max(1.0, n_expected * p["cluster_frac"] / 14.0))))
    c_cls = rng.choice(3, n_clusters, p=p["class_p"]) + 1
    c_spread = rng.uniform(10, 28, n_clusters) * p["scale"] * np.where(c_cls == 3, 1.6, 1.0)
    c_x = rng.uniform(-10, w + 10, n_clusters)
    c_y = rng.uniform(-10, h + 10, n_clusters)
    return _Clusters(c_cls, c_spread, c_x, c_y)


def _candidates(rng: np.random.Generator, h: int, w: int, p: dict, clusters: _Clusters,
                density: np.ndarray | None, batch: int):
    """A batch of candidate nuclei: their looks (with ``x``, ``y``), which the density map keeps,
    and how much each may overlap its neighbours."""
    c = clusters
    in_cluster = rng.random(batch) < p["cluster_frac"]
    k = rng.integers(0, len(c.cls), batch)
    own = rng.choice(3, batch, p=p["class_p"]) + 1
    cls = np.where(in_cluster & (rng.random(batch) < 0.85), c.cls[k], own)
    x = np.where(in_cluster, c.x[k] + rng.normal(0, 1, batch) * c.spread[k], rng.uniform(-4, w + 4, batch))
    y = np.where(in_cluster, c.y[k] + rng.normal(0, 1, batch) * c.spread[k], rng.uniform(-4, h + 4, batch))
    keep = np.ones(batch, bool)
    if density is not None:
        dy = np.clip((y // 16).astype(np.int64), 0, density.shape[0] - 1)
        dx = np.clip((x // 16).astype(np.int64), 0, density.shape[1] - 1)
        keep &= rng.random(batch) <= density[dy, dx]
    look = cell_looks(rng, cls, p)
    overlap = rng.uniform(0.75, 1.0, batch)
    look["x"], look["y"] = x, y
    return look, keep, overlap


def _accept(grid: _Grid, look: dict, keep: np.ndarray, overlap: np.ndarray, h: int, w: int,
            covered: float, target: float) -> tuple[np.ndarray, float]:
    """Accept the kept candidates in order where the grid has room, until ``target`` area of
    visible nuclei is ``covered``; returns the accepted mask and the new coverage."""
    x, y = look["x"], look["y"]
    rr = 0.5 * (look["a"] + look["b"])
    visible = (x > -rr) & (x < w + rr) & (y > -rr) & (y < h + rr)
    cell_area = math.pi * look["a"] * look["b"]
    acc = np.zeros(len(x), bool)
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
    return acc, covered


def _red_blood_cells(rng: np.random.Generator, h: int, w: int, p: dict, grid: _Grid,
                     area: float) -> dict[str, list]:
    """Red blood cells: background objects that are dark in some channels, placed between nuclei."""
    n_rbc = int(rng.poisson(p["rbc_density"] * area / 60.0))
    rbcs = {"x": [], "y": [], "a": [], "b": [], "angle": [], "k": []}
    if not n_rbc:
        return rbcs
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
    return rbcs
