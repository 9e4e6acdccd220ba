"""``flexunet export`` as a sequence: the options checked, the model and tiles read, one step per
artifact built and verified (:mod:`flexunet.export.steps`), everything renamed into place together.

Nothing is written before every option has been checked and the config, the Keras model and the
tiles have been read; the artifacts are then built in a temporary folder inside OUT and appear
together, with ``export_report.json``, or not at all (:mod:`flexunet.export.staging`).

Artifacts in OUT: ``model.onnx`` (FP32, metadata), optionally ``model.opt.onnx`` (ONNX Runtime
optimised), ``model.int8.onnx`` (static QDQ INT8), ``model.<precision>.engine`` (TensorRT) and a
Triton repository; ``export_report.json`` records figures, versions, sizes and times.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flexunet.core.compare import TOLERANCES
from flexunet.core.config import CONFIG_FILENAME, load_config
from flexunet.core.errors import FlexunetError, MissingDependencyError, ModelError, require_model_file
from flexunet.core.machine import library_versions
from flexunet.core.modelinfo import ModelInfo
from flexunet.export import tiles
from flexunet.export.int8_quantize import int8_weight_bits
from flexunet.export.int8_search import MAX_FLOAT_SHARE
from flexunet.export.onnx import DEFAULT_OPSET
from flexunet.export.staging import Staging, check_folder
from flexunet.export.steps import TRITON_MODEL, ExportContext, plan, timed, triton_repository
from flexunet.export.verify import keras_predict

INT8_MIN_DICE = TOLERANCES["int8"].min_dice
REPORT = "export_report.json"

log = logging.getLogger("flexunet")
#: Calibration-image tiles held out of calibration to check (and tune) INT8 against FP32.
INT8_CHECK_TILES = 16


@dataclass
class ExportOptions:
    """The options of one export: ``flexunet export``'s flags, with the same defaults (the INT8
    dice limits from :data:`~flexunet.core.compare.TOLERANCES`)."""

    out_dir: Path
    config: Path | None = None
    data_root: Path | None = None
    dynamic_size: bool = False
    opset: int = DEFAULT_OPSET
    optimize: bool = False
    int8: bool = False
    calibration_images: Path | list[Path] | None = None  # a folder, or image files
    calibration_masks: Path | None = None  # their ground-truth masks: the INT8 search by retention
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
    mpp: float | None = None  # microns per pixel of the training images, recorded in the metadata


def check_options(model_path: Path, opts: ExportOptions) -> None:
    """Refuse (one-line FlexunetError) what would make the export fail, before anything is read at
    length or written: a missing model, bad batch sizes, precision or weight bits, ``--trt``
    without TensorRT, INT8 without calibration images (or with a folder holding none), and
    output or Triton folders that cannot be written."""
    model_path = Path(model_path)
    require_model_file(model_path)
    if not 1 <= opts.min_batch <= opts.opt_batch <= opts.max_batch:
        raise FlexunetError("need 1 <= --min-batch <= --opt-batch <= --max-batch "
                            f"(got {opts.min_batch}, {opts.opt_batch}, {opts.max_batch})")
    if opts.int8:
        int8_weight_bits(opts.int8_weights)
    if opts.trt:
        _check_tensorrt(opts.trt)
    if opts.int8 and opts.calibration_images is None:
        raise FlexunetError("--int8 needs --calibration-images DIR (real images to calibrate on)")
    if _calibrates(opts):
        tiles.calibration_paths(opts.calibration_images)
    if opts.calibration_masks is not None:
        if not opts.int8:
            raise FlexunetError("--calibration-masks is for the INT8 search: give it with --int8")
        tiles.calibration_masks(opts.calibration_images, opts.calibration_masks)
    check_folder(opts.out_dir, "output folder")
    if opts.triton_repo is not None:
        check_folder(opts.triton_repo, "Triton repository")


def _check_tensorrt(precision: str) -> None:
    from flexunet.export.tensorrt import PRECISIONS, check_available

    if precision not in PRECISIONS:
        raise FlexunetError(f"--trt must be one of {', '.join(PRECISIONS)}, not {precision!r}")

    reason = check_available()
    if reason:
        raise MissingDependencyError(f"--trt {precision}: {reason}")


def _calibrates(opts: ExportOptions) -> bool:
    """INT8 ONNX calibrates on the calibration tiles; ``--trt int8`` on the same tiles when there
    are any (else on its calibration cache alone)."""
    return opts.int8 or (opts.trt == "int8" and opts.calibration_images is not None)


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
    if model_path.suffix.lower() == ".h5":  # a seed model: <project>/models/best_model.h5
        from flexunet.architectures.seed_h5 import find_seed_config

        return find_seed_config(model_path), data_root
    raise FlexunetError(f"{model_path}: no {CONFIG_FILENAME} beside the model; pass --config CONFIG "
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


def keras_weights_sha256(model) -> str:
    """sha256 over the model's weights (names, shapes and bytes), independent of file format."""
    h = hashlib.sha256()
    for w in model.weights:
        arr = np.ascontiguousarray(np.asarray(w.numpy() if hasattr(w, "numpy") else w))
        h.update(w.path.encode() if hasattr(w, "path") else b"")
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _calibration(opts: ExportOptions, info: ModelInfo) -> tiles.CalibrationSet | None:
    """The calibration tiles and the check tiles the INT8 search holds out of them, with their
    ground-truth label maps when ``calibration_masks`` is given (None when nothing calibrates)."""
    if not _calibrates(opts):
        return None
    tune = opts.int8 and opts.int8_target_dice > 0
    count = opts.calibration_count + (INT8_CHECK_TILES if tune else 0)
    truth = None
    if opts.calibration_masks is not None and tune:
        calib, truth = tiles.labelled_calibration_tiles(opts.calibration_images, opts.calibration_masks, info, count)
    else:
        calib = tiles.calibration_tiles(opts.calibration_images, info, count)
    if not tune:
        return tiles.CalibrationSet(calib)
    return tiles.split_calibration(calib, INT8_CHECK_TILES, keep=opts.calibration_count, truth=truth)


