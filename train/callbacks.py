"""The Keras callbacks of a training run (this module imports Keras; the trainer imports it lazily).

:class:`BestModel` keeps the best model on disk, :class:`SeedHistory` the seeds' history files,
:class:`Progress` prints one line per epoch, :class:`TimeBudget` applies ``[train] max_minutes``
and :class:`EpochPreviews` writes the epoch-change previews.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import keras
import numpy as np

from flexunet.core.atomic import atomic_path
from flexunet.train.history import LEARNING_RATE_KEYS, write_history


class BestModel(keras.callbacks.Callback):
    """Save the model when val_loss (else loss) improves, atomically (never a half-written file)."""

    def __init__(self, model_path: Path):
        super().__init__()
        self.model_path = model_path
        self.best = math.inf
        self.best_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_loss", (logs or {}).get("loss"))
        if value is not None and np.isfinite(value) and value < self.best:
            self.best, self.best_epoch = float(value), epoch + 1
            with atomic_path(self.model_path) as tmp:
                self.model.save(tmp)


class SeedHistory(keras.callbacks.Callback):
    """train_metrics.csv / train_losses.csv and their plots, rewritten after every epoch."""

    def __init__(self, eval_dir: Path):
        super().__init__()
        self.eval_dir = eval_dir
        self.rows: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items() if np.isscalar(v) or np.ndim(v) == 0}}
        self.rows.append(row)
        self.write()

    def write(self):
        write_history(self.rows, self.eval_dir)


class Progress(keras.callbacks.Callback):
    """One line per epoch: metrics, learning rate, time."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"{k} {float(v):.4f}" for k, v in logs.items() if k not in LEARNING_RATE_KEYS]
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        print(f"epoch {epoch + 1}/{self.epochs}  " + "  ".join(parts)
              + f"  lr {lr:.2e}  {time.perf_counter() - self.t:.1f}s", flush=True)


class TimeBudget(keras.callbacks.Callback):
    """[train] max_minutes: stop before an epoch that would end past the budget (the next epoch
    is assumed to take as long as the mean so far)."""

    clock = staticmethod(time.perf_counter)   # seconds; tests replace it

    def __init__(self, minutes: float):
        super().__init__()
        self.budget = 60.0 * minutes
        self.stopped_epoch = None

    def on_train_begin(self, logs=None):
        self.t0 = self.clock()

    def on_epoch_end(self, epoch, logs=None):
        elapsed = self.clock() - self.t0
        if elapsed + elapsed / (epoch + 1) > self.budget:
            self.stopped_epoch = epoch + 1
            self.model.stop_training = True
            print(f"time budget: stopping after epoch {epoch + 1} ({elapsed / 60:.1f} of "
                  f"{self.budget / 60:g} minutes; [train] max_minutes)", flush=True)


class EpochPreviews(keras.callbacks.Callback):
    """After each epoch, a :class:`~flexunet.train.previews.Previewer` writes its previews."""

    def __init__(self, previews):
        super().__init__()
        self.previews = previews

    def on_epoch_end(self, epoch, logs=None):
        self.previews.run(self.model, epoch + 1)
