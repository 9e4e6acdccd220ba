"""Model-input tiles for verification and calibration: real images when there are any.

Tiles are cut with the project's one tile sampler (:func:`flexunet.runtime.tiles.image_tiles`) and
pre-processed exactly as in training and inference (never resized).  Calibration images may come
with ground-truth masks (``--calibration-masks``): the mask of each image is read as the evaluation
and parity read ground truth (:func:`flexunet.runtime.ground_truth.truth_labels`), rides through the
same draw, flips and rotations as an extra channel of its image, and is held out with its tile, so
the INT8 search can judge its check tiles by accuracy retention.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flexunet.core.errors import FlexunetError, ImageReadError
from flexunet.core.image_headers import header_size
from flexunet.core.imageio import expand_inputs
from flexunet.core.modelinfo import ModelInfo
from flexunet.runtime.ground_truth import masks_index, truth_labels
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


def _size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header, None when it cannot be told without decoding."""
    try:
        with open(path, "rb") as f:
            return header_size(f.read(1 << 16))
    except OSError:
        return None


def calibration_masks(source, masks) -> list[Path]:
    """The mask of each calibration image, from the folder ``masks`` (named like its image, any
    image extension, as parity finds ground truth), checked to exist and to have its image's size.

    Raises:
        FlexunetError: one line: the folder is missing, an image has no mask, or a mask's size
            differs from its image's.  Nothing is decoded (sizes come from the file headers).
    """
    paths, _ = calibration_paths(source)
    folder = Path(masks)
    if not folder.is_dir():
        raise FlexunetError(f"{folder}: calibration masks folder does not exist")
    index = masks_index(folder)
    missing = [p for p in paths if p.stem not in index]
    if missing:
        raise FlexunetError(f"{folder}: no mask for {len(missing)} of the {len(paths)} calibration image(s) "
                            f"(first: {missing[0].name}; a mask has its image's name, {missing[0].stem}.*)")
    out = [index[p.stem] for p in paths]
    for image, mask in zip(paths, out):
        a, b = _size(image), _size(mask)
        if a is not None and b is not None and a != b:
            raise FlexunetError(f"{mask}: mask is {b[0]}x{b[1]} but its calibration image {image.name} is "
                                f"{a[0]}x{a[1]}")
    return out


class _WithTruth:
    """The model info as :func:`~flexunet.runtime.tiles.image_tiles` reads it, whose pre-processing
    appends the ground-truth label map of each image (in the order the images are read) as one more
    channel, so that the sampler cuts, draws, flips and rotates image and mask together."""

    def __init__(self, info: ModelInfo, masks: list[Path]):
        self.info, self.masks, self.used = info, masks, 0
        self.tile_size = info.tile_size

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        mask = self.masks[self.used]
        self.used += 1
        truth = truth_labels(mask, self.info.num_classes, self.info.class_colors)
        if truth.shape != image.shape[:2]:
            raise FlexunetError(f"{mask}: mask is {truth.shape[1]}x{truth.shape[0]} but its image is "
                                f"{image.shape[1]}x{image.shape[0]}")
        return np.concatenate([self.info.preprocess(image), truth[..., None].astype(np.float32)], axis=-1)


@dataclass
class CalibrationSet:
    """INT8 calibration tiles, the check tiles held out of them, and the check tiles' ground-truth
    label maps (``NxHxW`` uint8; None without masks)."""

    calib: np.ndarray
    check: np.ndarray | None = None
    check_truth: np.ndarray | None = None


def calibration_tiles(source, info: ModelInfo, count: int, seed: int = 0) -> np.ndarray:
    """Tiles for INT8 calibration from a folder of images or a list of image files (with flipped
    and rotated views when the images give fewer than ``count`` tiles)."""
    paths, where = calibration_paths(source)
    try:
        return image_tiles(paths, info, count, seed, augment=True)
    except FlexunetError as exc:
        raise FlexunetError(f"{where}: calibration: {exc}") from None


def labelled_calibration_tiles(source, masks, info: ModelInfo, count: int,
                               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`calibration_tiles` with the ground-truth label map of each tile (``NxHxW`` uint8)
    from the folder ``masks``: the same draw, flips and rotations (one sampler call)."""
    paths, where = calibration_paths(source)
    try:
        reader = _WithTruth(info, calibration_masks(paths, masks))
        both = image_tiles(paths, reader, count, seed, augment=True)
    except (FlexunetError, ImageReadError) as exc:
        raise FlexunetError(f"{where}: calibration: {exc}") from None
    if reader.used != len(paths):
        raise FlexunetError(f"{where}: calibration: {len(paths) - reader.used} image(s) could not be read; "
                            "with calibration masks every calibration image must be readable")
    return np.ascontiguousarray(both[..., :-1]), np.rint(both[..., -1]).astype(np.uint8)


def _held_out(n: int, count: int, keep: int | None, seed: int) -> np.ndarray:
    """Which of ``n`` tiles are held out (see :func:`hold_out`)."""
    if keep is not None:
        count = min(count, max(n - keep, n // 4))
    pick = np.zeros(n, bool)
    if count > 0:
        pick[np.random.default_rng(seed).choice(n, count, replace=False)] = True
    return pick


def hold_out(tiles: np.ndarray, count: int, keep: int | None = None, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Split ``tiles`` into (kept, held out) at random: ``count`` held out, fewer when that would
    leave under ``keep`` tiles (but up to a quarter of them all the same)."""
    pick = _held_out(len(tiles), count, keep, seed)
    return tiles[~pick], tiles[pick]


def split_calibration(tiles: np.ndarray, count: int, keep: int | None = None, seed: int = 1,
                      truth: np.ndarray | None = None) -> CalibrationSet:
    """:func:`hold_out` as a :class:`CalibrationSet`: the check tiles' label maps (``truth``, one per
    tile) held out with them; no check tiles (None) when none are held out."""
    pick = _held_out(len(tiles), count, keep, seed)
    if not pick.any():
        return CalibrationSet(tiles)
    return CalibrationSet(tiles[~pick], tiles[pick], None if truth is None else truth[pick])


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