def read_inputs(model_path: Path, opts: ExportOptions) -> tuple[ExportContext, dict]:
    """Everything the steps read, and the head of the report: the config, the calibration tiles
    (read first: a bad folder fails fast), the Keras model checked against its config, the
    verification tiles and Keras's probabilities on them."""
    from flexunet.runtime.backends.keras import load_keras_model

    cfg_path, data_root = find_config(model_path, opts.config, opts.data_root)
    cfg = load_config(cfg_path, data_root=data_root)
    from flexunet.architectures import required_multiple

    info = ModelInfo.from_config(cfg, dynamic_size=opts.dynamic_size, multiple=required_multiple(cfg))
    calibration = _calibration(opts, info)
    model = load_keras_model(model_path, cfg=cfg)  # a seed .h5: rebuilt from cfg, weights loaded by layer
    _check_model_matches(model, info, model_path, cfg_path)
    info.keras_weights_sha256 = keras_weights_sha256(model)
    info.mpp = opts.mpp
    info.versions = library_versions()
    verify, verify_source = tiles.verification_tiles(cfg, info, opts.verify_tiles)
    keras_probs, t_keras = timed(keras_predict, model, verify)
    report = {
        "keras_model": str(model_path), "config": str(cfg_path), "parameters": int(model.count_params()),
        "keras_weights_sha256": info.keras_weights_sha256, "versions": info.versions,
        "verification_tiles": {"count": int(len(verify)), "source": verify_source, "shape": list(verify.shape[1:])},
        "artifacts": {}, "keras_seconds_for_verification": round(t_keras, 2),
    }
    return ExportContext(opts, model, info, verify, keras_probs, cfg=cfg,
                         **(vars(calibration) if calibration is not None else {})), report


def run_export(model_path: Path, opts: ExportOptions) -> dict:
    """Export, verify and write all requested artifacts, together or not at all; returns the report."""
    t_start = time.perf_counter()
    model_path = Path(model_path)
    check_options(model_path, opts)
    ctx, report = read_inputs(model_path, opts)
    steps = plan(opts)
    extra = [Path(opts.triton_repo)] if opts.triton_repo is not None else []
    with Staging(opts.out_dir, *extra) as staging:
        ctx.tmp, ctx.out = staging.tmp, staging.out
        for step in steps:
            entry = step.build(ctx, staging.tmp / step.artifact)
            (report["artifacts"] if step.files else report)[step.artifact] = entry  # "tiling": no file
        if opts.triton_repo is not None:
            folder = staging.replacing(Path(opts.triton_repo) / TRITON_MODEL)
            report["triton_repository"] = triton_repository(ctx, folder)
        names = [name for step in steps for name in step.files]
        report["written"] = [str(staging.out / n) for n in names if (staging.tmp / n).exists()]
        report["total_seconds"] = round(time.perf_counter() - t_start, 2)
        (staging.tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        staging.commit(names + [REPORT])
    return report
