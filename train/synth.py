"""Synthetic stained-cell images with exact masks: the project's embedded default data.

The images mimic bright-field microscopy of stained nuclei (H&E / IHC-like): a light, tinted,
unevenly illuminated background with faint stroma texture, cytoplasm halos, debris and fibres
(all background in the mask), and elliptical nuclei in purple, blue or brown with per-cell colour,
chromatin speckle, darker rims, nucleoli, touching cells and clusters, some pale cells.  Rendering
works in optical density (Beer-Lambert), then blurs and adds noise.

Masks are exact: a pixel is foreground iff it lies inside a nucleus ellipse, drawn with the same
OpenCV call geometry as the nucleus in the image.  Everything is deterministic given the seed.

Only numpy and OpenCV are used (no TensorFlow), so the data can be made anywhere.  This module is
the public face and writes data sets (:func:`make_dataset`); one image is drawn by
:func:`render_sample` (:mod:`.synth_render`) from a random scene (:mod:`.synth_scene`: kinds,
classes, cell looks and placement) with the primitives of :mod:`.synth_draw`.

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

import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from flexunet.core.errors import FlexunetError
from flexunet.core.imageio import write_image
from flexunet.train.synth_render import render_sample
from flexunet.train.synth_scene import CLASS_COLORS_BGR, CLASS_COLORS_RGB, CLASS_NAMES, KINDS, check_kind

__all__ = ["KINDS", "CLASS_COLORS_RGB", "CLASS_COLORS_BGR", "CLASS_NAMES", "SPLITS", "DEFAULTS",
           "render_sample", "make_dataset"]

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
    check_kind(kind)
    d = DEFAULTS[kind]
    width, height = _as_size(size, kind)
    mini = _as_size(mini_size, kind) if mini_size is not None else d["mini_size"]
    counts = _counts(kind, {"train": n_train, "valid": n_valid, "test": n_test, "mini_test": n_mini})
    out = Path(out_dir)
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
    files = _FileCounter(2 * sum(counts.values()), progress)
    for split, n in counts.items():
        sw, sh = mini if split == "mini_test" else (width, height)
        summary["splits"][split] = _write_split(out, split, n, (sw, sh), seed, kind, files)
    summary["counts"] = {k: v for k, v in counts.items()}
    return summary


def _counts(kind: str, given: dict[str, int | None]) -> dict[str, int]:
    """Samples per split (train, valid, test, mini_test): as given, else the kind's default."""
    defaults = DEFAULTS[kind]
    counts = {}
    for split, n in given.items():
        counts[split] = defaults["n_mini" if split == "mini_test" else f"n_{split}"] if n is None else int(n)
        if counts[split] < 0:
            raise FlexunetError(f"number of {split} samples must be >= 0, not {counts[split]}")
    return counts


class _FileCounter:
    """Counts the files written and reports ``progress(done, total)`` after each."""

    def __init__(self, total: int, progress: Callable[[int, int], None] | None):
        self.total, self.done, self.progress = total, 0, progress

    def written(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def _write_split(out: Path, split: str, n: int, size: tuple[int, int], seed: int, kind: str,
                 files: _FileCounter) -> dict:
    """``n`` images and masks of ``size`` (width, height) under ``out/split``; its summary."""
    sw, sh = size
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
        files.written()
        write_image(mask_dir / name, mask)
        files.written()
    return {"count": n, "width": sw, "height": sh, "images": str(img_dir), "masks": str(mask_dir)}
