"""``flexunet export``: every artifact is written under a temporary name, verified, then renamed.

Artifacts in OUT: ``model.onnx`` (FP32, metadata), optionally ``model.opt.onnx`` (ONNX Runtime
optimised), ``model.int8.onnx`` (static QDQ INT8), ``model.<precision>.engine`` (TensorRT) and a
Triton repository; ``export_report.json`` records figures, versions, sizes and times.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from flexunet.export.cpu import MAX_FLOAT_SHARE
from flexunet.core.atomic import write_text
from flexunet.core.config import CONFIG_FILENAME, load_config
from flexunet.core.errors import FlexunetError, MissingDependencyError, ModelError, VerificationError
from flexunet.core.modelinfo import ModelInfo

from flexunet.core.compare import TOLERANCES, compare
from flexunet.core.machine import cpu_has_vnni, library_versions
from flexunet.export import onnx as ox

INT8_MIN_DICE = TOLERANCES["int8"].min_dice

log = logging.getLogger("flexunet")
#: Calibration-image tiles held out of calibration to check (and tune) INT8 against FP32.
INT8_CHECK_TILES = 16


@dataclass
class ExportOptions:
    out_dir: Path
    config: Path | None = None
    data_root: Path | None = None
    dynamic_size: bool = False
    opset: int = ox.DEFAULT_OPSET
    optimize: bool = False
    int8: bool = False
    calibration_images: Path | list[Path] | None = None  # a folder, or image files
    calibration_count: int = 64
    int8_min_dice: float = INT8_MIN_DICE
    int8_weights: str = "auto"
    int8_target_dice: float = INT8_MIN_DICE  # mixed-precision target; 0: every convolution INT8
    int8_max_float: int = 8
    int8_max_float_share: float = MAX_FLOAT_SHARE
    trt: str | None = None
    min_batch: int = 1
    opt_batch: int = 4
    max_batch: int = 8
    triton_repo: Path | None = None
    verify_tiles: int = 16
    report: dict = field(default_factory=dict)


def find_config(model_path: Path, config: Path | None, data_root: Path | None) -> tuple[Path, Path | None]:
    """The training config (and data root) of a model: given, recorded by training, or beside it.

    Training records the original config in ``training.json`` beside the model; the original is
    preferred to the copy because its relative dataset paths resolve from its own folder.
    """
    if config is not None:
        return config, data_root
    record = model_path.parent / "training.json"
    if record.is_file():
        try:
            rec = json.loads(record.read_text())
            if Path(rec["config"]).is_file():
                root = data_root or (Path(rec["data_root"]) if rec.get("data_root") else None)
                return Path(rec["config"]), root
        except (ValueError, KeyError, TypeError, OSError):
            log.warning(f"{record}: unreadable training record; using the config copy beside the model")
    beside = model_path.parent / CONFIG_FILENAME
    if beside.is_file():
        return beside, data_root
    raise FlexunetError(f"{model_path}: no train_eval_infer.config beside the model; pass --config CONFIG "
                        "(it defines pre-processing, classes and colours stored in the export)")


def _check_model_matches(model, info: ModelInfo, model_path: Path, cfg_path: Path) -> None:
    shape = tuple(model.input_shape[1:])
    out = tuple(model.output_shape[1:])
    problems = []
    if shape[2] != info.channels:
        problems.append(f"{shape[2]} input channels vs {info.channels}")
    fixed = info.height is not None and info.width is not None
    if fixed and (shape[0] not in (None, info.height) or shape[1] not in (None, info.width)):
        problems.append(f"input {shape[0]}x{shape[1]} vs {info.height}x{info.width}")
    if out[-1] != info.num_classes:
        problems.append(f"{out[-1]} output channels vs num_classes {info.num_classes}")
    if problems:
        raise ModelError(f"{model_path}: does not match {cfg_path}: " + "; ".join(problems))


def run_export(model_path: Path, opts: ExportOptions) -> dict:
    """Export, verify and write all requested artifacts; returns the report."""
    from flexunet.runtime.backends.keras import load_keras_model

    from flexunet.export import cpu
    from flexunet.export import tiles

    t_start = time.perf_counter()
    model_path = Path(model_path)
    out = Path(opts.out_dir)
    if not model_path.is_file():
        raise ModelError(f"{model_path}: no such model file")
    if opts.trt:
        from flexunet.export.tensorrt import check_available

        reason = check_available()
        if reason:
            raise MissingDependencyError(f"--trt {opts.trt}: {reason}")
    if opts.int8 and opts.calibration_images is None:
        raise FlexunetError("--int8 needs --calibration-images DIR (real images to calibrate on)")
    # --trt int8 calibrates on the same tiles, or on its calibration cache alone
    calibrate = opts.int8 or (opts.trt == "int8" and opts.calibration_images is not None)
    ox.require_writable(out)

    cfg_path, data_root = find_config(model_path, opts.config, opts.data_root)
    cfg = load_config(cfg_path, data_root=data_root)
    model = load_keras_model(model_path)
    info = ModelInfo.from_config(cfg, dynamic_size=opts.dynamic_size)
    _check_model_matches(model, info, model_path, cfg_path)
    info.keras_weights_sha256 = ox.keras_weights_sha256(model)
    info.versions = library_versions()

    calib = check = None
    if calibrate:  # read calibration data before any long work: a bad folder fails fast
        tune = opts.int8 and opts.int8_target_dice > 0
        calib = tiles.calibration_tiles(opts.calibration_images, info,
                                        opts.calibration_count + (INT8_CHECK_TILES if tune else 0))
        if tune:
            calib, check = tiles.hold_out(calib, INT8_CHECK_TILES, keep=opts.calibration_count)
            check = check if len(check) else None
    verify, verify_source = tiles.verification_tiles(cfg, info, opts.verify_tiles)
    report: dict = {
        "keras_model": str(model_path), "config": str(cfg_path), "parameters": int(model.count_params()),
        "keras_weights_sha256": info.keras_weights_sha256, "versions": info.versions,
        "verification_tiles": {"count": int(len(verify)), "source": verify_source,
                               "shape": list(verify.shape[1:])},
        "artifacts": {},
    }
    keras_probs, t_keras = ox.timed(ox.keras_predict, model, verify)

    with tempfile.TemporaryDirectory(prefix=".export-", suffix=".part", dir=out) as tmpname:
        tmp = Path(tmpname)
        # FP32 ONNX
        _, t_conv = ox.timed(ox.convert, model, tmp / "model.onnx", info, opts.opset)
        onnx_probs = ox.onnx_predict(tmp / "model.onnx", verify)
        a = compare(keras_probs, onnx_probs, info.threshold)
        ox.check_fp32(a, "model.onnx")
        report["artifacts"]["model.onnx"] = {"precision": "fp32", "opset": opts.opset,
                                             "seconds": round(t_conv, 2), "bytes": ox.file_size(tmp / "model.onnx"),
                                             "vs_keras": a.to_dict()}
        names = ["model.onnx", "model.onnx.data"]

        if opts.optimize:
            _, t = ox.timed(cpu.optimize, tmp / "model.onnx", tmp / "model.opt.onnx")
            a = compare(keras_probs, ox.onnx_predict(tmp / "model.opt.onnx", verify))
            ox.check_fp32(a, "model.opt.onnx")
            report["artifacts"]["model.opt.onnx"] = {"precision": "fp32", "seconds": round(t, 2),
                                                     "bytes": ox.file_size(tmp / "model.opt.onnx"),
                                                     "vs_keras": a.to_dict()}
            names.append("model.opt.onnx")

        if opts.int8:
            bits = cpu.int8_weight_bits(opts.int8_weights)
            tuning = None
            if check is None:
                _, t = ox.timed(cpu.quantize_int8, tmp / "model.onnx", tmp / "model.int8.onnx", calib,
                                info.input_name, weight_bits=bits)
            else:
                tuning, t = ox.timed(cpu.tune_int8, tmp / "model.onnx", tmp / "model.int8.onnx", calib, check,
                                     info.input_name, threshold=info.threshold, target_dice=opts.int8_target_dice,
                                     weight_bits=bits, max_float=opts.int8_max_float,
                                     max_float_share=opts.int8_max_float_share, progress=log.info)
            int8_probs = ox.onnx_predict(tmp / "model.int8.onnx", verify)
            vs_fp32 = compare(onnx_probs, int8_probs, info.threshold)
            vs_keras = compare(keras_probs, int8_probs, info.threshold)
            report["artifacts"]["model.int8.onnx"] = {
                "precision": "int8", "seconds": round(t, 2), "bytes": ox.file_size(tmp / "model.int8.onnx"),
                "calibration": {"images": [str(p) for p in opts.calibration_images]
                                if isinstance(opts.calibration_images, (list, tuple))
                                else str(opts.calibration_images), "tiles": int(len(calib))},
                "weight_bits": bits, "cpu_has_vnni": cpu_has_vnni(),
                "float_convolutions": tuning.float_nodes if tuning else [],
                "tuning": tuning.to_dict() if tuning else None,
                "vs_fp32": vs_fp32.to_dict(), "vs_keras": vs_keras.to_dict()}
            if vs_fp32.dice < opts.int8_min_dice:
                raise VerificationError(
                    f"model.int8.onnx: mask dice vs FP32 {vs_fp32.dice:.4f} is below {opts.int8_min_dice} "
                    "(more or more representative --calibration-images may help); not written")
            names.append("model.int8.onnx")

        if opts.trt:
            from flexunet.export.tensorrt import build_engine

            engine = f"model.{opts.trt}.engine"
            r = build_engine(tmp / "model.onnx", tmp / engine, precision=opts.trt,
                             min_batch=opts.min_batch, opt_batch=opts.opt_batch, max_batch=opts.max_batch,
                             calibration_tiles=calib, calibration_cache=out / "calibration.cache",
                             timing_cache=out / "timing.cache", info=info)
            report["artifacts"][engine] = r
            names += [engine, engine + ".json"]

        moved = ox.move_into_place(tmp, out, names)

    if opts.triton_repo is not None:
        from flexunet.export.triton import write_repository

        plan = out / f"model.{opts.trt}.engine" if opts.trt else None
        repo = write_repository(opts.triton_repo, "flexunet_unet", info,
                                onnx_path=out / "model.onnx", plan_path=plan, max_batch_size=opts.max_batch)
        report["triton_repository"] = str(repo)

    report["keras_seconds_for_verification"] = round(t_keras, 2)
    report["total_seconds"] = round(time.perf_counter() - t_start, 2)
    report["written"] = [str(p) for p in moved]
    write_text(out / "export_report.json", json.dumps(report, indent=2) + "\n")
    return report
