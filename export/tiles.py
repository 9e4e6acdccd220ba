"""Model-input tiles for verification and calibration: real images when there are any.

Tiles are cut with the project's one tiling implementation and pre-processed exactly as in
training and inference (never resized).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from flexunet.core.errors import FlexunetError
from flexunet.core.imageio import expand_inputs
from flexunet.core.modelinfo import ModelInfo
from flexunet.runtime.tiles import image_tiles

log = logging.getLogger("flexunet")


def calibration_paths(source) -> tuple[list[Path], str]:
    """The image files of a calibration source (a folder of images or a list of image files) and
    a description of it; FlexunetError (one line) for a missing folder or no images.  Lists only:
    nothing is decoded."""
    if isinstance(source, (list, tuple)):
        if not source:
            raise FlexunetError("no calibration images given")
        return [Path(p) for p in source], f"{len(source)} calibration file(s)"
    folder = Path(source)
    if not folder.is_dir():
        raise FlexunetError(f"{folder}: calibration folder does not exist")
    paths = expand_inputs([folder])
    if not paths:
        raise FlexunetError(f"{folder}: no images (jpg, png, tif, bmp) for calibration")
    return paths, str(folder)


def calibration_tiles(source, info: ModelInfo, count: int, seed: int = 0) -> np.ndarray:
    """Tiles for INT8 calibration from a folder of images or a list of image files (with flipped
    and rotated views when the images give fewer than ``count`` tiles)."""
    paths, where = calibration_paths(source)
    try:
        return image_tiles(paths, info, count, seed, augment=True)
    except FlexunetError as exc:
        raise FlexunetError(f"{where}: calibration: {exc}") from None


def hold_out(tiles: np.ndarray, count: int, keep: int | None = None, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Split ``tiles`` into (kept, held out) at random: ``count`` held out, fewer when that would
    leave under ``keep`` tiles (but up to a quarter of them all the same)."""
    n = len(tiles)
    if keep is not None:
        count = min(count, max(n - keep, n // 4))
    if count <= 0:
        return tiles, tiles[:0]
    pick = np.zeros(n, bool)
    pick[np.random.default_rng(seed).choice(n, count, replace=False)] = True
    return tiles[~pick], tiles[pick]


def verification_tiles(cfg, info: ModelInfo, count: int = 6, seed: int = 0) -> tuple[np.ndarray, str]:
    """Real tiles from the config's [test], [eval] or [train] images; synthetic when none exist.

    Returns the tiles and a description of their source for the export report.
    """
    if cfg is not None:
        for split in (cfg.test, cfg.eval, cfg.train):
            folder = split.image_datapath
            if folder is not None and Path(folder).is_dir():
                paths = expand_inputs([folder])
                if split.files:
                    wanted = set(split.files)
                    paths = [p for p in paths if p.name in wanted or p.stem in wanted]
                if paths:
                    try:
                        return image_tiles(paths[:max(2, count)], info, count, seed), str(folder)
                    except FlexunetError:
                        continue
    from flexunet.train.synth import render_sample

    th, tw = info.tile_size
    rng = np.random.default_rng(seed)
    tiles = np.stack([info.preprocess(render_sample(rng, th, tw, "tiles")[0]) for _ in range(count)])
    return tiles.astype(np.float32), "synthetic"
