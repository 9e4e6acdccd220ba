"""Epoch-change previews: the predicted masks of a few images after each training epoch.

``[train] epoch_change_infer`` resizes each ``[infer]`` image to the model input (the seeds' way);
``epoch_change_tiledinfer`` runs the project's tiled inference on ``[tiledinfer]`` images.  Files
are ``Epoch_<n>_<image stem>.png`` in ``epoch_change_infer_dir`` / ``epoch_change_tiledinfer_dir``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from flexunet.core.config import Config, class_colors
from flexunet.core.imageio import list_images, read_image, write_image
from flexunet.core.masks import colorize, labels_from_probabilities
from flexunet.core.preprocess import Preprocess
from flexunet.runtime.segment import predict_tiled

log = logging.getLogger("flexunet")


class Previewer:
    """Reads the preview images once; :meth:`run` writes their masks for one epoch."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.pre = Preprocess.from_config(cfg)
        self.colors = class_colors(cfg)
        t = cfg.train
        n = t.num_infer_images
        self.plain = self._images(cfg.infer.images_dir, n) if t.epoch_change_infer else []
        self.tiled = self._images(cfg.tiledinfer.images_dir or cfg.infer.images_dir, n) if t.epoch_change_tiledinfer else []
        self.enabled = bool(self.plain or self.tiled)
        if t.epoch_change_infer and not self.plain:
            log.warning(f"{cfg.path}: [train] epoch_change_infer is on but [infer] images_dir has no images; "
                        "no previews")
        if t.epoch_change_tiledinfer and not self.tiled:
            log.warning(f"{cfg.path}: [train] epoch_change_tiledinfer is on but [tiledinfer] images_dir "
                        "has no images; no previews")

    @staticmethod
    def _images(folder, n):
        if folder is None or n <= 0 or not Path(folder).is_dir():
            return []
        return [(p, read_image(p)) for p in list_images(folder)[:n]]

    def _write(self, folder: Path, epoch: int, path: Path, probs: np.ndarray) -> None:
        labels = labels_from_probabilities(probs)
        image = colorize(labels, self.colors) if self.cfg.multiclass or self.cfg.segmentation.colorize \
            else (labels * 255).astype(np.uint8)
        write_image(folder / f"Epoch_{epoch}_{path.stem}.png", image)

    def run(self, model, epoch: int) -> None:
        """Predict every preview image with ``model`` (a Keras model) and write its mask."""
        predict = model.predict_on_batch
        for path, img in self.plain:
            self._write(self.cfg.train.epoch_change_infer_dir, epoch, path, self._resized(predict, img))
        for path, img in self.tiled:
            probs = predict_tiled(self.pre(img), lambda b: np.asarray(predict(b)),
                                  (self.cfg.model.image_height, self.cfg.model.image_width),
                                  self.cfg.tiledinfer.overlapping, self.cfg.tiledinfer.blend,
                                  batch_size=self.cfg.train.batch_size)
            self._write(self.cfg.train.epoch_change_tiledinfer_dir, epoch, path, probs)

    def _resized(self, predict, img: np.ndarray) -> np.ndarray:
        """Probabilities of ``img`` resized to the model input, resized back to the image."""
        import cv2

        m = self.cfg.model
        x = cv2.resize(self.pre(img), (m.image_width, m.image_height), interpolation=cv2.INTER_LINEAR)
        x = x.reshape(m.image_height, m.image_width, -1)
        probs = np.asarray(predict(x[None]))[0]
        probs = cv2.resize(probs, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
        return probs.reshape(*img.shape[:2], -1)
