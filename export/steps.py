"""The export's steps, one per artifact.  Each builds its file(s) in the export's temporary folder,
verifies them on the verification tiles with the one comparator and its tolerance table
(:mod:`flexunet.core.compare`), and returns its entry of ``export_report.json``; a step whose
artifact does not agree raises VerificationError and nothing of the export is written.

* ``model.onnx``: FP32 ONNX with metadata, against Keras (``TOLERANCES["fp32"]``);
* ``model.opt.onnx``: ONNX Runtime's optimised graph, against Keras (fp32);
* ``model.int8.onnx``: static QDQ INT8 (with the mixed-precision search when it has check tiles),
  against the FP32 ONNX model at ``--int8-min-dice`` (default ``TOLERANCES["int8"]``);
* ``model.<precision>.engine``: a TensorRT engine and its sidecar, against Keras at its
  precision's tolerance (INT8 against the FP32 ONNX model, as above);
* the Triton repository: the verified engine or FP32 model, copied and checked, with its
  ``config.pbtxt``.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from flexunet.core.compare import TOLERANCES, compare, tolerance_for
from flexunet.core.errors import VerificationError, first_line
from flexunet.core.machine import cpu_has_vnni
from flexunet.core.modelinfo import ModelInfo
from flexunet.export import onnx as ox
from flexunet.export.verify import engine_predict, onnx_predict, require_agreement

if TYPE_CHECKING:
    from flexunet.export.exporter import ExportOptions

log = logging.getLogger("flexunet")

FP32_ONNX = "model.onnx"
#: Caches a TensorRT build reads from the output folder and leaves there for the next build.
TRT_CACHES = ("calibration.cache", "calibration.cache.json", "timing.cache")
#: The model's name in a Triton repository.
TRITON_MODEL = "flexunet_unet"


def timed(fn, *a, **kw):
    """``fn(*a, **kw)`` and the seconds it took."""
    t = time.perf_counter()
    r = fn(*a, **kw)
    return r, time.perf_counter() - t


@dataclass
class ExportContext:
    """What the steps read: the options, the Keras model and its info, the verification tiles with
    Keras's probabilities on them, the calibration (and held-out check) tiles; the folders; and the
    probabilities of each artifact verified so far (later steps compare with them)."""

    opts: ExportOptions
    model: object
    info: ModelInfo
    tiles: np.ndarray
    keras_probs: np.ndarray
    calib: np.ndarray | None = None
    check: np.ndarray | None = None
    check_truth: np.ndarray | None = None  # the check tiles' ground-truth label maps (calibration masks)
    tmp: Path | None = None
    out: Path | None = None
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    cfg: object = None


@dataclass(frozen=True)
class Step:
    """One artifact: its report name, the files it leaves in the temporary folder, and the function
    that builds and verifies it (``build(ctx, path) -> report entry``, ``path`` the artifact in the
    temporary folder)."""

    artifact: str
    files: tuple[str, ...]
    build: Callable[[ExportContext, Path], dict]


def plan(opts: ExportOptions) -> list[Step]:
    """The steps ``opts`` asks for, in the order they run (later ones read earlier artifacts)."""
    steps = [Step(FP32_ONNX, (FP32_ONNX, FP32_ONNX + ".data"), fp32_onnx),
             Step("tiling", (), tiling_defaults)]
    if opts.optimize:
        steps.append(Step("model.opt.onnx", ("model.opt.onnx",), optimized_onnx))
    if opts.int8:
        steps.append(Step("model.int8.onnx", ("model.int8.onnx",), int8_onnx))
    if opts.trt:
        engine = f"model.{opts.trt}.engine"
        steps.append(Step(engine, (engine, engine + ".json", *TRT_CACHES), tensorrt_engine))
    return steps


def judge(ctx: ExportContext, what: str, probs: np.ndarray, precision: str, tuning=None) -> dict:
    """Compare an artifact's probabilities on the verification tiles with Keras's and refuse it
    below its precision's tolerance; INT8 is judged against the FP32 ONNX model instead, at
    ``--int8-min-dice``, unless its search decided by accuracy retention (calibration masks): the
    search's verdict on the held-out check tiles then decides (``--int8-min-dice 0`` accepts any
    model) and the agreement is reported.  Returns the report's figures (``vs_keras``, and
    ``vs_fp32`` for INT8)."""
    vs_keras = compare(ctx.keras_probs, probs, ctx.info.threshold)
    if precision != "int8":
        require_agreement(vs_keras, TOLERANCES[precision], what, "the Keras model")
        return {"vs_keras": vs_keras.to_dict()}
    vs_fp32 = compare(ctx.probs[FP32_ONNX], probs, ctx.info.threshold)
    if tuning is not None and tuning.rule == "retention":
        if not tuning.passed and ctx.opts.int8_min_dice > 0:
            raise VerificationError(
                f"{what} keeps {100 * tuning.retention:.2f}% of the FP32 model's dice vs truth on "
                f"{tuning.check_tiles} held-out calibration tiles (< {100 * tuning.min_retention:g}%, accuracy "
                "retention decides with --calibration-masks); not written")
        return {"vs_fp32": vs_fp32.to_dict(), "vs_keras": vs_keras.to_dict()}
    require_agreement(vs_fp32, tolerance_for("int8", min_dice=ctx.opts.int8_min_dice), what, "the FP32 model",
                      " (more or more representative --calibration-images may help)")
    return {"vs_fp32": vs_fp32.to_dict(), "vs_keras": vs_keras.to_dict()}


def fp32_onnx(ctx: ExportContext, path: Path) -> dict:
    """``model.onnx``: the Keras model converted, with the model info as metadata."""
    _, seconds = timed(ox.convert, ctx.model, path, ctx.info, ctx.opts.opset)
    ctx.probs[path.name] = onnx_predict(path, ctx.tiles)
    return {"precision": "fp32", "opset": ctx.opts.opset, "seconds": round(seconds, 2), "bytes": ox.file_size(path),
            **judge(ctx, path.name, ctx.probs[path.name], "fp32")}


def tiling_defaults(ctx: ExportContext, path: Path) -> dict:
    """The overlap at which tiles agree with a whole-image pass and the activation memory per pixel,
    measured on ``model.onnx`` (a fixed-size export: on a dynamic-size conversion) and written
    into its metadata (:mod:`flexunet.export.margin`); later artifacts copy that metadata."""
    from dataclasses import replace

    from flexunet.export import margin

    onnx_path = ctx.tmp / FP32_ONNX
    if ctx.info.height is not None:  # fixed size: measure a dynamic-size conversion of the same model
        onnx_path = ctx.tmp / "tiling-measure.onnx"
        try:
            ox.convert(ctx.model, onnx_path, replace(ctx.info, height=None, width=None), ctx.opts.opset)
        except Exception as exc:  # a network that only traces at a fixed size (bilinear resizes, pooling)
            for leftover in (onnx_path, onnx_path.with_name(onnx_path.name + ".data")):
                leftover.unlink(missing_ok=True)
            reason = f"not measured: the network does not convert at a dynamic size ({first_line(exc, 120)})"
            log.warning("tiling defaults %s; the config's overlap stays the default", reason)
            return {"measured_overlap": None, "note": reason}
    try:
        entry, seconds = timed(margin.measure, onnx_path, ctx.info, ctx.cfg)
    finally:
        if onnx_path.name != FP32_ONNX:
            for leftover in (onnx_path, onnx_path.with_name(onnx_path.name + ".data")):
                leftover.unlink(missing_ok=True)
    ox.write_metadata(ctx.tmp / FP32_ONNX, ctx.info)
    return {**entry, "seconds": round(seconds, 2)}


def optimized_onnx(ctx: ExportContext, path: Path) -> dict:
    """``model.opt.onnx``: ONNX Runtime's offline-optimised graph of ``model.onnx``."""
    _, seconds = timed(ox.optimize, ctx.tmp / FP32_ONNX, path)
    return {"precision": "fp32", "seconds": round(seconds, 2), "bytes": ox.file_size(path),
            **judge(ctx, path.name, onnx_predict(path, ctx.tiles), "fp32")}


