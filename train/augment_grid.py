"""A PNG grid of augmented training samples, so a user can see what the ``[augmentor]`` settings do.

Each cell is an augmented image beside its augmented mask (class colours of the config). The
samples come from a few training images spread over the split (for tiled datasets, the tile with
the most foreground); cell ``i`` is augmentation draw ``i`` of the config seed, so the same config
gives the same grid. Training writes it to ``<eval_dir>/augmentation_grid.png`` when it starts;
``flexunet augment CONFIG`` writes it on demand.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from flexunet.core.config import Config, class_colors
from flexunet.core.imageio import write_image
from flexunet.core.masks import colorize, labels_from_probabilities
from flexunet.train import dataset as ds
from flexunet.train.augment import AugmentSettings, Augmenter

GRID_FILE = "augmentation_grid.png"
MAX_SOURCES = 8
CELL = 192        # longest side of each image and mask in the grid, pixels
PAIRS_PER_ROW = 4
GAP = 4


def grid_sources(maker: ds.SampleMaker, pairs: list, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Up to ``count`` samples, one per training image spread over ``pairs`` (per image, the
    sample with the most foreground)."""
    chosen = np.linspace(0, len(pairs) - 1, min(count, len(pairs))).round().astype(int)
    out = []
    for i in dict.fromkeys(chosen.tolist()):
        best = max(maker.samples(pairs[i]), key=lambda s: _foreground(s[1]))
        out.append(best)
    return out


def _foreground(y: np.ndarray) -> float:
    return float(y.sum()) if y.shape[-1] == 1 else float(y[..., 1:].sum())


def augmented_samples(augmenter: Augmenter, sources: list, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Draw ``i`` of ``augmenter`` on source ``i % len(sources)``, for i < n (TensorFlow, eagerly)."""
    import tensorflow as tf

    out = []
    for i in range(n):
        x, y = sources[i % len(sources)]
        xo, yo = augmenter(tf.constant(i, tf.int64), tf.constant(x), tf.constant(y))
        out.append((np.asarray(xo), np.asarray(yo)))
    return out


def render(cfg: Config, samples: list, value_max: float) -> np.ndarray:
    """The grid image (BGR uint8): image | mask cells, ``PAIRS_PER_ROW`` pairs per row."""
    colors = class_colors(cfg)
    cells = []
    for x, y in samples:
        img = np.clip(x * (255.0 / value_max), 0, 255).astype(np.uint8)
        if img.shape[-1] == 1:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        mask = colorize(labels_from_probabilities(y), colors)
        img, mask = _fit(img, cv2.INTER_AREA), _fit(mask, cv2.INTER_NEAREST)
        cells.append(np.hstack([img, np.full((img.shape[0], GAP, 3), 255, np.uint8), mask]))
    h = max(c.shape[0] for c in cells)
    w = max(c.shape[1] for c in cells)
    rows = []
    for r in range(0, len(cells), PAIRS_PER_ROW):
        row = [_pad(c, h, w) for c in cells[r:r + PAIRS_PER_ROW]]
        rows.append(np.hstack([np.pad(c, ((0, 0), (0, 3 * GAP), (0, 0)), constant_values=255) for c in row]))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 3 * GAP), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.vstack(rows)


def _fit(img: np.ndarray, interpolation: int) -> np.ndarray:
    scale = CELL / max(img.shape[:2])
    if scale >= 1:
        return img
    size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
    return cv2.resize(img, size, interpolation=interpolation)


def _pad(img: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.pad(img, ((0, h - img.shape[0]), (0, w - img.shape[1]), (0, 0)), constant_values=255)


def write_grid(cfg: Config, path: str | Path | None = None, n: int = 16, maker: ds.SampleMaker | None = None,
               pairs: list | None = None) -> Path:
    """Write the grid of ``n`` augmented training samples (default ``<eval_dir>/augmentation_grid.png``,
    atomically); the transforms are those the config's keys select, even when training would not
    augment."""
    maker = maker or ds.SampleMaker(cfg)
    if pairs is None:
        from flexunet.train.trainer import training_splits

        pairs = training_splits(cfg).train
    value_max = 255.0 * maker.preprocess.scale
    augmenter = Augmenter(AugmentSettings.from_config(cfg), maker.height, maker.width,
                          maker.preprocess.channels, cfg.seed, value_max)
    samples = augmented_samples(augmenter, grid_sources(maker, pairs, min(n, MAX_SOURCES)), n)
    dest = Path(path) if path is not None else cfg.train.eval_dir / GRID_FILE
    return write_image(dest, render(cfg, samples, value_max))


def write_start_grid(cfg: Config, maker: ds.SampleMaker, pairs: list, n: int = 16) -> Path | None:
    """At the start of training: the grid in ``<eval_dir>`` when training augments, else nothing."""
    from flexunet.train.augment import augmentation_on

    if not augmentation_on(cfg) or not AugmentSettings.from_config(cfg).enabled:
        return None
    path = write_grid(cfg, n=n, maker=maker, pairs=pairs)
    print(f"augmentation grid: {path}", flush=True)
    return path
