"""TensorRT backend: run a serialised engine built by :func:`flexunet.export.tensorrt.build_engine`.

Importing this module imports neither ``tensorrt`` nor ``cuda`` (cuda-python); both are loaded
when :class:`TensorRTBackend` is created or :func:`check_available` is called, so a machine without
a GPU can import it, ask :func:`check_available` why TensorRT cannot be used, and say so in one line.

An engine only runs under the TensorRT version and on the GPU model it was built for: every engine
has a JSON sidecar ``<engine>.json`` recording them (:mod:`~flexunet.runtime.backends.tensorrt_sidecar`,
whose :func:`load_engine_checked` refuses an engine built for another platform); the libraries,
the GPU and their availability are :mod:`~flexunet.runtime.backends.tensorrt_platform`'s.  Their
public names are importable from here too.

The runner follows the TensorRT 10 name-based API (``set_input_shape`` / ``set_tensor_address`` /
``execute_async_v3``), which TensorRT 8.5+ also provides; older versions are refused.
Buffers are allocated once for the engine's largest batch: two slots, each a pinned host input,
device input, device output and pinned host output.  Host-to-device copies run on a copy stream and
inference plus device-to-host copies on a compute stream, ordered by events, so the upload of
chunk ``i+1`` overlaps the inference of chunk ``i`` when a batch is larger than ``max_batch``.
"""
from __future__ import annotations

import ctypes
import logging
import math
import threading
from collections import deque
from pathlib import Path

import numpy as np

from flexunet.core.errors import FlexunetError, MissingDependencyError, ModelError
from flexunet.runtime.backends.base import Backend
from flexunet.runtime.backends.tensorrt_platform import check_available, cuda_call, cudart, import_tensorrt, trt_logger
from flexunet.runtime.backends.tensorrt_sidecar import load_engine_checked, model_info_from_sidecar, sidecar_path

log = logging.getLogger("flexunet.tensorrt")


# ------------------------------------------------------------------------------------------------
# the runner
# ------------------------------------------------------------------------------------------------
def _pinned_array(ptr: int, count: int, dtype: np.dtype) -> np.ndarray:
    """A flat numpy view of ``count`` elements of pinned host memory at ``ptr``."""
    nbytes = count * dtype.itemsize
    raw = (ctypes.c_byte * nbytes).from_address(int(ptr))
    return np.frombuffer(raw, dtype=dtype, count=count)


class _Slot:
    """One of the two buffer sets: pinned host + device input and output, and its events."""

    def __init__(self):
        self.host_in_ptr = self.host_out_ptr = None
        self.dev_in = self.dev_out = None
        self.host_in = self.host_out = None
        self.h2d_done = self.d2h_done = None
        self.out_shape: tuple[int, ...] = ()
        self.rows = 0