def _calibration_record(ctx: ExportContext) -> dict:
    images, masks = ctx.opts.calibration_images, ctx.opts.calibration_masks
    return {"images": [str(p) for p in images] if isinstance(images, (list, tuple)) else str(images),
            "tiles": int(len(ctx.calib)), "masks": None if masks is None else str(masks),
            "check_tiles_with_truth": 0 if ctx.check_truth is None else int(len(ctx.check_truth))}


def int8_onnx(ctx: ExportContext, path: Path) -> dict:
    """``model.int8.onnx``: static INT8 calibrated on the calibration tiles; with check tiles, the
    mixed-precision search keeps the convolutions it needs in FP32."""
    from flexunet.export.int8_quantize import int8_weight_bits, quantize_int8
    from flexunet.export.int8_search import tune_int8

    opts, src = ctx.opts, ctx.tmp / FP32_ONNX
    bits = int8_weight_bits(opts.int8_weights)
    tuning = None
    if ctx.check is None:
        _, seconds = timed(quantize_int8, src, path, ctx.calib, ctx.info.input_name, weight_bits=bits)
    else:
        tuning, seconds = timed(tune_int8, src, path, ctx.calib, ctx.check, ctx.info.input_name,
                                threshold=ctx.info.threshold, target_dice=opts.int8_target_dice,
                                weight_bits=bits, max_float=opts.int8_max_float,
                                max_float_share=opts.int8_max_float_share, progress=log.info,
                                check_truth=ctx.check_truth)
    return {"precision": "int8", "seconds": round(seconds, 2), "bytes": ox.file_size(path),
            "calibration": _calibration_record(ctx), "weight_bits": bits, "cpu_has_vnni": cpu_has_vnni(),
            "float_convolutions": tuning.float_nodes if tuning else [],
            "tuning": tuning.to_dict() if tuning else None, "rule": tuning.rule if tuning else "agreement",
            **judge(ctx, path.name, onnx_predict(path, ctx.tiles), "int8", tuning)}


