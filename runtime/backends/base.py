"""The one interface every inference backend implements (:func:`load_backend`, in the package, picks one).

A backend is a small runner in the Polygraphy sense: it is created from a model file, maps a batch
of pre-processed NHWC float32 tiles to NHWC float32 probabilities, and is closed (or used as a
context manager).  Everything else -- tiling, batching, blending, post-processing -- is the same
code for every backend.

Backend modules are imported only when asked for, so ``import runtime.backends`` needs neither
onnxruntime, OpenVINO, TensorFlow nor TensorRT.  ``runtime.backends.onnx``,
``runtime.backends.openvino`` and ``runtime.backends.keras`` provide ``load(path, ...) -> Backend``;
``runtime.backends.tensorrt`` (native engines) provides ``TensorRTBackend(path)``.  A runner that
has the attributes and methods of :class:`Backend` without subclassing it is wrapped by
:func:`as_backend`.
"""
from __future__ import annotations

import abc
import os
from pathlib import Path

import numpy as np

from flexunet.core.errors import ModelError
from flexunet.core.modelinfo import ModelInfo

#: Model files the Keras backend loads: a Keras archive, or a seed API ``.h5`` (rebuilt from its config).
KERAS_SUFFIXES = (".keras", ".h5")

#: ``--backend`` choices.  ``onnxruntime`` takes the fastest usable execution provider
#: (TensorRT > CUDA > CPU); the suffixed names ask for one provider explicitly.  ``openvino`` runs
#: an ``.onnx`` with OpenVINO's CPU plugin in FP32, ``openvino-bf16`` in BF16 (CPUs with BF16).
BACKENDS = (
    "auto", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt",
    "openvino", "openvino-bf16", "tensorrt", "keras",
)

#: Model file suffix -> backend ``auto`` uses for it.
AUTO_BACKEND = {".onnx": "onnxruntime", ".keras": "keras", ".engine": "tensorrt", ".plan": "tensorrt"}

TENSORRT_MISSING = "TensorRT backend needs a GPU and the tensorrt package"


class Backend(abc.ABC):
    """A loaded model that maps a batch of pre-processed tiles to probabilities.

    Attributes:
        name: what runs the model, printed by the CLI, e.g. ``"onnxruntime CPUExecutionProvider"``.
        info: what inference needs to know about the model (pre-processing, classes, colours...).
        path: the model file, or None for a model that does not come from a file.
        max_batch: the largest batch one call runs natively (None: any).  ``predict`` still
            accepts any batch size and splits larger ones.
        fixed_size: ``(height, width)`` every input must have, or None when any size that is a
            multiple of ``info.multiple`` works.
    """

    name: str = ""
    info: ModelInfo
    path: Path | None = None
    max_batch: int | None = None
    fixed_size: tuple[int, int] | None = None

    @abc.abstractmethod
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, H, W, K)`` float32 for a ``(N, H, W, C)`` float32 batch."""

    def accepts(self, height: int, width: int) -> bool:
        """Whether the model can run on inputs of ``height x width``."""
        if self.fixed_size is not None:
            return (height, width) == tuple(self.fixed_size)
        multiple = self.info.multiple
        return height % multiple == 0 and width % multiple == 0

    def interrupt(self) -> None:
        """Make a ``predict`` running in another thread return early (best effort; it may then
        raise).  Called when a run is stopped; the default does nothing."""

    def close(self) -> None:
        """Release the model (the default does nothing)."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.path}>"


class RunnerBackend(Backend):
    """A :class:`Backend` around a runner that has ``name``, ``info``, ``predict`` and ``close``
    (and optionally ``max_batch``, ``fixed_size``, ``interrupt``) but does not subclass Backend."""

    def __init__(self, runner, path: str | os.PathLike | None = None):
        self.runner = runner
        self.name = runner.name
        self.info = runner.info
        self.max_batch = getattr(runner, "max_batch", None)
        self.fixed_size = getattr(runner, "fixed_size", None)
        self.path = Path(path) if path is not None else getattr(runner, "path", None)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """The runner's probabilities for ``batch``."""
        return self.runner.predict(batch)

    def interrupt(self) -> None:
        """The runner's ``interrupt``, if it has one."""
        interrupt = getattr(self.runner, "interrupt", None)
        if interrupt is not None:
            interrupt()

    def close(self) -> None:
        """Close the runner."""
        self.runner.close()


def as_backend(runner, path: str | os.PathLike | None = None) -> Backend:
    """``runner`` itself if it is a :class:`Backend`, else a :class:`RunnerBackend` around it."""
    return runner if isinstance(runner, Backend) else RunnerBackend(runner, path)


def input_geometry(path: Path, info: ModelInfo, shape, classes=None) -> tuple[int | None, tuple[int, int] | None]:
    """``(max_batch, fixed_size)`` of a model whose input has ``shape`` (ints for fixed dimensions,
    anything else for dynamic ones), checked to be NHWC with the metadata's channel count (and its
    output's channel count ``classes``, if known, with the metadata's classes).

    Raises:
        ModelError: not a 4-D input, or channels that disagree with the metadata.
    """
    shape = list(shape)
    if len(shape) != 4:
        raise ModelError(f"{path}: input {info.input_name!r} has shape {shape}; expected NHWC")
    check_channels(path, info, shape[3], classes)
    fixed = [d if isinstance(d, int) and d > 0 else None for d in shape[:3]]
    size = (fixed[1], fixed[2]) if None not in fixed[1:] else None
    return fixed[0], size


def run_in_chunks(run, batch: np.ndarray, step: int | None) -> np.ndarray:
    """``run`` over ``batch`` in chunks of exactly ``step`` items (the last one zero-padded, its
    padding dropped from the result); one call when ``step`` is None."""
    if step is None:
        return run(batch)
    outputs = []
    for start in range(0, len(batch), step):
        chunk = batch[start:start + step]
        padding = np.zeros((step - len(chunk), *chunk.shape[1:]), chunk.dtype)
        outputs.append(run(np.concatenate([chunk, padding]) if len(padding) else chunk)[:len(chunk)])
    return np.concatenate(outputs)


def check_channels(path: Path, info: ModelInfo, channels, classes=None, said_by="its metadata") -> None:
    """ModelError when the model's input channel count, or its output channel count (``classes``),
    disagrees with its metadata (or with the config ``said_by``); None (dynamic) is not checked."""
    if isinstance(channels, int) and channels != info.channels:
        raise ModelError(f"{path}: the model takes {channels} input channels but {said_by} "
                         f"says {info.channels}")
    if isinstance(classes, int) and classes != info.num_classes:  # else a run would fail at its first batch
        raise ModelError(f"{path}: the model gives {classes} output channels but {said_by} says "
                         f"{info.num_classes} class(es)")
