"""Shared fixtures: tiny ONNX segmentation models built with onnx.helper, and test images.

The models take NHWC float32 ``image`` batches (dynamic N, H, W unless a fixed size is asked for),
transpose to NCHW, apply one convolution with fixed random weights, a sigmoid (one class) or a
softmax over channels (several classes), and transpose back to NHWC ``probabilities``.  A 1x1
convolution is a pointwise model (exactly translation-equivariant); a 3x3 convolution with zero
padding is translation-equivariant except within 1 pixel of the border of its input.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from flexunet.core.imageio import write_image
from flexunet.core.modelinfo import ModelInfo
from flexunet.core.preprocess import Preprocess

MULTICLASS_COLORS = [(0, 0, 0), (255, 0, 0), (0, 200, 0), (30, 60, 250)]


def _build_onnx(path: Path, *, classes: int = 1, kernel: int = 3, fixed: tuple[int, int] | None = None,
                batch: int | None = None, metadata: bool = True, seed: int = 0, **info) -> Path:
    rng = np.random.default_rng(seed)
    height, width = fixed or ("H", "W")
    shape_in = [batch or "N", height, width, 3]
    shape_out = [batch or "N", height, width, classes]
    weights = (rng.normal(size=(classes, 3, kernel, kernel)) * 4 / kernel).astype(np.float32)
    # Centre the logits on mid-grey inputs (the models see pixel / 255) so outputs vary with colour.
    bias = (-0.5 * weights.sum(axis=(1, 2, 3)) + rng.normal(scale=0.2, size=classes)).astype(np.float32)
    pad = kernel // 2
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w", "b"], ["logits"], pads=[pad] * 4),
        helper.make_node("Sigmoid", ["logits"], ["probs_nchw"]) if classes == 1
        else helper.make_node("Softmax", ["logits"], ["probs_nchw"], axis=1),
        helper.make_node("Transpose", ["probs_nchw"], ["probabilities"], perm=[0, 2, 3, 1]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_unet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape_in)],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, shape_out)],
        initializer=[numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    if metadata:
        defaults = dict(
            height=fixed[0] if fixed else None, width=fixed[1] if fixed else None, channels=3,
            num_classes=classes, multiple=1, preprocess=Preprocess(scale=1 / 255), tile=(64, 64),
            overlap=16,
        )
        if classes > 1:
            defaults.update(class_names=[f"c{i}" for i in range(classes)], class_colors=MULTICLASS_COLORS[:classes])
        helper.set_model_props(model, ModelInfo(**{**defaults, **info}).to_metadata())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def make_onnx(tmp_path):
    """``make_onnx(name="model.onnx", classes=1, kernel=3, fixed=None, batch=None, metadata=True,
    seed=0, **ModelInfo fields) -> Path``: a tiny ONNX segmentation model in ``tmp_path``."""

    def make(name: str = "model.onnx", **kwargs) -> Path:
        return _build_onnx(tmp_path / name, **kwargs)

    return make


@pytest.fixture
def make_images():
    """``make_images(folder, sizes, seed=0, ext=".png") -> [Path]``: smooth random BGR images
    (blobs at several scales, so masks have objects and holes) named img00, img01, ..."""

    def make(folder: Path, sizes, seed: int = 0, ext: str = ".png") -> list[Path]:
        import cv2

        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        paths = []
        for i, (h, w) in enumerate(sizes):
            noise = rng.uniform(0, 255, size=(h, w, 3)).astype(np.float32)
            image = cv2.GaussianBlur(noise, (0, 0), 3) * 0.5 + noise * 0.5
            image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
            paths.append(write_image(folder / f"img{i:02d}{ext}", image))
        return paths

    return make


@pytest.fixture
def thread_baseline():
    """``check(timeout=2.0)`` asserts the live threads are back to those alive at the start."""
    before = set(threading.enumerate())

    def check(timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            extra = [t for t in threading.enumerate() if t not in before]
            if not extra:
                return
            time.sleep(0.02)
        raise AssertionError(f"threads still alive: {[t.name for t in extra]}")

    return check


TF_ENV_KEYS = ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "GRPC_VERBOSITY")


@pytest.fixture(autouse=True)
def isolate_cli(monkeypatch):
    """The CLI configures the "flexunet" logger (stderr handler, propagate=False) and sets TF
    environment variables; undo both after each test so other test files are unaffected (every test:
    one that runs a command in process without asking for this would leave a handler on a closed
    stream behind)."""
    for key in TF_ENV_KEYS:
        if key in os.environ:
            monkeypatch.setenv(key, os.environ[key])
        else:
            monkeypatch.delenv(key, raising=False)
    log = logging.getLogger("flexunet")
    saved = (list(log.handlers), log.level, log.propagate)
    yield
    log.handlers[:] = saved[0]
    log.setLevel(saved[1])
    log.propagate = saved[2]
