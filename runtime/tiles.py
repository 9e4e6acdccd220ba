"""Model-input tiles drawn from image files: the one tile sampler of flexunet, used by export
verification and INT8 calibration, ``flexunet bench`` and the benchmarks.

Tiles are cut with :class:`~flexunet.runtime.layout.Layout` and pre-processed exactly as in
training and inference (never resized).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from flexunet.core.errors import FlexunetError, ImageReadError
from flexunet.core.imageio import read_image
from flexunet.core.modelinfo import ModelInfo
from flexunet.runtime.layout import Layout

log = logging.getLogger("flexunet")


def image_tiles(paths: Sequence[Path], info: ModelInfo, count: int, seed: int = 0, *,
                layout: Layout | None = None, augment: bool = False) -> np.ndarray:
    """Up to ``count`` pre-processed ``(N, h, w, C)`` float32 tiles drawn at random (in grid order)
    from the tile grids of the images.

    Args:
        paths: image files, read in order; unreadable ones are skipped with a warning.
        info: the model's metadata (pre-processing, and the tile when no ``layout`` is given).
        count: tiles wanted; fewer come back when the images hold fewer (see ``augment``).
        seed: the random draw.
        layout: how images are cut (default: the model's tile, no overlap); a ``fit`` layout is
            fitted to the first readable image and used for all.
        augment: when the grids hold fewer than ``count`` tiles, add flipped and rotated views
            (:func:`with_symmetries`).

    Raises:
        FlexunetError: no readable image among ``paths``.
    """
    layout = layout or Layout(info.tile_size, 0)
    per_image: list[np.ndarray] = []
    bad = []
    for p in paths:
        try:
            image = read_image(p)
        except ImageReadError as exc:
            bad.append(str(exc))
            continue
        layout = layout.fitted(*image.shape[:2])
        per_image.append(layout.tiles(info.preprocess(image)))
    for msg in bad:
        log.warning(f"skipped {msg}")
    if not per_image:
        raise FlexunetError(f"no readable images among {len(paths)} file(s)"
                            + (f" (first problem: {bad[0]})" if bad else ""))
    pool = np.concatenate(per_image)
    if augment and len(pool) < count:
        pool = with_symmetries(pool, count)
    if len(pool) > count:
        pool = pool[np.sort(np.random.default_rng(seed).choice(len(pool), count, replace=False))]
    return np.ascontiguousarray(pool, dtype=np.float32)


def with_symmetries(tiles: np.ndarray, count: int) -> np.ndarray:
    """``tiles`` followed by their flips (and 90° rotations, for square tiles), as many as make up
    ``count`` (at most 8x): more distinct model inputs when the images give fewer tiles than asked,
    as training's augmentation does.  Each transform applies to every tile before the next one."""
    square = tiles.shape[1] == tiles.shape[2]
    views = [lambda t: t[:, :, ::-1], lambda t: t[:, ::-1]]
    if square:
        views += [lambda t: np.rot90(t, 1, (1, 2)), lambda t: np.rot90(t, 3, (1, 2)),
                  lambda t: t[:, ::-1, ::-1], lambda t: np.rot90(t[:, :, ::-1], 1, (1, 2)),
                  lambda t: np.rot90(t[:, :, ::-1], 3, (1, 2))]
    out = [tiles]
    for view in views:
        if sum(len(o) for o in out) >= count:
            break
        out.append(view(tiles))
    return np.concatenate(out)
