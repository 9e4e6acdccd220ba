"""``flexunet parity``: do candidate models (ONNX, INT8, TensorRT, another backend) segment like
the reference?  The CLI of :func:`flexunet.runtime.parity.run_parity`; progress on stderr, a summary
on stdout, reports (:mod:`flexunet.runtime.parity_report`) in ``--report-dir``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from flexunet.core.compare import RETENTION, describe_defaults
from flexunet.core.console import handle_errors
from flexunet.core.tiling import BLEND_MODES
from flexunet.runtime.infer_cli import THREADS_HELP, TileSize
from flexunet.runtime.parity import run_parity
from flexunet.runtime.parity_report import candidate_summary, verdict_fields, write_reports

_DEFAULTS = describe_defaults()

EPILOG = (
    "Verdict: a candidate passes when its mask dice against the reference, pooled over all pixels of "
    f"all images, reaches its minimum and its max |dp| stays within its limit (by the precision in the model's "
    f"metadata: {_DEFAULTS}; --min-dice and --max-abs-diff replace them), with --per-image every "
    "image's dice too. With --masks, a BF16/FP16/INT8 candidate is judged by accuracy retention instead (the "
    "MLPerf rule): its dice vs truth must reach --min-retention (99%) of the reference's (99.9% is reported); "
    "agreement is still reported, and FP32 candidates stay judged by agreement (an FP32 mismatch is a bug). "
    "The report says which rule decided. "
    "Dice/IoU conventions: both masks empty -> 1.0, one empty -> 0.0; multiclass models are scored on "
    "the mean over foreground classes. "
    "Exit codes: 0 every candidate passes; 1 a candidate fails (takes precedence over 3); "
    "2 bad input (model, option, no readable image, a --masks folder with no mask named like an image); "
    "3 all pass but some images were unreadable "
    "and skipped; 130 interrupted."
)


@click.command("parity", epilog=EPILOG)
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--reference", "reference", required=True, metavar="MODEL[@BACKEND]",
              help="The reference model (.onnx, .keras, .engine); its tiling is used for every model.")
@click.option("--candidate", "candidates", required=True, multiple=True, metavar="MODEL[@BACKEND]",
              help="A model to compare with the reference (repeat for several). MODEL@BACKEND picks "
                   "the backend (a --backend name of flexunet infer), e.g. model.onnx@onnxruntime-cpu "
                   "or model.onnx@openvino-bf16.")
@click.option("--masks", "masks_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Ground-truth masks named like the images: adds each model's dice against the truth "
                   "(n/a when no mask could be scored).")
@click.option("-o", "--report-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("parity_report"),
              show_default=True, help="Folder for parity.json, parity.md and worst.png.")
@click.option("--min-dice", multiple=True, metavar="DICE|PRECISION=DICE",
              help=f"Minimum pooled dice vs the reference, for every candidate (0.99) or one precision "
                   f"(int8=0.98); repeatable [default: {_DEFAULTS}].")
@click.option("--max-abs-diff", type=click.FloatRange(min=0.0),
              help="Fail a candidate whose max |probability difference| exceeds this [default: by precision, see below].")
@click.option("--min-retention", type=click.FloatRange(0.0, 1.0), default=RETENTION, show_default=True,
              help="With --masks: share of the reference's dice vs truth a BF16/FP16/INT8 candidate must keep.")
@click.option("--per-image", is_flag=True, help="Also fail a candidate if any single image's dice is below its minimum.")
@click.option("--tile", type=TileSize(), help="Tile size N or HxW [default: the reference's].")
@click.option("--overlap", type=click.IntRange(min=0), help="Tile overlap in pixels [default: the reference's].")
@click.option("--blend", type=click.Choice(BLEND_MODES), help="Blending of overlapping tiles [default: the reference's].")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Tiles per batch.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0),
              help="Foreground threshold of binary models [default: each model's].")
@click.option("--threads", type=click.IntRange(min=1), help=THREADS_HELP)
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path),
              help="Training config of .keras models [default: the one beside each].")
@handle_errors
def parity_cmd(images, reference, candidates, masks_dir, report_dir, min_dice, max_abs_diff, min_retention, per_image,
               tile, overlap, blend, batch_size, threshold, threads, config):
    """Run the --reference and every --candidate model on IMAGES (files and folders) through the
    same tiling and compare: max and mean |dp|, mask dice and IoU against the reference, flipped
    pixels, and with --masks each model's dice against the ground truth.

    Writes REPORT_DIR/parity.json, parity.md and worst.png (each candidate's worst image: input,
    reference mask, candidate mask, differences).
    """
    report = run_parity(reference, candidates, images, masks_dir=masks_dir, tile=tile, overlap=overlap, blend=blend,
                        batch_size=batch_size, threshold=threshold, threads=threads, config=config,
                        min_dice=min_dice, max_abs_diff=max_abs_diff, per_image=per_image, min_retention=min_retention,
                        progress=lambda line: click.echo(line, err=True))
    files = write_reports(report, report_dir)
    click.echo(_summary(report))
    click.echo(f"reports: {files['json']}, {files['markdown']}, {files['worst_png']}")
    sys.exit(report.exit_code)


def _summary(report) -> str:
    lines = []
    scored = report.reference_truth is not None
    if report.masks_dir is not None:
        ref_truth = f"{report.reference_truth.dice:.6f}" if scored else "n/a (no ground-truth mask could be scored)"
        lines.append(f"reference {report.reference.label}: dice vs truth {ref_truth}")
    for c in report.candidates:
        s = candidate_summary(c)["overall"]
        truth = "" if report.masks_dir is None else \
            f", dice vs truth {s['dice_vs_truth']:.6f}" if scored else ", dice vs truth n/a"
        f = verdict_fields(c)
        kept = "" if f["retention"] is None else f", retention {100 * f['retention']:.2f}%"
        verdict = "PASS" if c.passed else "FAIL (" + "; ".join(c.failures) + ")"
        lines.append(f"{c.spec.label} [{c.precision}]: dice vs reference {s['dice']:.6f} "
                     f"(min {c.tolerance.min_dice}), IoU {s['iou']:.6f}, worst {s['worst_image']} "
                     f"{s['worst_image_dice']:.6f}, max |dp| {s['max_abs_diff']:.3g}, "
                     f"flipped {100 * s['flipped_fraction']:.4f}%{truth}{kept}: {verdict}")
        lines.append(f"  rule: {f['rule']} ({f['why']}); agreement {f['agreement']}"
                     + (f" ({'; '.join(f['agreement_failures'])})" if f["agreement_failures"] else ""))
    if report.skipped:
        lines.append(f"skipped {len(report.skipped)} unreadable image(s)")
        lines += [f"skipped: {reason}" for _, reason in report.skipped]
    return "\n".join(lines)
