"""Config-driven training: ``compile`` + ``fit`` with the standard callbacks, and the seeds' outputs.

Outputs (names as the seeds write them):
  <model_dir>/best_model.keras          best validation loss so far (written atomically)
  <model_dir>/train_eval_infer.config   a copy of the config used
  <eval_dir>/train_metrics.csv, train_losses.csv and their PNG plots (rewritten every epoch)
  <epoch_change_infer_dir>/, <epoch_change_tiledinfer_dir>/   per-epoch previews when enabled
Ctrl-C stops after the current batch; the best model saved so far is kept.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from flexunet.core.atomic import atomic_path, write_text
from flexunet.core.config import CONFIG_FILENAME, Config, class_colors
from flexunet.core.errors import ConfigError, EXIT_INTERRUPTED, FlexunetError
from flexunet.core.imageio import list_images, read_image, write_image
from flexunet.core.masks import colorize, labels_from_probabilities
from flexunet.core.preprocess import Preprocess
from flexunet.runtime.segment import predict_tiled

from flexunet.train import dataset as ds

log = logging.getLogger("flexunet")

BEST_MODEL_FILE = "best_model.keras"
TRAINING_RECORD = "training.json"  # which config (and data root) trained the models in model_dir


def set_seed(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)


def build_model(cfg: Config, height: int | None = None, width: int | None = None):
    """The UNet a config describes (``height``/``width`` override the input size, None = any)."""
    from flexunet.train.model import build_unet

    m = cfg.model
    try:
        return build_unet(
            image_height=m.image_height if height is None else height,
            image_width=m.image_width if width is None else width,
            image_channels=m.image_channels, num_classes=m.num_classes,
            base_filters=m.base_filters, base_kernels=m.base_kernels, num_layers=m.num_layers,
            dilation=m.dilation, dropout_rate=m.dropout_rate, normalization=m.normalization,
            input_normalize=m.input_normalize, activation=m.activation,
            final_activation=m.final_activation, seed=cfg.seed,
        )
    except ValueError as exc:
        raise ConfigError(f"{cfg.path}: [model] {exc}") from None


def compile_model(cfg: Config, model) -> None:
    import keras

    from flexunet.train.losses import get_loss, get_metrics

    try:
        loss = get_loss(cfg.model.loss)
    except ValueError as exc:
        raise cfg.error("model", "loss", str(exc)) from None
    try:
        metrics = get_metrics(cfg.model.metrics)
    except ValueError as exc:
        raise cfg.error("model", "metrics", str(exc)) from None
    if cfg.multiclass and cfg.model.loss in ("bce_dice_loss", "binary_crossentropy", "bce_iou_loss"):
        raise cfg.error("model", "loss", f"{cfg.model.loss} is for one class; num_classes = "
                        f"{cfg.model.num_classes} needs categorical_crossentropy")
    optimizer = keras.optimizers.Adam(learning_rate=cfg.model.learning_rate,
                                      clipvalue=cfg.model.clipvalue)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)


@dataclass
class Splits:
    train: list
    valid: list


def training_splits(cfg: Config) -> Splits:
    """Train and validation pairs: [eval]/[valid] if given, else a seeded fraction of [train]."""
    train = ds.split_pairs(cfg, "train")
    if not train:
        raise cfg.error("train", "image_datapath", "missing: the training images folder is needed")
    valid = ds.split_pairs(cfg, "eval")
    if valid:
        return Splits(train, valid)
    if len(train) < 2:
        raise cfg.error("train", "image_datapath", "needs at least 2 images when there is no [eval] split")
    order = np.random.default_rng(cfg.seed).permutation(len(train))
    n_valid = max(1, int(round(len(train) * cfg.train.validation_split)))
    valid_idx = set(order[:n_valid].tolist())
    return Splits([p for i, p in enumerate(train) if i not in valid_idx],
                  [p for i, p in enumerate(train) if i in valid_idx])


# ---------------------------------------------------------------------------------------------
# Callbacks


def _history_csv(rows: list[dict], keys: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["epoch", *keys])
    for r in rows:
        w.writerow([r["epoch"], *[("" if r.get(k) is None else f"{r[k]:.6g}") for k in keys]])
    return buf.getvalue()


def _plot(rows: list[dict], keys: list[str], title: str, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    epochs = [r["epoch"] for r in rows]
    for k in keys:
        ax.plot(epochs, [r.get(k, math.nan) for r in rows], marker="o", ms=3, label=k)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def make_callbacks(cfg: Config, model_path: Path, previews: "Previewer | None"):
    import keras

    class BestModel(keras.callbacks.Callback):
        """Save the model when val_loss improves, atomically (never a half-written file)."""

        def __init__(self):
            super().__init__()
            self.best = math.inf
            self.best_epoch = None

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get("val_loss", (logs or {}).get("loss"))
            if value is not None and np.isfinite(value) and value < self.best:
                self.best, self.best_epoch = float(value), epoch + 1
                with atomic_path(model_path) as tmp:
                    self.model.save(tmp)

    class SeedHistory(keras.callbacks.Callback):
        """train_metrics.csv / train_losses.csv and their plots, rewritten after every epoch."""

        def __init__(self):
            super().__init__()
            self.rows: list[dict] = []
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items() if np.isscalar(v) or np.ndim(v) == 0}}
            self.rows.append(row)
            self.write()

        def write(self):
            if not self.rows:
                return
            eval_dir = cfg.train.eval_dir
            names = [k for k in self.rows[-1] if k not in ("epoch", "learning_rate", "lr")]
            metric_keys = [k for k in names if "loss" not in k]
            loss_keys = [k for k in names if "loss" in k]
            write_text(eval_dir / "train_metrics.csv", _history_csv(self.rows, metric_keys))
            write_text(eval_dir / "train_losses.csv", _history_csv(self.rows, loss_keys))
            if metric_keys:
                _plot(self.rows, metric_keys, "metrics", eval_dir / "train_metrics.png")
            _plot(self.rows, loss_keys, "losses", eval_dir / "train_losses.png")

    class Progress(keras.callbacks.Callback):
        """One line per epoch: metrics, learning rate, time (Keras' own bar when on a terminal)."""

        def __init__(self, epochs):
            super().__init__()
            self.epochs = epochs

        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            parts = [f"{k} {float(v):.4f}" for k, v in logs.items() if k not in ("learning_rate", "lr")]
            lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            print(f"epoch {epoch + 1}/{self.epochs}  " + "  ".join(parts)
                  + f"  lr {lr:.2e}  {time.perf_counter() - self.t:.1f}s", flush=True)

    class TimeBudget(keras.callbacks.Callback):
        """[train] max_minutes: stop before an epoch that would end past the budget."""

        def __init__(self, minutes):
            super().__init__()
            self.budget = 60.0 * minutes
            self.stopped_epoch = None

        def on_train_begin(self, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            elapsed = time.perf_counter() - self.t0
            if elapsed + elapsed / (epoch + 1) > self.budget:
                self.stopped_epoch = epoch + 1
                self.model.stop_training = True
                print(f"time budget: stopping after epoch {epoch + 1} ({elapsed / 60:.1f} of "
                      f"{self.budget / 60:g} minutes; [train] max_minutes)", flush=True)

    class PreviewCallback(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            previews.run(self.model, epoch + 1)

    best, history = BestModel(), SeedHistory()
    callbacks = [best, history, Progress(cfg.train.epochs)]
    if cfg.train.patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.train.patience,
                                                       verbose=1))
    if cfg.train.learning_rate_reducer:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=cfg.train.reducer_factor,
            patience=cfg.train.reducer_patience, min_lr=1e-7, verbose=1))
    if cfg.train.max_minutes:
        callbacks.append(TimeBudget(cfg.train.max_minutes))
    if previews is not None and previews.enabled:
        callbacks.append(PreviewCallback())
    return callbacks, best, history


