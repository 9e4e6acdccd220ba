"""Evaluate a trained model on the config's [test] split.

Writes ``evaluation.csv`` beside the config in the seeds' format (``loss,0.2724`` lines, one per
Keras loss/metric), followed by the mask dice computed with :mod:`flexunet.core.metrics` on thresholded
(or argmax) predictions, the figure parity and benchmarks also use.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flexunet.core.atomic import write_text
from flexunet.core.config import Config
from flexunet.core.errors import ModelError, require_model_file
from flexunet.core.masks import labels_from_probabilities
from flexunet.core.metrics import dice, per_class_dice

from flexunet.train import dataset as ds
from flexunet.runtime.backends.keras import load_keras_model
from flexunet.train.trainer import BEST_MODEL_FILE, compile_model


@dataclass
class Evaluation:
    metrics: dict[str, float]
    per_class: list[float] | None
    images: int
    samples: int
    csv_path: Path


def evaluate(cfg: Config, model_path: Path | None = None) -> Evaluation:
    model_path = Path(model_path) if model_path else cfg.train.model_dir / BEST_MODEL_FILE
    pairs = ds.split_pairs(cfg, "test")
    if not pairs:
        raise cfg.error("test", "image_datapath", "missing: evaluation needs a [test] split")
    require_model_file(model_path, "no such model file (train first, or pass --model)")
    maker = ds.SampleMaker(cfg)
    maker.check(pairs)  # masks of another size than their images: refused before the model is loaded
    model = load_keras_model(model_path, cfg=cfg)  # a seed .h5: rebuilt from cfg, weights loaded by layer
    compile_model(cfg, model)  # the config's loss and metrics, as in training
    expected = (cfg.model.image_height, cfg.model.image_width, cfg.model.image_channels)
    got = tuple(model.input_shape[1:])
    if got[2] != expected[2] or (got[0] is not None and got[:2] != expected[:2]):
        raise ModelError(f"{model_path}: model input {got} does not match the config's "
                         f"{expected} ({cfg.path})")
    if model.output_shape[-1] != cfg.model.num_classes:
        raise ModelError(f"{model_path}: the model gives {model.output_shape[-1]} output channels but the "
                         f"config says num_classes = {cfg.model.num_classes} ({cfg.path})")

    data, steps = ds.make_tf_dataset(maker, pairs, cfg.train.batch_size, training=False, seed=cfg.seed)
    with ds.data_errors(maker):
        values = model.evaluate(data, steps=steps, return_dict=True, verbose=0)
    # seed order: the loss first, then the compiled metrics
    metrics = {"loss": float(values["loss"])}
    metrics.update({k: float(v) for k, v in values.items() if k != "loss"})

    # Mask dice over the whole split (pixels pooled), from thresholded / argmax predictions.
    pred_labels, true_labels = [], []
    samples = 0
    for pair in pairs:
        xs, ys = zip(*maker.samples(pair))
        probs = model.predict_on_batch(np.stack(xs))
        for p, y in zip(np.asarray(probs), ys):
            pred_labels.append(labels_from_probabilities(p))
            true_labels.append(labels_from_probabilities(y))
            samples += 1
    pred = np.stack(pred_labels)
    true = np.stack(true_labels)
    per_class = None
    if cfg.multiclass:
        per_class = per_class_dice(true, pred, cfg.model.num_classes)
        metrics["mask_dice_mean_foreground"] = float(np.mean(per_class[1:]))
    else:
        metrics["mask_dice"] = dice(true, pred)

    lines = [f"{k},{v:.4f}" for k, v in metrics.items()]
    if per_class is not None:
        lines += [f"dice_class_{i},{v:.4f}" for i, v in enumerate(per_class)]
    csv_path = cfg.folder / "evaluation.csv"
    write_text(csv_path, "\n".join(lines) + "\n")
    return Evaluation(metrics, per_class, len(pairs), samples, csv_path)
