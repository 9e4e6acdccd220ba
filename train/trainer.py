"""Config-driven training: ``compile`` + ``fit`` with the standard callbacks, and the seeds' outputs.

The callbacks live in :mod:`flexunet.train.callbacks` (imported when training starts: it imports
Keras), the history files in :mod:`flexunet.train.history`, the epoch-change previews in
:mod:`flexunet.train.previews`.

Outputs (names as the seeds write them):
  <model_dir>/best_model.keras          best validation loss so far (written atomically)
  <model_dir>/train_eval_infer.config   a copy of the config used
  <eval_dir>/train_metrics.csv, train_losses.csv and their PNG plots (rewritten every epoch)
  <eval_dir>/augmentation_grid.png       augmented samples, when training augments (flexunet.train.augment)
  <epoch_change_infer_dir>/, <epoch_change_tiledinfer_dir>/   per-epoch previews when enabled
Ctrl-C stops after the current batch; the best model saved so far is kept.  A model that cannot be
trained in this machine's memory (:mod:`flexunet.train.memory`) is refused before anything is written.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from flexunet.core.atomic import write_text
from flexunet.core.config import CONFIG_FILENAME, Config
from flexunet.core.errors import EXIT_INTERRUPTED, ConfigError, FlexunetError, first_line
from flexunet.train import dataset as ds
from flexunet.train.augment import make_augmenter
from flexunet.train.augment_grid import write_start_grid
from flexunet.train.previews import Previewer

log = logging.getLogger("flexunet")

BEST_MODEL_FILE = "best_model.keras"
TRAINING_RECORD = "training.json"  # which config (and data root) trained the models in model_dir


def set_seed(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)


def build_model(cfg: Config, height: int | None = None, width: int | None = None):
    """The network a config describes (``height``/``width`` override the configured input size)."""
    from flexunet.architectures import build

    return build(cfg, height, width)


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


def make_callbacks(cfg: Config, model_path: Path, previews: Previewer | None):
    """The callbacks a config asks for, and the two whose state :func:`train` reports: the best
    model keeper and the history writer."""
    import keras

    from flexunet.train.callbacks import BestModel, EpochPreviews, Progress, SeedHistory, TimeBudget

    t = cfg.train
    best, history = BestModel(model_path), SeedHistory(t.eval_dir)
    callbacks = [best, history, Progress(t.epochs)]
    if t.patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=t.patience, verbose=1))
    if t.learning_rate_reducer:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=t.reducer_factor, patience=t.reducer_patience, min_lr=1e-7,
            verbose=1))
    if t.max_minutes:
        callbacks.append(TimeBudget(t.max_minutes))
    if previews is not None and previews.enabled:
        callbacks.append(EpochPreviews(previews))
    return callbacks, best, history


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
    from flexunet.train.memory import check_training_memory

    check_training_memory(cfg)
    t = cfg.train
    if epochs is not None:
        t.epochs = epochs
    splits = training_splits(cfg)
    maker = ds.SampleMaker(cfg)
    maker.check(splits.train + splits.valid)  # before any output folder is made
    set_seed(cfg.seed)
    _prepare_outputs(cfg)
    data = _datasets(cfg, maker, splits)
    write_start_grid(cfg, maker, splits.train)  # <eval_dir>/augmentation_grid.png when augmenting

    model = build_model(cfg)
    compile_model(cfg, model)
    print(f"model: {model.count_params():,} parameters", flush=True)
    model_path = t.model_dir / BEST_MODEL_FILE
    previews = Previewer(cfg) if (t.epoch_change_infer or t.epoch_change_tiledinfer) else None
    callbacks, best, history = make_callbacks(cfg, model_path, previews)

    start = time.perf_counter()
    try:
        with ds.data_errors(maker):
            interrupted = _fit(model, data, t, callbacks, history)
    except Exception as exc:  # the estimate is a floor: TensorFlow may still run out of memory
        if not _out_of_memory(exc):
            raise
        raise cfg.error("train", "batch_size", f"out of memory while training a batch of {t.batch_size} "
                        f"at {cfg.model.image_width}x{cfg.model.image_height} ({first_line(exc, 120)}); "
                        "use a smaller batch_size, image size, base_filters or num_layers") from None
    if best.best_epoch is None:
        msg = "no epoch completed; no model saved" if interrupted else "training produced no finite loss"
        raise FlexunetError(msg, exit_code=EXIT_INTERRUPTED if interrupted else 1)
    return TrainResult(model_path, best.best_epoch, best.best, len(history.rows), interrupted,
                       time.perf_counter() - start)


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is Python's or TensorFlow's out-of-memory error."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "ResourceExhaustedError"


def _prepare_outputs(cfg: Config) -> None:
    """Back up old outputs if asked, create the folders, copy the config, write the record."""
    t = cfg.train
    if t.create_backup:
        _backup(t.model_dir)
        _backup(t.eval_dir)
    for folder in (t.model_dir, t.eval_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FlexunetError(f"{folder}: cannot create folder ({exc.strerror or exc})") from None
    shutil.copy2(cfg.path, t.model_dir / CONFIG_FILENAME)
    write_training_record(cfg, t.model_dir)


def write_training_record(cfg: Config, folder: Path, **extra) -> Path:
    """``training.json`` in ``folder``: which config (and data root) made the models there, and
    when (``extra`` adds keys; ``flexunet import`` records the seed file)."""
    return write_text(folder / TRAINING_RECORD, json.dumps({
        "config": str(cfg.path), "data_root": str(cfg.data_root) if cfg.data_root else None,
        "started": datetime.now().isoformat(timespec="seconds"), **extra}, indent=2) + "\n")


@dataclass
class _Data:
    train: object
    valid: object
    steps: int          # training steps per epoch
    valid_steps: int


def _datasets(cfg: Config, maker: ds.SampleMaker, splits: Splits) -> _Data:
    """The training (augmented if configured) and validation datasets; prints what they hold."""
    t = cfg.train
    augmenter = make_augmenter(cfg, maker.preprocess.channels, 255.0 * maker.preprocess.scale)
    train_ds, train_steps = ds.make_tf_dataset(
        maker, splits.train, t.batch_size, training=True, seed=cfg.seed, augmenter=augmenter)
    valid_ds, valid_steps = ds.make_tf_dataset(maker, splits.valid, t.batch_size, training=False,
                                               seed=cfg.seed)
    steps = t.steps_per_epoch or train_steps
    print(f"training on {len(splits.train)} images ({ds.sample_count(maker, splits.train)} samples, "
          f"{steps} steps/epoch), validating on {len(splits.valid)} images; "
          f"input {cfg.model.image_height}x{cfg.model.image_width}x{cfg.model.image_channels}, "
          f"{cfg.model.num_classes} class(es), augmentation: "
          f"{augmenter.s.describe() if augmenter else 'off'}", flush=True)
    return _Data(train_ds, valid_ds, steps, t.validation_steps or valid_steps)


def _fit(model, data: _Data, t, callbacks: list, history) -> bool:
    """``model.fit``; Ctrl-C stops it cleanly. The history files are written either way.
    Returns whether training was interrupted."""
    warnings.filterwarnings("ignore", message=".*shuffle=True.*", category=UserWarning)
    try:
        model.fit(data.train, epochs=t.epochs, steps_per_epoch=data.steps, validation_data=data.valid,
                  validation_steps=data.valid_steps, callbacks=callbacks, verbose=0)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping; the best model saved so far is kept", file=sys.stderr, flush=True)
        return True
    finally:
        history.write()
    return False
