"""``flexunet export`` command (TensorFlow is imported only when it runs)."""
from __future__ import annotations

from pathlib import Path

import click

from flexunet.core.console import handle_errors, import_tensorflow_quietly
from flexunet.core.compare import TOLERANCES
from flexunet.core.errors import EXIT_CODES_HELP
from flexunet.export.int8_search import MAX_FLOAT_SHARE

INT8_DICE = TOLERANCES["int8"].min_dice


@click.command("export", epilog=EXIT_CODES_HELP)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Output folder for the artifacts and export_report.json.")
@click.option("--config", type=click.Path(path_type=Path), default=None,
              help="Training config (default: train_eval_infer.config beside MODEL).")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Re-root the config's dataset paths (verification uses its real images).")
@click.option("--dynamic-size", is_flag=True, help="Accept any input size that is a multiple of 2**(num_layers-1).")
@click.option("--opset", type=click.IntRange(17, 21), default=17, show_default=True)
@click.option("--optimize", is_flag=True, help="Also write model.opt.onnx (ONNX Runtime graph optimisations).")
@click.option("--int8", is_flag=True, help="Also write model.int8.onnx (static QDQ quantisation).")
@click.option("--calibration-images", type=click.Path(path_type=Path), default=None,
              help="Folder of real images whose tiles calibrate INT8 (ONNX and TensorRT).")
@click.option("--calibration-masks", type=click.Path(path_type=Path), default=None,
              help="Ground-truth masks of the calibration images (named like them): the INT8 search then "
                   "judges its held-out calibration tiles by accuracy retention (dice vs truth >= 99% of "
                   "FP32's) instead of agreement with FP32, and that verdict decides the INT8 model.")
@click.option("--calibration-count", type=click.IntRange(1), default=64, show_default=True,
              help="Number of calibration tiles.")
@click.option("--int8-min-dice", type=click.FloatRange(0, 1), default=INT8_DICE,
              help="Refuse an INT8 model (ONNX or TensorRT engine) whose mask dice against the FP32 model is "
                   f"lower [default: the int8 tolerance, {INT8_DICE}].")
@click.option("--int8-target-dice", type=click.FloatRange(0, 1), default=INT8_DICE,
              help="Mixed precision: keep convolutions in FP32, most dice gained per estimated cost first, "
                   "until INT8 agrees with FP32 at this mask dice on calibration tiles held out of "
                   "calibration (within --int8-max-float and --int8-max-float-share); 0 quantises every "
                   f"convolution [default: the int8 tolerance, {INT8_DICE}].")
@click.option("--int8-max-float", type=click.IntRange(0), default=8, show_default=True,
              help="Most convolutions the mixed-precision search may keep in FP32.")
@click.option("--int8-max-float-share", type=click.FloatRange(0, 1), default=MAX_FLOAT_SHARE,
              show_default=True,
              help="Largest estimated FP32 cost the search may keep, as a share of the model's "
                   "multiply-adds (about that share of the FP32 model's time).")
@click.option("--int8-weights", type=click.Choice(["auto", "7", "8"]), default="auto", show_default=True,
              help="INT8 weight range: 8 bits, or 7 bits for CPUs without VNNI (whose kernels saturate "
                   "with 8-bit weights); auto picks by this machine's CPU.")
