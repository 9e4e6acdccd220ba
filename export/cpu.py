"""CPU artifacts: an ONNX Runtime graph-optimised model and a statically quantised INT8 (QDQ) model."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.errors import FlexunetError


def optimize(src: Path, dest: Path) -> Path:
    """Save ONNX Runtime's offline-optimised graph (extended level: portable across CPUs)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(dest)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    if not dest.exists():
        raise FlexunetError(f"{dest}: ONNX Runtime did not write the optimised model")
    _copy_metadata(src, dest)
    return dest


def _copy_metadata(src: Path, dest: Path, precision: str | None = None) -> None:
    import onnx

    from runtime.modelinfo import METADATA_KEY, ModelInfo

    a = onnx.load_model(str(src), load_external_data=False)
    b = onnx.load_model(str(dest))
    props = {p.key: p.value for p in a.metadata_props}
    if precision is not None and METADATA_KEY in props:
        info = ModelInfo.from_json(props[METADATA_KEY])
        info.precision = precision
        props.update(info.to_metadata())
    del b.metadata_props[:]
    for k, v in props.items():
        e = b.metadata_props.add()
        e.key, e.value = k, v
    onnx.save_model(b, str(dest))


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


WEIGHT_BITS = ("auto", "7", "8")


def cpu_has_vnni() -> bool:
    """Whether this CPU has VNNI (AVX512-VNNI or AVX-VNNI): 8-bit dot products without saturation."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_vnni", "avx_vnni"})


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


def quantize_int8(src: Path, dest: Path, tiles: np.ndarray, input_name: str = "image",
                  method: str = "minmax", weight_bits: int = 7) -> Path:
    """Static QDQ quantisation: per-channel int8 weights, uint8 activations, FP32 inputs/outputs.

    ``tiles`` are pre-processed calibration inputs (N, h, w, C).  The graph is first pre-processed
    (shape inference and fusions) as ONNX Runtime recommends.  ``weight_bits`` 7 quantises weights
    to a reduced range (see :func:`int8_weight_bits`).
    """
    if weight_bits not in (7, 8):
        raise FlexunetError(f"INT8 weight bits must be 7 or 8, not {weight_bits}")
    reduce_range = weight_bits == 7
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    prepared = dest.with_name(dest.stem + ".prep.onnx")
    try:
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(dest), _TileReader(input_name, tiles),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    finally:
        prepared.unlink(missing_ok=True)
    _copy_metadata(src, dest, precision="int8")
    return dest
