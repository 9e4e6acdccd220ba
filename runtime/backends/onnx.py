"""ONNX Runtime backend: an exported ``.onnx`` with flexunet metadata, on CPU, CUDA or TensorRT.

onnxruntime-gpu lists the CUDA and TensorRT execution providers even on a machine without a GPU
and then fails to load them, logging errors.  :func:`usable_providers` therefore only offers a GPU
provider when a CUDA device exists and the provider's shared library (with the CUDA, cuDNN or
TensorRT libraries it links against) actually loads.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path

import numpy as np

from flexunet.core.errors import MissingDependencyError, ModelError, first_line
from flexunet.core.modelinfo import ModelInfo
from flexunet.core.machine import cpu_threads
from flexunet.runtime.backends.base import Backend, input_geometry, run_in_chunks

#: Execution providers by the short name ``--backend onnxruntime-<name>`` uses, fastest first.
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_ORT_ERROR = 3  # onnxruntime log severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal
_INPUT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _onnxruntime():
    """onnxruntime, imported with its default logger limited to errors."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(_ORT_ERROR)
    return onnxruntime


def _ort_errors(ort) -> tuple[type[BaseException], ...]:
    """The exception types onnxruntime raises for a model it cannot load or run."""
    state = ort.capi.onnxruntime_pybind11_state
    names = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
             "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail")
    return tuple(getattr(state, n) for n in names if hasattr(state, n))


def _cuda_device_count() -> int:
    """CUDA devices the driver reports (0 without a driver or a GPU)."""
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        cuda = ctypes.CDLL(name)
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def _provider_library_loads(ort, short: str) -> bool:
    """Whether onnxruntime's shared library for provider ``short`` and its dependencies load."""
    capi = Path(ort.__file__).parent / "capi"
    if sys.platform == "win32":
        shared, library = "onnxruntime_providers_shared.dll", f"onnxruntime_providers_{short}.dll"
    else:
        shared, library = "libonnxruntime_providers_shared.so", f"libonnxruntime_providers_{short}.so"
    if not (capi / library).is_file():
        return False
    try:
        ctypes.CDLL(str(capi / shared), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(capi / library))
    except OSError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def usable_providers() -> tuple[str, ...]:
    """Execution providers that can run here, fastest first (always ends with the CPU)."""
    ort = _onnxruntime()
    available = set(ort.get_available_providers())
    usable = []
    if _cuda_device_count() > 0:
        for short in ("tensorrt", "cuda"):
            if PROVIDERS[short] in available and _provider_library_loads(ort, short):
                usable.append(PROVIDERS[short])
    usable.append(PROVIDERS["cpu"])
    return tuple(usable)


def _providers_for(provider: str | None) -> list[str]:
    """Providers to request: the fastest usable ones (``provider=None``) or the one asked for,
    with the CPU as fallback for operators it does not implement."""
    usable = usable_providers()
    if provider is None:
        return list(usable)
    if provider not in PROVIDERS:
        raise ValueError(f"unknown execution provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[provider]
    if wanted not in usable:
        raise MissingDependencyError(
            f"onnxruntime {wanted} is not usable here (it needs an NVIDIA GPU and the CUDA/cuDNN"
            f"{'/TensorRT' if provider == 'tensorrt' else ''} libraries onnxruntime-gpu was built for)")
    return list(dict.fromkeys([wanted, PROVIDERS["cpu"]]))


class OnnxBackend(Backend):
    """An ``.onnx`` model in an ONNX Runtime session.

    Args:
        path: the model; its ``metadata_props`` must hold the flexunet :class:`ModelInfo`.
        provider: ``"cpu"``, ``"cuda"``, ``"tensorrt"``, or None for the fastest usable one.
        threads: intra-op CPU threads (default: all cores this process may use).
        spinning: let idle worker threads spin between runs (ONNX Runtime's default); False for
            sessions timed in turn, which would otherwise compete with each other's idle threads.

    Raises:
        ModelError: not a readable ONNX model, no flexunet metadata, or not an NHWC image model.
        MissingDependencyError: the provider asked for cannot run here.
    """

    def __init__(self, path: str | os.PathLike, provider: str | None = None, threads: int | None = None,
                 spinning: bool = True):
        ort = _onnxruntime()
        self._ort = ort
        self._errors = _ort_errors(ort)
        self.path = Path(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or cpu_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = _ORT_ERROR
        if not spinning:  # idle worker threads sleep at once (for sessions that take turns)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=_providers_for(provider))
        except self._errors as exc:
            raise ModelError(f"{self.path}: not a readable ONNX model ({first_line(exc)})") from None
        self.info = ModelInfo.from_metadata(self._session.get_modelmeta().custom_metadata_map, str(self.path))
        self.name = f"onnxruntime {self._session.get_providers()[0]}"
        self._input = self._pick(self._session.get_inputs(), self.info.input_name)
        output = self._pick(self._session.get_outputs(), self.info.output_name)
        self._output = output.name
        self._input_dtype = self._dtype(self._input.type)
        classes = output.shape[-1] if len(output.shape) == 4 else None
        self.max_batch, self.fixed_size = input_geometry(self.path, self.info, self._input.shape, classes)
        self._running = None  # RunOptions of the session.run in progress, for interrupt()

    @staticmethod
    def _pick(args, name: str):
        """The session input/output called ``name``, else the first one."""
        return next((a for a in args if a.name == name), args[0])

    def _dtype(self, onnx_type: str):
        if onnx_type not in _INPUT_DTYPES:
            raise ModelError(f"{self.path}: input {self._input.name!r} has type {onnx_type}; "
                             "expected float or float16")
        return _INPUT_DTYPES[onnx_type]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of any size (split or zero-padded to a fixed batch size)."""
        return run_in_chunks(self._run, np.ascontiguousarray(batch, dtype=self._input_dtype), self.max_batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        options = self._ort.RunOptions()
        options.log_severity_level = _ORT_ERROR
        self._running = options
        try:
            (probs,) = self._session.run([self._output], {self._input.name: batch}, options)
        finally:
            self._running = None
        return np.asarray(probs, dtype=np.float32)

    def interrupt(self) -> None:
        """Terminate the ``session.run`` in progress: ONNX Runtime checks the flag between
        operators, and the run raises in its thread."""
        running = self._running
        if running is not None:
            running.terminate = True

    def close(self) -> None:
        """Drop the session."""
        self._session = None


def load(path: Path, provider: str | None = None, threads: int | None = None) -> OnnxBackend:
    """An :class:`OnnxBackend` for ``path`` (see its arguments)."""
    return OnnxBackend(path, provider=provider, threads=threads)