@click.option("--trt", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Build a TensorRT engine (needs TensorRT and a CUDA GPU), verified like the ONNX models.")
@click.option("--min-batch", type=click.IntRange(1), default=1, show_default=True)
@click.option("--opt-batch", type=click.IntRange(1), default=4, show_default=True)
@click.option("--max-batch", type=click.IntRange(1), default=8, show_default=True)
@click.option("--triton-repo", type=click.Path(path_type=Path), default=None,
              help="Also write a Triton model repository here.")
@click.option("--mpp", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Microns per pixel of the training images, recorded in the metadata (whole slides are "
                   "read at this resolution).")
@handle_errors
def export_cmd(model, out_dir, config, data_root, dynamic_size, opset, optimize, int8, calibration_images,
               calibration_masks, calibration_count, int8_min_dice, int8_target_dice, int8_max_float,
               int8_max_float_share,
               int8_weights, trt, min_batch, opt_batch, max_batch, triton_repo, mpp):
    """Export MODEL (.keras) to ONNX with metadata, verified against Keras; optionally optimised and
    INT8 ONNX, a TensorRT engine and a Triton repository."""
    from flexunet.export.exporter import ExportOptions, check_options, run_export

    opts = ExportOptions(out_dir=out_dir, config=config, data_root=data_root, dynamic_size=dynamic_size,
                         opset=opset, optimize=optimize, int8=int8, calibration_images=calibration_images,
                         calibration_masks=calibration_masks,
                         calibration_count=calibration_count, int8_min_dice=int8_min_dice,
                         int8_target_dice=int8_target_dice, int8_max_float=int8_max_float,
                         int8_max_float_share=int8_max_float_share,
                         int8_weights=int8_weights, trt=trt,
                         min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, triton_repo=triton_repo,
                         mpp=mpp)
    check_options(model, opts)  # a refused command says so before TensorFlow's slow import
    import_tensorflow_quietly()
    report = run_export(model, opts)
    for name, a in report["artifacts"].items():
        figures = a.get("vs_fp32") or a.get("vs_keras") or {}
        ref = "FP32" if "vs_fp32" in a else "Keras"
        line = f"  {name:<18} {a.get('bytes', 0) / 1e6:8.1f} MB"
        if figures:
            line += f"  vs {ref}: max|Δp| {figures['max_abs_diff']:.2e}  dice {figures['dice']:.5f}"
        click.echo(line)
        if a.get("float_convolutions"):
            click.echo(f"  {'':<18} mixed precision: {len(a['float_convolutions'])} convolution(s) kept in FP32 "
                       f"({100 * a['tuning']['float_share']:.1f}% of multiply-adds)")
        if a.get("tuning"):
            click.echo(f"  {'':<18} {int8_rule_line(a['tuning'])}")
        shortfall = int8_shortfall(name, a.get("tuning"))
        if shortfall:
            click.echo(f"warning: {shortfall}", err=True)
    if "triton_repository" in report:
        click.echo(f"  triton repository: {report['triton_repository']}")
    click.echo(f"verified on {report['verification_tiles']['count']} tiles "
               f"({report['verification_tiles']['source']}); report: {out_dir}/export_report.json "
               f"({report['total_seconds']:.1f}s)")


def int8_rule_line(tuning: dict) -> str:
    """Which rule decided the INT8 search, and its figure."""
    if tuning.get("rule") == "retention":
        return (f"verdict by accuracy retention (calibration masks): {100 * tuning['retention']:.2f}% of FP32's "
                f"dice vs truth on {tuning['check_tiles']} held-out tiles (>= {100 * tuning['min_retention']:g}%: "
                f"{'pass' if tuning['passed'] else 'fail'})")
    return (f"verdict by agreement: mask dice vs FP32 {tuning['dice']:.4f} on {tuning['check_tiles']} held-out "
            f"tiles (target {tuning['target_dice']})")


def int8_shortfall(name: str, tuning: dict | None) -> str | None:
    """One line when the INT8 search ended below its target dice (None when it met it)."""
    if not tuning or tuning.get("rule") == "retention" or tuning["dice"] >= tuning["target_dice"]:
        return None
    return (f"{name}: the INT8 search reached mask dice {tuning['dice']:.4f} vs FP32 on {tuning['check_tiles']} "
            f"check tiles, below its target {tuning['target_dice']}, with at most "
            f"{100 * tuning['max_float_share']:.0f}% of multiply-adds in FP32 (--int8-max-float-share); "
            "check it with flexunet parity before use (benchmarks/weight_headroom.py shows whether any "
            "INT8 version of the model can pass)")
