"""Static INT8 quantisation (QDQ) of an FP32 ONNX UNet with ONNX Runtime's quantiser: calibration
on real tiles, the exact rewrites of :mod:`~flexunet.export.int8_rewrites` first, weight bits
chosen by this machine's CPU."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from flexunet.core.errors import FlexunetError
from flexunet.core.machine import cpu_has_vnni
from flexunet.export.int8_bias import correct_first_conv_bias
from flexunet.export.int8_rewrites import (
    convtranspose_as_conv,
    input_as_matmul,
    input_nodes,
    output_convs,
    pointwise_as_matmul,
    widen_narrow_convs,
)
from flexunet.export.onnx import copy_metadata, read_info

WEIGHT_BITS = ("auto", "7", "8")

#: Op types quantised.  Not the input scaling nor Sigmoid/Softmax: the probabilities stay float (an
#: 8-bit sigmoid output would quantise them in steps of 1/255).  Transpose/Reshape carry the
#: pixel shuffle of :func:`~flexunet.export.int8_rewrites.convtranspose_as_conv` in uint8.  MatMul is
#: the output layer (:func:`~flexunet.export.int8_rewrites.pointwise_as_matmul`), whose output is
#: not quantised (:data:`FLOAT_OUTPUT_OP_TYPES`).
INT8_OP_TYPES = ("Conv", "ConvTranspose", "MaxPool", "Concat", "Relu", "Transpose", "Reshape", "MatMul")
#: Op types whose outputs stay float: the output layer's MatMul reads uint8 and int8 weights and
#: writes float logits (ONNX Runtime's MatMulIntegerToFloat), so the logits are not rounded to
#: 8 bits before the sigmoid (measured on the Tiled-MultipleMyeloma UNet: mask dice vs FP32
#: 0.9879 with 8-bit logits, 0.9897 with float ones).
FLOAT_OUTPUT_OP_TYPES = ("MatMul",)
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def int8_weight_bits(choice: str = "auto") -> int:
    """Bits of INT8 weights: 8 (full range) or 7 (``reduce_range``); ``auto`` decides by this CPU.

    Without VNNI (AVX2-only CPUs) ONNX Runtime's u8s8 kernels add pairs of u8*s8 products in 16
    bits, which saturate with full-range weights: measured on the demo model, mask dice vs FP32 0.73
    with 8-bit weights and 0.996 with 7-bit ones.  VNNI accumulates in 32 bits, so full range is safe
    and more precise there.  The model carries the choice in its metadata; a model quantised with
    8-bit weights loses accuracy on a CPU without VNNI.
    """
    if choice not in WEIGHT_BITS:
        raise FlexunetError(f"INT8 weight bits must be one of {', '.join(WEIGHT_BITS)}, not {choice!r}")
    if choice == "auto":
        return 8 if cpu_has_vnni() else 7
    return int(choice)


class _TileReader:
    """onnxruntime.quantization CalibrationDataReader over an array of tiles, one at a time."""

    def __init__(self, input_name: str, tiles: np.ndarray, batch_size: int = 1):
        self.input_name = input_name
        self.tiles = tiles
        self.batch_size = batch_size
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.tiles):
            return None
        batch = self.tiles[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self):
        self.pos = 0


@functools.lru_cache(maxsize=1)
def _calibration_cache_supported() -> bool:
    """Whether this onnxruntime's ``quantize_static`` takes a calibration cache (asked on first use:
    importing this module imports no onnxruntime)."""
    try:
        import inspect

        from onnxruntime.quantization import quantize_static
    except ImportError:
        return False
    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _with_activations(model, names: list[str]) -> list[str]:
    """``names`` plus the Relu nodes that read only their outputs (so a float Conv stays fused)."""
    wanted = set(names)
    outputs = {o for n in model.graph.node if n.name in wanted for o in n.output}
    extra = [n.name for n in model.graph.node if n.op_type == "Relu" and n.input[0] in outputs]
    return list(names) + [e for e in extra if e not in wanted]


def _input_max(path: Path) -> float | None:
    """The largest value the model's input takes (a uint8 image times the pre-processing scale),
    from the ONNX metadata; None without it."""
    try:
        return 255.0 * read_info(path).preprocess.scale
    except FlexunetError:
        return None


def quantize_int8(src: Path, dest: Path, tiles: np.ndarray, input_name: str = "image",
                  method: str = "minmax", weight_bits: int = 7, float_first_conv: bool = False,
                  rewrite: bool = True, keep_float: tuple[str, ...] = ()) -> Path:
    """Static QDQ quantisation: per-channel int8 weights, uint8 activations, FP32 inputs/outputs.

    ``tiles`` are pre-processed calibration inputs (N, h, w, C).  The graph is first pre-processed
    (shape inference and fusions) as ONNX Runtime recommends.  ``weight_bits`` 7 quantises weights
    to a reduced range (see :func:`int8_weight_bits`).

    Measured with ONNX Runtime 1.31 on a 2-core AVX-512 VNNI CPU on the Tiled-MultipleMyeloma UNet
    (base_filters 8, 512x512 tiles; benchmarks/int8_speed.py, results/int8_speed_vnni.md).  Quantised
    as it comes, INT8 was only 1.4x faster than FP32: ONNX Runtime ran the 8-channel full-resolution
    convolutions and the 3-channel first one on slow paths, and the ConvTranspose in float between
    layout transposes.  Hence ``rewrite`` (all exact in FP32, :mod:`~flexunet.export.int8_rewrites`):

    * ``input_as_matmul`` pads the input channels to 4 inside the input scaling, so the first
      convolution runs INT8 on the fast kernel, quantised on the input's own uint8 grid, with its
      bias corrected for its rounded weights
      (:func:`~flexunet.export.int8_bias.correct_first_conv_bias`);
    * ``convtranspose_as_conv`` keeps the decoder in uint8 NHWC;
    * ``widen_narrow_convs`` pads 8-channel layers to 16 channels for ONNX Runtime's symmetric
      u8s8 convolution (~1.6x faster there despite the extra zeros).

    Together: 2.0-2.2x FP32 with every convolution INT8, mask dice vs FP32 0.990.  The output layer
    reads uint8 and writes float logits (:data:`FLOAT_OUTPUT_OP_TYPES`); the sigmoid stays float
    (see :data:`INT8_OP_TYPES`).  Per-channel symmetric int8 weights, uint8 activations (u8s8, the
    VNNI path), MinMax calibration: entropy and percentile calibration gave no better dice and ran
    out of memory on 512x512 tiles; 7-bit weights lose accuracy (dice 0.89 then) and are only for
    CPUs without VNNI.  ``float_first_conv`` keeps the input scaling and the first convolution in
    FP32 (dice 0.992 there, ~10% slower), as the mixed-precision search may choose.

    ``keep_float`` names further nodes (of the prepared graph, see
    :func:`~flexunet.export.int8_search.int8_candidates`) that stay FP32, as chosen by
    :func:`~flexunet.export.int8_search.tune_int8`.
    """
    with PreparedGraph(src, dest, rewrite) as prep:
        prep.quantize(dest, tiles, input_name, method, weight_bits, float_first_conv, keep_float)
    copy_metadata(src, dest, precision="int8")
    return dest


class PreparedGraph:
    """The FP32 graph as quantisation sees it (pre-processed, rewritten) in a temporary file beside
    ``dest``, with a calibration cache so that variants differing only in which nodes stay FP32
    are calibrated once (every :meth:`quantize` call gets the same calibration tiles)."""

    def __init__(self, src: Path, dest: Path, rewrite: bool = True):
        self.src, self.dest, self.rewrite = Path(src), Path(dest), rewrite
        self.path = self.dest.with_name(self.dest.stem + ".prep.onnx")
        self.cache = self.dest.with_name(self.dest.stem + ".calib.json")
        self.model = None
        self.input_range = None
        self.input_max = _input_max(self.src)
        self._bias_corrected: dict[int, object] = {}  # weight bits -> the graph, first layer corrected

    def __enter__(self):
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        try:
            quant_pre_process(str(self.src), str(self.path), skip_symbolic_shape=True)
            self.model = onnx.load_model(str(self.path))
            if self.rewrite:
                self.model, self.input_range = input_as_matmul(self.model)
                self.model = widen_narrow_convs(convtranspose_as_conv(self.model))
                onnx.save_model(self.model, str(self.path))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)
        self.cache.unlink(missing_ok=True)

    def quantize(self, dest: Path, tiles: np.ndarray, input_name: str, method: str = "minmax",
                 weight_bits: int = 7, float_first_conv: bool = False, keep_float=()) -> None:
        """Write the INT8 variant with ``keep_float`` (and the first convolution when
        ``float_first_conv``) in FP32 to ``dest``."""
        if weight_bits not in (7, 8):
            raise FlexunetError(f"INT8 weight bits must be 7 or 8, not {weight_bits}")
        if method not in CALIBRATION_METHODS:
            raise FlexunetError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, "
                                f"not {method!r}")
        first = input_nodes(self.model)
        ops = {n.name: n.op_type for n in self.model.graph.node}
        # the input scaling stays float; the first convolution too if asked (or chosen)
        float_first_conv = float_first_conv or any(ops[n] == "Conv" and n in keep_float for n in first)
        exclude = list(first) if float_first_conv else [n for n in first if ops[n] not in ("Conv", "Transpose")]
        exclude += _with_activations(self.model, [n for n in keep_float if n not in exclude])
        model, added = self._variant(tiles, weight_bits, float_first_conv, keep_float)
        self._quantize_static(model, dest, tiles, input_name, method, weight_bits, exclude + added,
                              self._options(float_first_conv))

    def _variant(self, tiles: np.ndarray, weight_bits: int, float_first_conv: bool, keep_float) -> tuple:
        """The graph to quantise and the nodes it adds that stay float: first layer bias-corrected
        (unless FP32), 1x1 convolutions kept in FP32 as float MatMuls, the output layer as a MatMul
        with uint8 input and float output."""
        model = self.model
        if not float_first_conv:  # the same for every variant of a search: made once
            if weight_bits not in self._bias_corrected:
                self._bias_corrected[weight_bits] = correct_first_conv_bias(model, tiles, weight_bits)
            model = self._bias_corrected[weight_bits]
        model, added = pointwise_as_matmul(model, set(keep_float))
        model, _ = pointwise_as_matmul(model, set(output_convs(self.model)) - set(keep_float))
        return model, added

    def _options(self, float_first_conv: bool) -> dict:
        """``quantize_static``'s extra options."""
        options = {"ActivationSymmetric": False, "WeightSymmetric": True,
                   "OpTypesToExcludeOutputQuantization": list(FLOAT_OUTPUT_OP_TYPES)}
        if not float_first_conv and self.input_range and self.input_max:
            # the input is a uint8 image times a constant: quantise on its own grid (exact, and
            # pixels brighter than any in the calibration tiles are not clipped)
            top = np.float32(self.input_max * self.input_range.gain)
            options["TensorQuantOverrides"] = {t: [{"rmin": np.float32(0.0), "rmax": top}]
                                               for t in self.input_range.tensors}
        return options

    def _quantize_static(self, model, dest: Path, tiles: np.ndarray, input_name: str, method: str,
                         weight_bits: int, exclude: list[str], options: dict) -> None:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        cache = {"calibration_cache_path": str(self.cache)} if _calibration_cache_supported() else {}
        graph = self.path.with_name(self.path.stem + ".q.onnx")
        onnx.save_model(model, str(graph))
        try:
            quantize_static(
                str(graph), str(dest), _TileReader(input_name, tiles),
                quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=weight_bits == 7,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=methods[method], op_types_to_quantize=list(INT8_OP_TYPES),
                nodes_to_exclude=exclude, extra_options=options, **cache)
        finally:
            graph.unlink(missing_ok=True)
