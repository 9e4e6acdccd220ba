"""The seed baseline of ``flexunet bench --baseline seed``: the seed API's tiled loop
(:mod:`flexunet.runtime.seedstyle`: per-tile ``keras_model.predict(b, verbose=0)``, batch 1, resized
margin crops, AND with a downscaled whole-image mask) timed per image from decode to the written mask.
"""
from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from flexunet.core.errors import FlexunetError, ImageReadError, MissingDependencyError
from flexunet.core.imageio import read_image, write_image

BASELINES = ("seed",)


def check_baseline(model: Path, baseline: str | None, keras: Path | None) -> Path | None:
    """The .keras model of the baseline (None without one); FlexunetError before any measurement
    when it is missing or TensorFlow is not installed."""
    if baseline is None:
        return None
    if baseline not in BASELINES:
        raise FlexunetError(f"unknown baseline {baseline!r}; the only one is 'seed'")
    path = keras if keras is not None else (model if model.suffix.lower() == ".keras" else None)
    if path is None:
        raise FlexunetError(f"--baseline seed runs a Keras model: {model} is not .keras; pass --keras PATH "
                            "(the same model as .keras)")
    if path.suffix.lower() != ".keras" or not path.is_file():
        raise FlexunetError(f"{path}: --keras needs an existing .keras model")
    if importlib.util.find_spec("tensorflow") is None:
        raise MissingDependencyError("--baseline seed needs TensorFlow (pip install 'flexunet[train]')")
    return path


def seed_baseline(keras_backend, paths: Sequence[Path], progress: Callable[[str], None] | None = None) -> dict:
    """Time the seed API's tiled loop (:func:`flexunet.runtime.seedstyle.seed_style_labels`) with
    ``keras_model.predict(b, verbose=0)`` per tile on a Keras backend's model, from decode to the
    written mask, per image (one untimed warm-up call first)."""
    from flexunet.runtime.seedstyle import seed_style_labels

    say = progress or (lambda line: None)
    info = keras_backend.info
    th, tw = keras_backend.fixed_size or info.tile_size
    if th != tw:
        raise FlexunetError(f"{keras_backend.path}: the seed baseline needs a square model input, not {th}x{tw}")
    size, margin = int(tw), int(info.overlap)
    model = keras_backend.model

    def predict_one(b):
        return model.predict(b, verbose=0)

    predict_one(np.zeros((1, size, size, info.channels), np.float32))  # warm-up (graph tracing)
    seconds, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="flexunet-seed-") as tmp:
        for path in paths:
            t = time.perf_counter()
            try:
                image = read_image(path)
            except ImageReadError as exc:
                skipped.append({"path": str(path), "reason": str(exc)})
                continue
            labels = seed_style_labels(info.preprocess(image), predict_one, size, margin=margin,
                                       bitwise_blending=True, threshold=info.threshold)
            write_image(Path(tmp) / f"{path.stem}.png", labels * np.uint8(255) if info.num_classes == 1 else labels)
            seconds.append(time.perf_counter() - t)
            say(f"seed baseline {path.name}: {seconds[-1]:.2f} s")
    total = sum(seconds)
    return {"kind": "seed", "model": str(keras_backend.path), "backend": keras_backend.name,
            "slides": len(seconds), "skipped": skipped, "seconds": total,
            "seconds_per_slide": total / len(seconds) if seconds else None,
            "slides_per_s": len(seconds) / total if total > 0 else None,
            "settings": {"tile": size, "margin": margin, "batch_size": 1, "bitwise_blending": True,
                         "predict": "keras_model.predict(tile, verbose=0)", "resized_margin_crops": True}}