class TensorRTBackend(Backend):
    """Run a flexunet TensorRT engine: ``predict((N, H, W, C) float32) -> (N, H, W, K) float32``.

    Attributes:
        name: ``"tensorrt"``.
        info: the model's :class:`ModelInfo`, from the engine's sidecar.
        max_batch: the largest batch the engine's optimisation profile accepts; larger batches are
            split into chunks of ``max_batch`` (pipelined, see the module docstring).
        fixed_size: ``(H, W)`` when the profile fixes the spatial size (always, for engines built
            by flexunet), else None.
        path (also ``engine_path``), device, sidecar: the engine file, the CUDA device, and what
            the engine's sidecar says.

    Use as a context manager, or call :meth:`close`.  ``predict`` may be called from any thread
    (calls are serialised); :meth:`interrupt` stops one in progress between chunks.
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, device: int = 0):
        self.engine_path = self.path = Path(engine_path)
        self.device = int(device)
        self._closed = True  # until resources exist
        self._lock = threading.Lock()
        self._busy = False
        self._interrupted = False
        self._slots: list[_Slot] = []
        self._copy_stream = self._compute_stream = None
        self._context = self._engine = self._runtime = None

        reason = check_available(self.device)
        if reason:
            raise MissingDependencyError(reason)
        data, self.sidecar = load_engine_checked(self.engine_path, device=self.device)
        self.info = model_info_from_sidecar(self.sidecar, str(sidecar_path(self.engine_path)))
        self._closed = False
        try:
            self._open(data)
        except BaseException:
            self.close()
            raise

    # -- setup -----------------------------------------------------------------------------------
    def _open(self, data: bytes) -> None:
        trt = import_tensorrt()
        rt = cudart()
        cuda_call(rt.cudaSetDevice(self.device), "cudaSetDevice")
        logger = trt_logger(trt)
        self._runtime = trt.Runtime(logger)
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise ModelError(f"{self.engine_path}: TensorRT could not deserialise the engine ({logger.last_error()})")
        self._bind_tensors(trt)
        out_max = self._largest_output(logger)
        self._allocate(math.prod(self._max_shape), math.prod(out_max))
        log.info("%s: TensorRT engine on GPU %d, batch %d..%d, input %s", self.engine_path.name, self.device,
                 self._min_batch, self.max_batch, self._max_shape[1:])

    def _bind_tensors(self, trt) -> None:
        """The engine's input and output tensors, their dtypes and the input's profile range."""
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not outputs:
            raise ModelError(f"{self.engine_path}: expected one input and an output, found inputs {inputs} "
                             f"and outputs {outputs}")
        if len(outputs) > 1 and self.info.output_name not in outputs:
            raise ModelError(f"{self.engine_path}: several outputs {outputs} and none is named "
                             f"{self.info.output_name!r}")
        self._in_name = inputs[0]
        self._out_name = self.info.output_name if self.info.output_name in outputs else outputs[0]
        self._in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._in_name)))
        self._out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._out_name)))

        lo, _, hi = (tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(self._in_name, 0))
        if len(hi) != 4:
            raise ModelError(f"{self.engine_path}: input {self._in_name} has shape {hi}; expected NHWC")
        self._min_shape, self._max_shape = lo, hi
        self._min_batch, self.max_batch = lo[0], hi[0]
        self.fixed_size = (hi[1], hi[2]) if lo[1:3] == hi[1:3] else None

    def _largest_output(self, logger) -> tuple[int, ...]:
        """Create the execution context and ask it for the output shape of the largest input."""
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise ModelError(f"{self.engine_path}: cannot create an execution context ({logger.last_error()})")
        hi = self._max_shape
        if not self._context.set_input_shape(self._in_name, hi):
            raise ModelError(f"{self.engine_path}: input shape {hi} rejected ({logger.last_error()})")
        out_max = tuple(int(d) for d in self._context.get_tensor_shape(self._out_name))
        if len(out_max) != 4 or min(out_max) < 1:
            raise ModelError(f"{self.engine_path}: output {self._out_name} has shape {out_max}; expected NHWK")
        self._out_channels = out_max[3]
        return out_max

    def _allocate(self, in_count: int, out_count: int) -> None:
        """The two streams and the two buffer slots, sized for the largest batch."""
        rt = cudart()
        self._copy_stream = cuda_call(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreate")
        self._compute_stream = cuda_call(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreate")
        for _ in range(2):
            s = _Slot()
            self._slots.append(s)  # appended first so close() frees whatever was allocated
            s.host_in_ptr = cuda_call(rt.cudaHostAlloc(in_count * self._in_dtype.itemsize, rt.cudaHostAllocDefault),
                                      "cudaHostAlloc (input)")
            s.host_out_ptr = cuda_call(rt.cudaHostAlloc(out_count * self._out_dtype.itemsize, rt.cudaHostAllocDefault),
                                       "cudaHostAlloc (output)")
            s.dev_in = cuda_call(rt.cudaMalloc(in_count * self._in_dtype.itemsize), "cudaMalloc (input)")
            s.dev_out = cuda_call(rt.cudaMalloc(out_count * self._out_dtype.itemsize), "cudaMalloc (output)")
            s.host_in = _pinned_array(s.host_in_ptr, in_count, self._in_dtype)
            s.host_out = _pinned_array(s.host_out_ptr, out_count, self._out_dtype)
            s.h2d_done = cuda_call(rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming), "cudaEventCreate")
            s.d2h_done = cuda_call(rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming), "cudaEventCreate")

    # -- inference -------------------------------------------------------------------------------
    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        x = np.asarray(batch)
        if x.ndim != 4:
            raise ValueError(f"expected an (N, H, W, C) batch, got shape {x.shape}")
        h, w, c = x.shape[1:]
        if c != self._max_shape[3]:
            raise ModelError(f"{self.engine_path}: the engine takes {self._max_shape[3]} channels, got {c}")
        if self.fixed_size and (h, w) != self.fixed_size:
            fh, fw = self.fixed_size
            raise ModelError(f"{self.engine_path}: the engine takes {fh}x{fw} tiles, got {h}x{w} "
                             f"(use a {fh}x{fw} tile or rebuild the engine)")
        if not (self._min_shape[1] <= h <= self._max_shape[1] and self._min_shape[2] <= w <= self._max_shape[2]):
            raise ModelError(f"{self.engine_path}: a {h}x{w} input is outside the engine's profile "
                             f"{self._min_shape[1]}x{self._min_shape[2]}..{self._max_shape[1]}x{self._max_shape[2]}")
        return x

    def _enqueue(self, slot: _Slot, chunk: np.ndarray) -> None:
        """Upload ``chunk`` into ``slot`` (copy stream), then infer and download it (compute stream)."""
        rt = cudart()
        rows = chunk.shape[0]
        run = max(rows, self._min_batch)  # an engine built with min_batch > 1 gets zero rows appended
        in_shape = (run,) + chunk.shape[1:]
        host_in = slot.host_in[:math.prod(in_shape)].reshape(in_shape)
        host_in[:rows] = chunk
        if run > rows:
            host_in[rows:] = 0
        cuda_call(rt.cudaMemcpyAsync(slot.dev_in, slot.host_in_ptr, host_in.nbytes,
                                     rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self._copy_stream), "cudaMemcpyAsync H2D")
        cuda_call(rt.cudaEventRecord(slot.h2d_done, self._copy_stream), "cudaEventRecord")
        cuda_call(rt.cudaStreamWaitEvent(self._compute_stream, slot.h2d_done, 0), "cudaStreamWaitEvent")

        ctx = self._context
        logger = trt_logger(import_tensorrt())
        if not ctx.set_input_shape(self._in_name, in_shape):
            raise ModelError(f"{self.engine_path}: input shape {in_shape} rejected ({logger.last_error()})")
        ctx.set_tensor_address(self._in_name, int(slot.dev_in))
        ctx.set_tensor_address(self._out_name, int(slot.dev_out))
        out_shape = tuple(int(d) for d in ctx.get_tensor_shape(self._out_name))
        if not ctx.execute_async_v3(int(self._compute_stream)):
            raise FlexunetError(f"{self.engine_path}: TensorRT inference failed ({logger.last_error()})")
        nbytes = math.prod(out_shape) * self._out_dtype.itemsize
        cuda_call(rt.cudaMemcpyAsync(slot.host_out_ptr, slot.dev_out, nbytes,
                                     rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._compute_stream),
                  "cudaMemcpyAsync D2H")
        cuda_call(rt.cudaEventRecord(slot.d2h_done, self._compute_stream), "cudaEventRecord")
        slot.out_shape, slot.rows = out_shape, rows

    def _collect(self, slot: _Slot, start: int, out: np.ndarray | None, n: int) -> np.ndarray:
        """Wait for ``slot``'s download and copy its rows into ``out`` (created on first use)."""
        cuda_call(cudart().cudaEventSynchronize(slot.d2h_done), "cudaEventSynchronize")
        res = slot.host_out[:math.prod(slot.out_shape)].reshape(slot.out_shape)[:slot.rows]
        if out is None:
            out = np.empty((n,) + res.shape[1:], dtype=np.float32)
        out[start:start + slot.rows] = res
        return out

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, H, W, K)`` float32 for a ``(N, H, W, C)`` batch (a new array)."""
        if self._closed:
            raise FlexunetError(f"{self.engine_path}: the TensorRT backend is closed")
        x = self._check_batch(batch)
        n = x.shape[0]
        if n == 0:
            return np.empty((0,) + x.shape[1:3] + (self._out_channels,), dtype=np.float32)
        with self._lock:
            if self._closed:  # closed while waiting for the lock
                raise FlexunetError(f"{self.engine_path}: the TensorRT backend is closed")
            self._busy, self._interrupted = True, False
            try:
                cuda_call(cudart().cudaSetDevice(self.device), "cudaSetDevice")  # per thread
                out = None
                pending: deque[tuple[_Slot, int]] = deque()
                for i, start in enumerate(range(0, n, self.max_batch)):
                    if self._interrupted:
                        raise FlexunetError(f"{self.engine_path}: TensorRT inference interrupted")
                    slot = self._slots[i % 2]
                    if len(pending) == 2:  # this slot's previous chunk must be collected first
                        out = self._collect(*pending.popleft(), out, n)
                    self._enqueue(slot, x[start:start + self.max_batch])
                    pending.append((slot, start))
                while pending:
                    out = self._collect(*pending.popleft(), out, n)
            except BaseException:
                self._synchronize()  # leave no copy in flight into buffers the next call reuses
                raise
            finally:
                self._busy = False
        return out

    def interrupt(self) -> None:
        """Make a ``predict`` running in another thread stop before its next chunk (it raises)."""
        if self._busy:
            self._interrupted = True

    def _synchronize(self) -> None:
        rt = cudart()
        for stream in (self._copy_stream, self._compute_stream):
            if stream is not None:
                rt.cudaStreamSynchronize(stream)

    # -- teardown --------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the buffers, streams, context and engine (idempotent)."""
        if self._closed:
            return
        self._closed = True
        rt = cudart()
        self._synchronize()
        for s in self._slots:
            for ev in (s.h2d_done, s.d2h_done):
                if ev is not None:
                    rt.cudaEventDestroy(ev)
            for ptr in (s.dev_in, s.dev_out):
                if ptr is not None:
                    rt.cudaFree(ptr)
            s.host_in = s.host_out = None  # drop the numpy views before freeing their memory
            for ptr in (s.host_in_ptr, s.host_out_ptr):
                if ptr is not None:
                    rt.cudaFreeHost(ptr)
        self._slots = []
        for stream in (self._copy_stream, self._compute_stream):
            if stream is not None:
                rt.cudaStreamDestroy(stream)
        self._copy_stream = self._compute_stream = None
        # context before engine before runtime
        self._context = None
        self._engine = None
        self._runtime = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def load(path: Path, device: int = 0) -> TensorRTBackend:
    """A :class:`TensorRTBackend` for the engine at ``path`` (what :func:`runtime.backends.load_backend`
    calls for ``.engine`` / ``.plan`` files)."""
    return TensorRTBackend(path, device=device)
