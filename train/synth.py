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

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from flexunet.core.atomic import write_bytes
from flexunet.core.errors import FlexunetError
from flexunet.core.imageio import encode_image, read_image, read_mask
from flexunet.core.machine import sha256_file
from flexunet.train.synth_record import RECORD_NAME, Claim, claim_folder, remove_own, write_record
from flexunet.train.synth_render import render_sample
from flexunet.train.synth_scene import CLASS_COLORS_BGR, CLASS_COLORS_RGB, CLASS_NAMES, KINDS, check_kind

__all__ = ["KINDS", "CLASS_COLORS_RGB", "CLASS_COLORS_BGR", "CLASS_NAMES", "SPLITS", "DEFAULTS",
           "RECORD_NAME", "render_sample", "make_dataset"]

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

    Only a new or empty folder, or one this function made (its record, :data:`RECORD_NAME`), is
    written into, and there only the files it wrote are replaced or removed (see
    :mod:`.synth_record`); the summary's ``files`` counts what it did.
    """
    check_kind(kind)
    d = DEFAULTS[kind]
    width, height = _as_size(size, kind)
    mini = _as_size(mini_size, kind) if mini_size is not None else d["mini_size"]
    counts = _counts(kind, {"train": n_train, "valid": n_valid, "test": n_test, "mini_test": n_mini})
    out = Path(out_dir)
    samples = _plan(counts, (width, height), mini, int(seed), kind)
    claim = claim_folder(out, [rel for s in samples for rel in s.files],
                         lambda rels: _first_different(out, samples, rels))
    summary: dict = {
        "kind": kind,
        "out_dir": str(out),
        "seed": int(seed),
        "mask_type": "color" if kind == "multiclass" else "binary",
        "splits": {split: _split_summary(out, n, mini if split == "mini_test" else (width, height), split)
                   for split, n in counts.items()},
    }
    if kind == "multiclass":
        summary["class_names"] = list(CLASS_NAMES)
        summary["class_colors_rgb"] = {str(list(k)): v for k, v in CLASS_COLORS_RGB.items()}
    summary["files"] = _write_all(out, samples, claim, _FileCounter(2 * len(samples), progress),
                                  {"kind": kind, "seed": int(seed), "counts": counts})
    summary["counts"] = {k: v for k, v in counts.items()}
    return summary


@dataclass
class _Sample:
    """One image and its mask: the files they go to and how they are drawn."""

    split: str
    index: int
    size: tuple[int, int]   # (width, height)
    files: tuple[str, str]  # image and mask, relative to the data set folder
    seed: int
    kind: str

    def arrays(self):
        rng = _sample_rng(self.seed, self.kind, self.split, self.index)
        return render_sample(rng, self.size[1], self.size[0], self.kind)


def _plan(counts: dict[str, int], size: tuple[int, int], mini: tuple[int, int], seed: int,
          kind: str) -> list[_Sample]:
    """Every sample of every split, in the order they are written."""
    samples = []
    for split, n in counts.items():
        digits = max(4, len(str(max(0, n - 1))))
        for i in range(n):
            name = f"{i:0{digits}d}.png"
            samples.append(_Sample(split, i, mini if split == "mini_test" else size,
                                   (f"{split}/images/{name}", f"{split}/masks/{name}"), seed, kind))
    return samples


def _first_different(out: Path, samples: list[_Sample], rels: list[str]) -> str | None:
    """The first of ``rels`` (existing files) whose pixels differ from what its sample renders."""
    wanted = set(rels)
    for sample in samples:
        present = [(rel, k) for k, rel in enumerate(sample.files) if rel in wanted]
        if not present:
            continue
        arrays = sample.arrays()
        for rel, k in present:
            try:
                found = read_image(out / rel) if k == 0 else read_mask(out / rel, color=arrays[1].ndim == 3)
            except FlexunetError:
                return rel
            if found.shape != arrays[k].shape or not np.array_equal(found, arrays[k]):
                return rel
    return None


def _split_summary(out: Path, n: int, size: tuple[int, int], split: str) -> dict:
    return {"count": n, "width": size[0], "height": size[1], "images": str(out / split / "images"),
            "masks": str(out / split / "masks")}


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


def _write(path: Path, image: np.ndarray) -> str:
    """Write ``image`` atomically; the SHA-256 of the bytes written."""
    data = encode_image(path, image)
    try:
        write_bytes(path, data)
    except OSError as exc:
        raise FlexunetError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return hashlib.sha256(data).hexdigest()


def _write_all(out: Path, samples: list[_Sample], claim: Claim, files: _FileCounter,
               about: dict) -> dict[str, int]:
    """Write every sample's image and mask (the record first), remove this writer's files of an
    earlier run that this run does not write, then record the files with their hashes."""
    targets = [rel for s in samples for rel in s.files]
    try:
        for split in about["counts"]:
            for sub in ("images", "masks"):
                (out / split / sub).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FlexunetError(f"{out}: cannot create the data set's folders ({exc.strerror or exc})") from None
    pending: dict[str, str | None] = {**claim.ours, **dict.fromkeys(targets)}
    write_record(out, pending, **about, complete=False)
    digests: dict[str, str | None] = {}
    for sample in samples:
        arrays = None if all(rel in claim.identical for rel in sample.files) else sample.arrays()
        for rel, k in zip(sample.files, (0, 1)):
            if rel in claim.identical:
                digests[rel] = sha256_file(out / rel)
            else:
                digests[rel] = _write(out / rel, arrays[k])
            files.written()
    removed = remove_own(out, set(claim.ours) - set(targets))
    write_record(out, digests, **about, complete=True)
    replaced = sum(rel in claim.ours for rel in targets)
    return {"new": len(targets) - replaced - len(claim.identical), "replaced": replaced,
            "identical": len(claim.identical), "removed": removed, "left": claim.foreign}