class Previewer:
    """Epoch-change previews: predicted masks of a few images after each epoch.

    ``epoch_change_infer`` resizes each [infer] image to the model input (the seeds' way);
    ``epoch_change_tiledinfer`` runs the project's tiled inference on [tiledinfer] images.
    """

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
        import cv2

        m = self.cfg.model
        predict = model.predict_on_batch
        for path, img in self.plain:
            x = cv2.resize(self.pre(img), (m.image_width, m.image_height), interpolation=cv2.INTER_LINEAR)
            x = x.reshape(m.image_height, m.image_width, -1)
            probs = np.asarray(predict(x[None]))[0]
            probs = cv2.resize(probs, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
            self._write(self.cfg.train.epoch_change_infer_dir, epoch, path, probs.reshape(*img.shape[:2], -1))
        for path, img in self.tiled:
            probs = predict_tiled(self.pre(img), lambda b: np.asarray(predict(b)),
                                  (m.image_height, m.image_width), self.cfg.tiledinfer.overlapping,
                                  self.cfg.tiledinfer.blend, batch_size=self.cfg.train.batch_size)
            self._write(self.cfg.train.epoch_change_tiledinfer_dir, epoch, path, probs)


# ---------------------------------------------------------------------------------------------


def _backup(folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        stamp = datetime.now().strftime("%Y-%m-%d_%H_%M_%S")
        dest = folder.with_name(f"{folder.name}_{stamp}_bak")
        shutil.move(str(folder), str(dest))
        log.info(f"moved {folder} to {dest}")


@dataclass
class TrainResult:
    model_path: Path
    best_epoch: int | None
    best_val_loss: float
    epochs_run: int
    interrupted: bool
    seconds: float


def train(cfg: Config, epochs: int | None = None) -> TrainResult:
    """Train the config's UNet; returns where the best model is and how training went."""
    t = cfg.train
    if epochs is not None:
        t.epochs = epochs
    splits = training_splits(cfg)
    maker = ds.SampleMaker(cfg)
    set_seed(cfg.seed)

    if t.create_backup:
        _backup(t.model_dir)
        _backup(t.eval_dir)
    for folder in (t.model_dir, t.eval_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FlexunetError(f"{folder}: cannot create folder ({exc.strerror or exc})") from None
    shutil.copy2(cfg.path, t.model_dir / CONFIG_FILENAME)
    write_text(t.model_dir / TRAINING_RECORD, json.dumps({
        "config": str(cfg.path), "data_root": str(cfg.data_root) if cfg.data_root else None,
        "started": datetime.now().isoformat(timespec="seconds")}, indent=2) + "\n")

    augment = cfg.model.generator and cfg.generator.augmentation
    train_ds, train_steps = ds.make_tf_dataset(
        maker, splits.train, t.batch_size, training=True, seed=cfg.seed, augment=augment,
        angles=tuple(cfg.generator.angles) if cfg.generator.rotation else (),
        flips=(cfg.generator.hflip, cfg.generator.vflip))
    valid_ds, valid_steps = ds.make_tf_dataset(maker, splits.valid, t.batch_size, training=False,
                                               seed=cfg.seed)
    steps = t.steps_per_epoch or train_steps
    print(f"training on {len(splits.train)} images ({ds.sample_count(maker, splits.train)} samples, "
          f"{steps} steps/epoch), validating on {len(splits.valid)} images; "
          f"input {cfg.model.image_height}x{cfg.model.image_width}x{cfg.model.image_channels}, "
          f"{cfg.model.num_classes} class(es), augmentation {'on' if augment else 'off'}", flush=True)

    model = build_model(cfg)
    compile_model(cfg, model)
    print(f"model: {model.count_params():,} parameters", flush=True)
    model_path = t.model_dir / BEST_MODEL_FILE
    previews = Previewer(cfg) if (t.epoch_change_infer or t.epoch_change_tiledinfer) else None
    callbacks, best, history = make_callbacks(cfg, model_path, previews)

    start = time.perf_counter()
    interrupted = False
    warnings.filterwarnings("ignore", message=".*shuffle=True.*", category=UserWarning)
    try:
        model.fit(train_ds, epochs=t.epochs, steps_per_epoch=steps, validation_data=valid_ds,
                  validation_steps=t.validation_steps or valid_steps, callbacks=callbacks, verbose=0)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping; the best model saved so far is kept", file=sys.stderr, flush=True)
    finally:
        history.write()
    if best.best_epoch is None:
        msg = "no epoch completed; no model saved" if interrupted else "training produced no finite loss"
        raise FlexunetError(msg, exit_code=EXIT_INTERRUPTED if interrupted else 1)
    return TrainResult(model_path, best.best_epoch, best.best, len(history.rows), interrupted,
                       time.perf_counter() - start)