def _at_destination(value, tmp: Path, out: Path):
    """A report value with the paths inside the temporary folder named where the commit puts them."""
    if isinstance(value, dict):
        return {k: _at_destination(v, tmp, out) for k, v in value.items()}
    if isinstance(value, list):
        return [_at_destination(v, tmp, out) for v in value]
    if isinstance(value, str) and value.startswith(str(tmp)):
        return str(out) + value[len(str(tmp)):]
    return value


def tensorrt_engine(ctx: ExportContext, path: Path) -> dict:
    """``model.<precision>.engine`` and its sidecar, built from ``model.onnx`` (INT8 calibrated on
    the calibration tiles, or from the calibration cache of an earlier export).  The output
    folder's caches are read and their updates renamed into place with the engine."""
    from flexunet.export.tensorrt import build_engine

    opts = ctx.opts
    for name in TRT_CACHES:
        if (ctx.out / name).is_file():
            shutil.copy2(ctx.out / name, ctx.tmp / name)
    entry = build_engine(ctx.tmp / FP32_ONNX, path, precision=opts.trt, min_batch=opts.min_batch,
                         opt_batch=opts.opt_batch, max_batch=opts.max_batch, calibration_tiles=ctx.calib,
                         calibration_cache=ctx.tmp / TRT_CACHES[0], timing_cache=ctx.tmp / TRT_CACHES[2],
                         info=ctx.info)
    sidecar = Path(entry["sidecar"])
    recorded = _at_destination(json.loads(sidecar.read_text()), ctx.tmp, ctx.out)
    sidecar.write_text(json.dumps(recorded, indent=2) + "\n")
    figures = judge(ctx, path.name, engine_predict(path, ctx.tiles), opts.trt)
    return {**_at_destination(entry, ctx.tmp, ctx.out), **figures}


def triton_repository(ctx: ExportContext, folder: Path) -> str:
    """The Triton model folder, written into ``folder`` (which replaces ``REPO/flexunet_unet`` at
    the commit): the verified engine when one was built, else the FP32 ONNX model."""
    from flexunet.export.triton import fill_repository

    plan_path = ctx.tmp / f"model.{ctx.opts.trt}.engine" if ctx.opts.trt else None
    fill_repository(folder, TRITON_MODEL, ctx.info, onnx_path=ctx.tmp / FP32_ONNX, plan_path=plan_path,
                    max_batch_size=ctx.opts.max_batch)
    return str(Path(ctx.opts.triton_repo) / TRITON_MODEL)
