"""OpenVINO backend: an exported ``.onnx`` with flexunet metadata on OpenVINO's CPU plugin, in FP32 or BF16.

OpenVINO reads the ONNX file itself (no conversion step, nothing written beside the model) and
keeps its ``metadata_props`` in the model's ``rt_info["framework"]``; they are checked by the same
:meth:`ModelInfo.from_metadata` as ONNX Runtime's.  The model is compiled for the CPU with

* ``INFERENCE_PRECISION_HINT`` ``f32`` (``--backend openvino``) or ``bf16`` (``openvino-bf16``:
  only on a CPU with AVX512_BF16 or AMX, which OpenVINO must confirm; elsewhere a one-line refusal);
  ``info.precision`` then reads ``bf16`` for an FP32 model, so ``flexunet parity`` applies that
  precision's tolerance.  A quantised (QDQ INT8) model keeps its metadata's ``int8``.
* ``INFERENCE_NUM_THREADS`` from ``threads`` (default: all cores this process may use) and
  ``PERFORMANCE_HINT`` ``LATENCY`` (one stream: the runtime sends one batch at a time).

A model with dynamic dimensions (batch; height and width of ``--dynamic-size`` exports) is compiled
for each batch shape it is given, as a static model (the CPU plugin's static kernels ran 1.25-1.35x
faster than its dynamic ones on a 992x896 tile here; a compile takes about 0.2 s): a tiled run has
one or two batch shapes.  After :data:`STATIC_COMPILES` shapes, new ones run on the dynamic
compiled model, so a run over images of many sizes (``--whole``) does not compile for each image.
``interrupt()`` cancels the inference in flight; its ``predict`` call raises KeyboardInterrupt.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import numpy as np

from flexunet.core.errors import FlexunetError, MissingDependencyError, ModelError, first_line
from flexunet.core.machine import cpu_has_bf16, cpu_info, cpu_threads
from flexunet.core.modelinfo import ModelInfo
from flexunet.runtime.backends.base import Backend, input_geometry, run_in_chunks

#: ``--backend`` name suffix -> OpenVINO inference precision.
PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
INSTALL_HINT = "pip install 'flexunet[openvino]'"
DEVICE = "CPU"
STATIC_COMPILES = 8  # batch shapes a dynamic model is compiled for statically; later ones run dynamically
STATIC_KEPT = 2      # statically compiled shapes kept (the ones used last)


def _openvino():
    """The ``openvino`` package, or a one-line MissingDependencyError saying how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise MissingDependencyError(f"the OpenVINO backend needs the openvino package ({first_line(exc, 80)}); "
                                     f"{INSTALL_HINT}") from None
    return openvino


def openvino_version(ov) -> str:
    """``2026.4.1`` of ``2026.4.1-22982-e213a14...``."""
    return ov.__version__.split("-")[0]


