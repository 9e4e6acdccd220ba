"""Inference backends behind one small interface (:mod:`flexunet.runtime.backends.base`), and
:func:`load_backend`, which picks one for a model file.

Importing this package loads no inference library; :func:`load_backend` imports the one asked for.
Backend modules import only :mod:`~flexunet.runtime.backends.base` and the core, never this
factory, so there is no import circle.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from pathlib import Path

from flexunet.core.errors import FlexunetError, MissingDependencyError, ModelError, require_model_file
from flexunet.runtime.backends.base import (
    AUTO_BACKEND, BACKENDS, KERAS_SUFFIXES, TENSORRT_MISSING, Backend, as_backend,
)

__all__ = ["BACKENDS", "Backend", "as_backend", "load_backend"]


def load_backend(model_path: str | os.PathLike, backend: str = "auto", threads: int | None = None,
                 config: str | os.PathLike | None = None) -> Backend:
    """Load a model with the backend asked for.

    Args:
        model_path: an ``.onnx`` model, a ``.keras`` model, a seed API ``.h5`` model (run by Keras),
            or a TensorRT ``.engine``/``.plan``.
        backend: one of :data:`BACKENDS`.  ``auto`` picks by file type: for ``.onnx`` the fastest
            path that passed in ``flexunet tune``'s record beside it (:mod:`flexunet.runtime.autoselect`),
            without a usable record ONNX Runtime with its fastest usable execution provider; Keras
            for ``.keras``, native TensorRT for engines.  ``openvino`` / ``openvino-bf16`` run an ``.onnx`` with OpenVINO on the
            CPU in FP32 / BF16.  ``backend.name`` says what was chosen.
        threads: CPU threads for ONNX Runtime and OpenVINO (default: all cores this process may use).
        config: the training config of a ``.keras`` model (default: the
            ``train_eval_infer.config`` beside it); only valid with Keras.

    Raises:
        ModelError: missing, corrupt or unsupported model file, or a backend that cannot run it.
        MissingDependencyError: the backend asked for cannot run here.
        FlexunetError: an unknown backend name or options that do not apply.
    """
    path = Path(model_path)
    if backend not in BACKENDS:
        raise FlexunetError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    require_model_file(path)
    suffix = path.suffix.lower()
    auto = {**AUTO_BACKEND, ".h5": "keras"}  # .h5: a seed API model, rebuilt and loaded by Keras
    if suffix not in auto:
        raise ModelError(f"{path}: unsupported model type {suffix or '(no suffix)'!r}; "
                         "expected .onnx, .keras, .h5, .engine or .plan")
    kind = auto[suffix] if backend == "auto" else backend
    if backend == "auto" and suffix == ".onnx":  # the fastest path `flexunet tune` recorded that passed
        from flexunet.runtime.autoselect import choose

        choice = choose(path)
        logging.getLogger("flexunet").info(choice.line)
        path, kind = choice.path, choice.backend
    if config is not None and kind != "keras":
        raise FlexunetError("--config applies to .keras models only (an exported model carries "
                            "its own metadata)")
    if kind == "keras":
        if suffix not in KERAS_SUFFIXES:
            raise ModelError(f"{path}: the keras backend loads .keras models only, or seed .h5 models")
        from flexunet.runtime.backends import keras as keras_backend

        return keras_backend.load(path, config=config)
    if kind == "tensorrt":
        return _load_tensorrt(path)
    if suffix != ".onnx":
        hint = "export it to ONNX" if suffix in KERAS_SUFFIXES else "use --backend tensorrt"
        raise ModelError(f"{path}: {kind} runs .onnx models; {hint}")
    if kind.startswith("openvino"):
        from flexunet.runtime.backends import openvino as openvino_backend

        return openvino_backend.load(path, precision=kind.partition("-")[2] or "fp32", threads=threads)
    from flexunet.runtime.backends import onnx as onnx_backend

    return onnx_backend.load(path, provider=kind.partition("-")[2] or None, threads=threads)


def _load_tensorrt(path: Path) -> Backend:
    """The native TensorRT backend, when its module is part of this installation."""
    name = f"{__package__}.tensorrt"
    try:
        found = importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise MissingDependencyError(f"{path}: {TENSORRT_MISSING}")
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise MissingDependencyError(f"{path}: {TENSORRT_MISSING} ({exc})") from None
    try:
        return as_backend(module.TensorRTBackend(path), path)
    except MissingDependencyError as exc:  # its reason names no file
        raise MissingDependencyError(f"{path}: {exc}") from None
