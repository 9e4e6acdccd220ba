"""TensorRT and cuda-python, loaded on demand: whether they (and a GPU) are usable here, CUDA calls
with one-line errors, this machine's platform as engine sidecars record it, and TensorRT's logger.

Importing this module imports neither ``tensorrt`` nor ``cuda`` (cuda-python).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from collections import deque

from flexunet.core.errors import FlexunetError, MissingDependencyError, first_line

log = logging.getLogger("flexunet.tensorrt")

MIN_TENSORRT = (8, 5)          # first release with the name-based tensor API (enqueueV3)


def _import_cudart():
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (>= 12.6) or ``cuda.cudart`` (older)."""
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        return importlib.import_module("cuda.cudart")


@functools.lru_cache(maxsize=1)
def cudart():
    """The cuda-python runtime module (imported on first use)."""
    return _import_cudart()


def import_tensorrt():
    """``import tensorrt``, with a one-line MissingDependencyError when it is absent or broken."""
    try:
        return importlib.import_module("tensorrt")
    except Exception as exc:  # ImportError, or OSError from a missing libnvinfer
        raise MissingDependencyError(f"TensorRT cannot be loaded ({first_line(exc)}); pip install tensorrt") from None


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for p in str(version).split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _cuda_error_text(err) -> str:
    rt = cudart()
    try:
        name = rt.cudaGetErrorName(err)[1]
        text = rt.cudaGetErrorString(err)[1]
        name = name.decode() if isinstance(name, bytes) else str(name)
        text = text.decode() if isinstance(text, bytes) else str(text)
        return f"{name}: {text}"
    except Exception:  # pragma: no cover - the error text is a courtesy
        return str(err)


def cuda_call(result, what: str):
    """Unpack a cuda-python ``(error, *values)`` result; raise FlexunetError naming ``what`` on error."""
    rt = cudart()
    err, *values = result
    if err != rt.cudaError_t.cudaSuccess:
        raise FlexunetError(f"CUDA {what} failed ({_cuda_error_text(err)})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def check_available(device: int = 0) -> str | None:
    """None if TensorRT and CUDA device ``device`` are usable here, else a one-line reason.

    Cheap checks first (is the package installed at all), then the imports, then the GPU.  Never
    raises; the command line prints ``error: <reason>`` and exits 2.
    """
    try:
        if importlib.util.find_spec("tensorrt") is None:
            return "TensorRT is not installed (pip install tensorrt)"
    except (ImportError, ValueError):
        return "TensorRT is not installed (pip install tensorrt)"
    try:
        rt = cudart()
    except ImportError:
        return "cuda-python is not installed (pip install cuda-python)"
    except Exception as exc:
        return f"cuda-python cannot be loaded ({first_line(exc)})"
    try:
        trt = import_tensorrt()
    except MissingDependencyError as exc:
        return str(exc)
    version = getattr(trt, "__version__", "0")
    if _version_tuple(version)[:2] < MIN_TENSORRT:
        return (f"TensorRT {version} is too old; flexunet needs TensorRT >= "
                f"{'.'.join(map(str, MIN_TENSORRT))} (pip install -U tensorrt)")
    try:
        err, count = rt.cudaGetDeviceCount()
    except Exception as exc:
        return f"no CUDA GPU found ({first_line(exc)})"
    if err != rt.cudaError_t.cudaSuccess:
        return f"no CUDA GPU found ({_cuda_error_text(err)})"
    if count < 1:
        return "no CUDA GPU found"
    if not 0 <= device < count:
        return f"CUDA device {device} does not exist (this machine has {count}: 0..{count - 1})"
    return None


def _cuda_version(v: int) -> str:
    """cudaDriverGetVersion-style integer -> ``"12.4"``."""
    v = int(v)
    return f"{v // 1000}.{(v % 1000) // 10}"


def current_platform(device: int = 0) -> dict:
    """This machine's TensorRT version, GPU name, compute capability and CUDA versions."""
    trt = import_tensorrt()
    rt = cudart()
    prop = cuda_call(rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\x00", 1)[0].decode("utf-8", "replace")
    return {
        "tensorrt_version": str(trt.__version__),
        "gpu_name": str(name).strip(),
        "compute_capability": f"{prop.major}.{prop.minor}",
        "cuda_driver_version": _cuda_version(cuda_call(rt.cudaDriverGetVersion(), "cudaDriverGetVersion")),
        "cuda_runtime_version": _cuda_version(cuda_call(rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")),
    }


_TRT_LOGGER = None


def trt_logger(trt):
    """The process-wide TensorRT logger (TensorRT expects one): forwards to the ``flexunet.tensorrt``
    Python logger and remembers recent errors so failures can be reported in one line."""
    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        severity = trt.ILogger.Severity

        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: deque[str] = deque(maxlen=8)

            def log(self, level, msg):
                if level in (severity.INTERNAL_ERROR, severity.ERROR):
                    self.errors.append(first_line(msg))
                    log.info("TensorRT: %s", msg)
                elif level == severity.WARNING:
                    log.info("TensorRT: %s", msg)
                elif level == severity.INFO:
                    log.debug("TensorRT: %s", msg)

            def last_error(self) -> str:
                return self.errors[-1] if self.errors else "no error message from TensorRT"

        _TRT_LOGGER = _Logger()
    return _TRT_LOGGER
