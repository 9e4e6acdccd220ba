"""The one interface every inference backend implements, and :func:`load_backend`, which picks one.

A backend is a small runner in the Polygraphy sense: it is created from a model file, maps a batch
of pre-processed NHWC float32 tiles to NHWC float32 probabilities, and is closed (or used as a
context manager).  Everything else -- tiling, batching, blending, post-processing -- is the same
code for every backend.

Backend modules are imported only when asked for, so ``import runtime.backends`` needs neither
onnxruntime, TensorFlow nor TensorRT.  ``runtime.backends.onnx`` and ``runtime.backends.keras``
provide ``load(path, ...) -> Backend``; ``runtime.backends.tensorrt`` (native engines) provides
``TensorRTBackend(path)``.  A runner that has the attributes and methods of :class:`Backend`
without subclassing it is wrapped by :func:`as_backend`.
"""
from __future__ import annotations

import abc
import importlib
import importlib.util
import os
from pathlib import Path

import numpy as np

from flexunet.core.errors import FlexunetError, MissingDependencyError, ModelError
from flexunet.core.modelinfo import ModelInfo

#: ``--backend`` choices.  ``onnxruntime`` takes the fastest usable execution provider
#: (TensorRT > CUDA > CPU); the suffixed names ask for one provider explicitly.
BACKENDS = (
    "auto", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt",
    "tensorrt", "keras",
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


def cpu_threads() -> int:
    """Number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_info() -> tuple[str | None, list[str]]:
    """(CPU model name, feature flags) from /proc/cpuinfo; (None, []) where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, []
    model, flags = None, []
    for line in text.splitlines():
        if model is None and line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        elif not flags and line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
        if model is not None and flags:
            break
    return model, flags


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_channels(path: Path, info: ModelInfo, channels) -> None:
    """ModelError when the model's input channel count (an int, or None if dynamic) disagrees
    with its metadata."""
    if isinstance(channels, int) and channels != info.channels:
        raise ModelError(f"{path}: the model takes {channels} input channels but its metadata "
                         f"says {info.channels}")


def load_backend(model_path: str | os.PathLike, backend: str = "auto", threads: int | None = None,
                 config: str | os.PathLike | None = None) -> Backend:
    """Load a model with the backend asked for.

    Args:
        model_path: an ``.onnx`` model, a ``.keras`` model, or a TensorRT ``.engine``/``.plan``.
        backend: one of :data:`BACKENDS`.  ``auto`` picks by file type: ONNX Runtime with its
            fastest usable execution provider for ``.onnx``, Keras for ``.keras``, native TensorRT
            for engines.  ``backend.name`` says what was chosen.
        threads: CPU threads for ONNX Runtime (default: all cores this process may use).
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
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    suffix = path.suffix.lower()
    if suffix not in AUTO_BACKEND:
        raise ModelError(f"{path}: unsupported model type {suffix or '(no suffix)'!r}; "
                         "expected .onnx, .keras, .engine or .plan")
    kind = AUTO_BACKEND[suffix] if backend == "auto" else backend
    if config is not None and kind != "keras":
        raise FlexunetError("--config applies to .keras models only (an exported model carries "
                            "its own metadata)")
    if kind == "keras":
        if suffix != ".keras":
            raise ModelError(f"{path}: the keras backend loads .keras models only")
        from flexunet.runtime.backends import keras as keras_backend

        return keras_backend.load(path, config=config)
    if kind == "tensorrt":
        return _load_tensorrt(path)
    if suffix != ".onnx":
        hint = "export it to ONNX" if suffix == ".keras" else "use --backend tensorrt"
        raise ModelError(f"{path}: {kind} runs .onnx models; {hint}")
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
    return as_backend(module.TensorRTBackend(path), path)
