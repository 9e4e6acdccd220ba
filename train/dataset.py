"""Image/mask datasets for training and evaluation.

A split is a folder of images and a folder of masks with the same file stems (jpg, png, tif, bmp;
mask extensions may differ from the images').  Each pair becomes model-sized samples, either by
resizing (the seeds' behaviour) or, with ``[dataset] tiling = True``, by cutting tiles of the model
input size from larger images (2560x1920 slides) with the project's one tiling implementation.

Samples are produced by a Python generator that decodes one file at a time, so datasets larger than
RAM stream; small datasets are cached in memory after the first epoch.  Augmentation
(:mod:`flexunet.train.augment`) runs in the ``tf.data`` graph after the cache, so every epoch sees
new variants.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from flexunet.core import tiling
from flexunet.core.config import Config, SplitConfig
from flexunet.core.errors import ConfigError, FlexunetError
from flexunet.core.imageio import IMAGE_EXTENSIONS, list_images, read_image, read_mask
from flexunet.core.masks import binary_labels, class_labels, one_hot
from flexunet.core.preprocess import INTERPOLATION_FLAGS, Preprocess

CACHE_LIMIT_BYTES = int(os.environ.get("FLEXUNET_CACHE_LIMIT_MB", "1536")) * 1024 * 1024


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path


def find_pairs(images_dir: Path, masks_dir: Path, files: list[str] | None = None,
               exclude: list[str] | None = None, where: str = "") -> list[Pair]:
    """Image/mask pairs matched by file stem, optionally restricted to (or excluding) listed names."""
    images = list_images(images_dir)
    masks = {p.stem: p for p in list_images(masks_dir)}
    if files is not None:
        wanted = set(files)
        images = [p for p in images if p.name in wanted or p.stem in wanted]
        missing = wanted - {p.name for p in images} - {p.stem for p in images}
        if missing:
            raise ConfigError(f"{where}files: not found in {images_dir}: {', '.join(sorted(missing))}")
    if exclude:
        dropped = set(exclude)
        images = [p for p in images if p.name not in dropped and p.stem not in dropped]
    pairs = []
    for img in images:
        mask = masks.get(img.stem)
        if mask is None:
            raise ConfigError(f"{where}{'mask_datapath: ' if where else ''}{img}: no mask with the same name "
                              f"in {masks_dir}")
        pairs.append(Pair(img, mask))
    return pairs


def split_pairs(cfg: Config, section: str) -> list[Pair]:
    """Pairs of the ``train``, ``eval`` or ``test`` split; [] if the config gives no folders."""
    split: SplitConfig = getattr(cfg, section)
    name = "eval/valid" if section == "eval" else section
    if split.image_datapath is None and split.mask_datapath is None:
        return []
    for key in ("image_datapath", "mask_datapath"):
        folder = getattr(split, key)
        if folder is None:
            raise cfg.error(name, key, "missing (both image_datapath and mask_datapath are needed)")
        if not folder.is_dir():
            hint = "" if cfg.data_root else " (use --data-root to point at the datasets)"
            raise cfg.error(name, key, f"folder {folder} does not exist{hint}")
    pairs = find_pairs(split.image_datapath, split.mask_datapath, split.files, split.exclude_files,
                       where=f"{cfg.path}: [{name}] ")
    if not pairs:
        raise cfg.error(name, "image_datapath", f"no images ({', '.join(IMAGE_EXTENSIONS)}) in "
                        f"{split.image_datapath}")
    return pairs


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header when Pillow is available."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            return h, w
    except Exception:
        img = read_image(path)
        return img.shape[0], img.shape[1]


class SampleMaker:
    """Turns image/mask pairs into model-sized (input, target) float32 samples."""

    def __init__(self, cfg: Config):
        m = cfg.model
        self.cfg = cfg
        self.height, self.width = m.image_height, m.image_width
        self.num_classes = m.num_classes
        self.target_channels = 1 if m.num_classes == 1 else m.num_classes
        self.preprocess = Preprocess.from_config(cfg)
        self.tiling = cfg.dataset.tiling
        self.overlap = cfg.dataset.tile_overlap
        self.interpolation = INTERPOLATION_FLAGS[cfg.dataset.resize_interpolation]
        if self.tiling and self.overlap >= min(self.height, self.width):
            raise cfg.error("dataset", "tile_overlap", f"{self.overlap} must be smaller than the "
                            f"model input ({self.height}x{self.width})")
        self.failure: FlexunetError | None = None  # what stopped a tf.data pass (see data_errors)

    def check(self, pairs: list[Pair]) -> None:
        """Refuse, before anything is written or trained, a pair whose files cannot be read or whose
        mask has another size than its image (sizes from the headers)."""
        for pair in pairs:
            _check_sizes(pair, image_size(pair.mask), image_size(pair.image))

    # -- geometry ---------------------------------------------------------------------------
    def count(self, pair: Pair) -> int:
        """How many samples a pair yields."""
        if not self.tiling:
            return 1
        h, w = image_size(pair.image)
        _, _, grid = tiling.plan(h, w, self.height, self.width, self.overlap)
        return len(grid)

    # -- decoding -----------------------------------------------------------------------------
    def labels(self, pair: Pair) -> np.ndarray:
        mc = self.cfg.mask
        if self.num_classes > 1:
            return class_labels(read_mask(pair.mask, color=True), mc.rgb_map)
        return binary_labels(read_mask(pair.mask), mc.threshold, mc.blur_size if mc.blur else None)

    def target(self, labels: np.ndarray) -> np.ndarray:
        if self.num_classes > 1:
            return one_hot(labels, self.num_classes)
        return labels.astype(np.float32)[..., None]

    def samples(self, pair: Pair) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        image = read_image(pair.image, channels=3)
        labels = self.labels(pair)
        _check_sizes(pair, labels.shape, image.shape[:2])
        x_full = self.preprocess(image)
        if not self.tiling:
            if x_full.shape[:2] != (self.height, self.width):
                x_full = cv2.resize(x_full, (self.width, self.height), interpolation=self.interpolation)
                if x_full.ndim == 2:
                    x_full = x_full[..., None]
                labels = cv2.resize(labels, (self.width, self.height), interpolation=cv2.INTER_NEAREST)
            yield x_full, self.target(labels)
            return
        h, w = labels.shape
        ph, pw, grid = tiling.plan(h, w, self.height, self.width, self.overlap)
        x_full = tiling.pad_image(x_full, ph, pw, mode="reflect")
        labels = tiling.pad_image(labels, ph, pw, mode="constant")
        for i in range(len(grid)):
            ys, xs = grid.slices(i)
            yield np.ascontiguousarray(x_full[ys, xs]), self.target(labels[ys, xs])


def _check_sizes(pair: Pair, mask_hw: tuple[int, int], image_hw: tuple[int, int]) -> None:
    if tuple(mask_hw) != tuple(image_hw):
        raise ConfigError(f"{pair.mask}: mask size {mask_hw[1]}x{mask_hw[0]} differs "
                          f"from image size {image_hw[1]}x{image_hw[0]} ({pair.image.name})")


@contextlib.contextmanager
def data_errors(maker: SampleMaker):
    """Around a Keras ``fit``/``evaluate`` over :func:`make_tf_dataset`: a data error (an image
    that cannot be decoded, a mask of another size) that TensorFlow wrapped in an error of its own,
    with a traceback, is raised as it was: one line naming the file."""
    maker.failure = None
    try:
        yield
    except Exception:
        if maker.failure is not None:
            raise maker.failure from None
        raise


def sample_count(maker: SampleMaker, pairs: list[Pair]) -> int:
    return sum(maker.count(p) for p in pairs)


def load_arrays(maker: SampleMaker, pairs: list[Pair]) -> tuple[np.ndarray, np.ndarray]:
    """All samples of a (small) split as two arrays (for previews and tests)."""
    xs, ys = [], []
    for pair in pairs:
        for x, y in maker.samples(pair):
            xs.append(x)
            ys.append(y)
    return np.stack(xs), np.stack(ys)


def make_tf_dataset(maker: SampleMaker, pairs: list[Pair], batch_size: int, training: bool,
                    seed: int, augmenter=None):
    """A batched ``tf.data.Dataset`` over the pairs' samples and the number of steps per pass.

    Training datasets repeat forever (use the returned steps as ``steps_per_epoch``), shuffle files
    each epoch and samples through a buffer; evaluation datasets are one ordered pass.
    ``augmenter`` (:class:`flexunet.train.augment.Augmenter`) maps ``(sample number, x, y)`` of a
    training dataset, in parallel.
    """
    import tensorflow as tf

    n = sample_count(maker, pairs)
    steps = max(1, math.ceil(n / batch_size))
    c_in = maker.preprocess.channels
    signature = (
        tf.TensorSpec((maker.height, maker.width, c_in), tf.float32),
        tf.TensorSpec((maker.height, maker.width, maker.target_channels), tf.float32),
    )
    epoch = [0]

    def generate():
        order = list(range(len(pairs)))
        if training:
            np.random.default_rng(seed + epoch[0]).shuffle(order)
            epoch[0] += 1
        for i in order:
            try:
                yield from maker.samples(pairs[i])
            except FlexunetError as exc:  # TensorFlow re-raises it as an error of its own
                maker.failure = exc
                raise

    ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
    bytes_per_sample = maker.height * maker.width * (c_in + maker.target_channels) * 4
    if n * bytes_per_sample <= CACHE_LIMIT_BYTES:
        ds = ds.cache()
        buffer = n
    else:
        buffer = max(8, min(n, CACHE_LIMIT_BYTES // (4 * bytes_per_sample)))
    if training:
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()
        if augmenter is not None:
            ds = ds.enumerate().map(lambda i, xy: augmenter(i, *xy), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return ds, steps