def check_precision(precision: str) -> str:
    """OpenVINO's name for ``precision`` (``fp32`` or ``bf16``).

    Raises:
        FlexunetError: an unknown precision.
        MissingDependencyError: BF16 on a CPU without BF16 instructions.
    """
    if precision not in PRECISIONS:
        raise FlexunetError(f"unknown OpenVINO precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and not cpu_has_bf16():
        cpu = cpu_info()[0] or "this CPU"
        raise MissingDependencyError(f"--backend openvino-bf16 needs a CPU with BF16 instructions (AVX512_BF16 or "
                                     f"AMX); {cpu} has none: use --backend openvino (FP32)")
    return PRECISIONS[precision]


def framework_metadata(model) -> dict[str, str]:
    """The ONNX ``metadata_props`` OpenVINO kept in ``rt_info["framework"]`` (empty when none)."""
    if not model.has_rt_info(["framework"]):
        return {}
    props = model.get_rt_info()["framework"]
    return {str(key): props[key].astype(str) for key in props}


def _port_index(ports, name: str) -> int:
    """The index of the input/output port called ``name``, else 0."""
    return next((i for i, p in enumerate(ports) if name in p.get_names()), 0)


class OpenVinoBackend(Backend):
    """An ``.onnx`` model compiled by OpenVINO for the CPU.

    Args:
        path: the model; its ``metadata_props`` must hold the flexunet :class:`ModelInfo`.
        precision: ``"fp32"`` or ``"bf16"`` (BF16 arithmetic; CPUs with AVX512_BF16 or AMX only).
        threads: inference threads (default: all cores this process may use).

    Raises:
        MissingDependencyError: openvino is not installed, or BF16 is asked for on a CPU without it.
        ModelError: not a readable ONNX model, no flexunet metadata, or not an NHWC image model.
    """

    def __init__(self, path: str | os.PathLike, precision: str = "fp32", threads: int | None = None):
        self._ov = ov = _openvino()
        self._hint, self._threads = check_precision(precision), threads or cpu_threads()
        self.path = Path(path)
        model = self._read()
        info = ModelInfo.from_metadata(framework_metadata(model), str(self.path))
        bf16 = precision == "bf16" and info.precision == "fp32"
        self.info = dataclasses.replace(info, precision="bf16") if bf16 else info
        self._input = _port_index(model.inputs, info.input_name)
        self._output = _port_index(model.outputs, info.output_name)
        output = model.output(self._output).get_partial_shape()
        classes = output[3].get_length() if output.rank.is_static and len(output) == 4 and output[3].is_static \
            else None
        self.max_batch, self.fixed_size = input_geometry(self.path, info, self._input_shape(model.input(self._input)),
                                                         classes)
        self._model = model
        self._dynamic = not _is_static(model.input(self._input).get_partial_shape())
        self._requests: dict[tuple | None, object] = {}  # batch shape (None: dynamic) -> infer request
        self._static_compiles = 0
        self._request_for(None)  # compile now: a model OpenVINO cannot compile is refused at load
        self.name = f"openvino {openvino_version(ov)} {DEVICE} {precision}"
        self._busy = False  # a predict call is in progress
        self._interrupted = threading.Event()  # interrupt() stopped the predict call in progress
        self._running = None  # the infer request in flight, for interrupt()
        self._cancelled = False  # interrupt() cancelled a run: the compiled models must be rebuilt
        self._closed = False

    def _request_for(self, shape: tuple | None):
        """The infer request of the model compiled for batches of ``shape`` (None: the model as read,
        its dynamic dimensions kept), compiled on first use.  A dynamic model is compiled statically
        for its first :data:`STATIC_COMPILES` batch shapes, of which the :data:`STATIC_KEPT` used
        last are kept (each holds its activation memory); later new shapes run dynamically."""
        if not self._dynamic or (shape not in self._requests and self._static_compiles >= STATIC_COMPILES):
            shape = None
        request = self._requests.pop(shape, None)
        if request is None:
            model = self._model
            if shape is not None:
                model = model.clone()
                try:
                    model.reshape({model.input(self._input): self._ov.PartialShape(list(shape))})
                except RuntimeError as exc:
                    raise ModelError(f"{self.path}: OpenVINO cannot run a batch of shape {shape} "
                                     f"({_message(exc)})") from None
                self._static_compiles += 1
            request = self._compile(model).create_infer_request()
        self._requests[shape] = request  # the most recently used last
        for old in [key for key in self._requests if key is not None][:-STATIC_KEPT]:
            del self._requests[old]
        return request

    def _read(self):
        """The ONNX file as an OpenVINO model (read by the ONNX front end only: others would try, and
        log, their own formats on a corrupt file)."""
        frontend = self._ov.frontend
        errors = (RuntimeError, frontend.GeneralFailure, frontend.OpConversionFailure,
                  frontend.OpValidationFailure, frontend.NotImplementedFailure, frontend.InitializationFailure)
        try:
            onnx_frontend = frontend.FrontEndManager().load_by_framework("onnx")
            return onnx_frontend.convert(onnx_frontend.load(str(self.path)))
        except errors as exc:
            raise ModelError(f"{self.path}: not a readable ONNX model ({_message(exc)})") from None

    def _input_shape(self, port) -> list:
        """The input's dimensions (None where dynamic), checked to be float32."""
        if port.get_element_type() != self._ov.Type.f32:
            raise ModelError(f"{self.path}: input {self.info.input_name!r} has type {port.get_element_type()}; "
                             "the OpenVINO backend runs float32 inputs")
        shape = port.get_partial_shape()
        return [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []

    def _compile(self, model):
        """The model compiled for the CPU; BF16 only where OpenVINO confirms it runs in BF16."""
        config = {"INFERENCE_PRECISION_HINT": self._hint, "INFERENCE_NUM_THREADS": self._threads,
                  "PERFORMANCE_HINT": "LATENCY"}
        try:
            compiled = self._ov.Core().compile_model(model, DEVICE, config)
        except RuntimeError as exc:
            raise ModelError(f"{self.path}: OpenVINO cannot compile this model ({_message(exc)})") from None
        if self._hint == "bf16" and compiled.get_property("INFERENCE_PRECISION_HINT") != self._ov.Type.bf16:
            raise MissingDependencyError(f"{self.path}: OpenVINO's {DEVICE} plugin does not run BF16 on this CPU; "
                                         "use --backend openvino (FP32)")
        return compiled

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of any size (split or zero-padded to a fixed batch size).

        Raises:
            KeyboardInterrupt: :meth:`interrupt` was called while this call ran.
        """
        if self._closed:
            raise RuntimeError(f"{self.path}: the OpenVINO backend is closed")
        self._interrupted.clear()  # an interrupt() that came as the previous call ended is not for this one
        self._drop_if_cancelled()
        self._busy = True
        try:
            return run_in_chunks(self._run, np.ascontiguousarray(batch, dtype=np.float32), self.max_batch)
        finally:
            self._busy = False

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self._stop_if_interrupted()
        request = self._request_for(batch.shape)
        self._running = request
        try:
            request.start_async({self._input: batch}, share_inputs=True)
            request.wait()
        except RuntimeError as exc:
            self._stop_if_interrupted()
            raise ModelError(f"{self.path}: OpenVINO could not run a batch of shape {batch.shape} "
                             f"({_message(exc)})") from None
        finally:
            self._running = None
        self._stop_if_interrupted()
        return np.array(request.get_output_tensor(self._output).data, dtype=np.float32, copy=True)

    def _stop_if_interrupted(self) -> None:
        """KeyboardInterrupt after :meth:`interrupt`.  After a cancelled run the compiled models are
        dropped: OpenVINO's CPU plugin can keep the cancelled run's shapes in a dynamic model and
        return wrong results for the next batch of another shape; the next run compiles anew."""
        if self._interrupted.is_set():
            self._interrupted.clear()
            self._drop_if_cancelled()
            raise KeyboardInterrupt

    def _drop_if_cancelled(self) -> None:
        if self._cancelled:
            self._cancelled = False
            self._requests.clear()

    def interrupt(self) -> None:
        """Stop the ``predict`` call in progress in another thread, as ONNX Runtime's backend does:
        the inference running is cancelled (OpenVINO checks between operators) and the call raises
        KeyboardInterrupt; a call that finished its inference meanwhile raises it too.  With no
        call in progress, nothing happens."""
        if not self._busy:
            return
        self._interrupted.set()
        running = self._running
        if running is not None:
            self._cancelled = True
            running.cancel()

    def close(self) -> None:
        """Drop the compiled model."""
        self._closed = True
        self._running = None
        self._requests.clear()


def _is_static(shape) -> bool:
    return shape.rank.is_static and all(d.is_static for d in shape)


def _message(exc: BaseException) -> str:
    """The informative line of an OpenVINO error (it starts with ``Exception from src/...`` lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from src/", "Check '", "FrontEnd API failed"))]
    return first_line((useful or lines or [type(exc).__name__])[0])


def load(path: Path, precision: str = "fp32", threads: int | None = None) -> OpenVinoBackend:
    """An :class:`OpenVinoBackend` for ``path`` (see its arguments)."""
    return OpenVinoBackend(path, precision=precision, threads=threads)
