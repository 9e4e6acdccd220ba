"""The reports of a parity run (:class:`~flexunet.runtime.parity.ParityReport`): parity.json
(:func:`report_dict`), parity.md (:func:`report_markdown`) and worst.png (each candidate's row of
the disagreement figure), written together by :func:`write_reports`."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from flexunet.core.atomic import write_text
from flexunet.core.imageio import write_image
from flexunet.runtime.disagreement_figure import DIFF_LEGEND, stack_rows
from flexunet.runtime.measure import flexunet_version
from flexunet.runtime.parity import CandidateResult, ParityReport

CONVENTIONS = ("dice/IoU: both masks empty -> 1.0, one empty -> 0.0; binary models scored on the foreground, "
               "multiclass on the mean over foreground classes; overall figures pooled over all pixels of all images")


def verdict_fields(c: CandidateResult) -> dict:
    """The verdict of a candidate beyond pass/fail: the rule that decided and why, agreement (always
    reported) and retention (with ground truth)."""
    v = c.verdict
    if v is None:
        return {"rule": "agreement", "why": "", "agreement": "pass" if c.passed else "fail",
                "agreement_failures": list(c.failures), "retention": None}
    return {k: value for k, value in v.to_dict().items() if k not in ("verdict", "failures")}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def candidate_summary(c: CandidateResult) -> dict:
    """One candidate's entry of parity.json: tolerance, pooled figures, worst image, verdict and the
    rule that decided it."""
    worst = c.worst or {}
    return {
        "model": str(c.spec), "backend": c.backend, "precision": c.precision,
        "tolerance": {"min_dice": c.tolerance.min_dice, "max_abs_diff": c.tolerance.max_abs_diff,
                      "per_image": c.tolerance.per_image, "source": c.tolerance.source},
        "overall": {
            "dice": c.pooled.dice, "iou": c.pooled.iou, "per_class_dice": c.pooled.per_class_dice,
            "flipped_fraction": c.pooled.flipped_fraction, "flipped_pixels": c.pooled.flipped,
            "pixels": c.pooled.pixels, "max_abs_diff": c.diff.max, "mean_abs_diff": c.diff.mean,
            "worst_image": worst.get("image"), "worst_image_dice": worst.get("dice"),
            "dice_vs_truth": c.truth.dice if c.truth is not None else None,
            "per_class_dice_vs_truth": c.truth.per_class_dice if c.truth is not None else None,
        },
        "verdict": "pass" if c.passed else "fail",
        "failures": list(c.failures),
        **verdict_fields(c),
    }


def report_dict(report: ParityReport) -> dict:
    """parity.json's content (without its ``files`` entry)."""
    ref_truth = report.reference_truth
    return {
        "tool": "flexunet parity", "flexunet_version": flexunet_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(report.seconds, 3),
        "reference": {"model": str(report.reference), "backend": report.reference_backend,
                      "precision": report.reference_precision,
                      "dice_vs_truth": ref_truth.dice if ref_truth else None,
                      "per_class_dice_vs_truth": ref_truth.per_class_dice if ref_truth else None},
        "layout": report.layout,
        "conventions": CONVENTIONS,
        "images": {"total": report.total_images, "compared": len(report.images),
                   "skipped": [{"path": p, "reason": r} for p, r in report.skipped]},
        "truth": None if report.masks_dir is None else {
            "masks_dir": report.masks_dir, "found": len(report.images) - len(report.truth_missing),
            "missing": list(report.truth_missing)},
        "candidates": [candidate_summary(c) for c in report.candidates],
        "per_image": report.images,
        "passed": report.failed == 0,
        "exit_code": report.exit_code,
    }


def _fmt(value: float | None, missing: str = "—") -> str:
    return missing if value is None else f"{value:.6f}"


def _overall_table(report: ParityReport) -> list[str]:
    na = "—" if report.masks_dir is None else "n/a"  # no masks asked for / none could be scored
    ref_truth = _fmt(report.reference_truth.dice if report.reference_truth else None, na)
    lines = [
        "| model | precision | pooled dice vs ref | IoU vs ref | worst image (dice) | max \\|Δp\\| | "
        "mean \\|Δp\\| | flipped % | dice vs truth | retention | min dice | rule | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| reference `{report.reference.label}` | {report.reference_precision} | — | — | — | — | — | — | "
        f"{ref_truth} | — | — | — | — |",
    ]
    for c in report.candidates:
        s = candidate_summary(c)["overall"]
        worst = f"{s['worst_image']} ({_fmt(s['worst_image_dice'])})" if s["worst_image"] else "—"
        lines.append(
            f"| `{c.spec.label}` | {c.precision} | {_fmt(s['dice'])} | {_fmt(s['iou'])} | {worst} | "
            f"{s['max_abs_diff']:.3g} | {s['mean_abs_diff']:.3g} | {100 * s['flipped_fraction']:.4f} | "
            f"{_fmt(s['dice_vs_truth'], na)} | {_pct(verdict_fields(c)['retention'])} | {c.tolerance.min_dice} | "
            f"{verdict_fields(c)['rule']} | {'**pass**' if c.passed else '**FAIL**'} |")
    return lines


def _per_image_table(report: ParityReport) -> list[str]:
    lines = ["| image | model | dice vs ref | IoU vs ref | max \\|Δp\\| | mean \\|Δp\\| | flipped % | dice vs truth |",
             "|---|---|---|---|---|---|---|---|"]
    for rec in report.images:
        if rec.get("reference_dice_vs_truth") is not None:
            lines.append(f"| {rec['image']} | reference | — | — | — | — | — | "
                         f"{_fmt(rec['reference_dice_vs_truth'])} |")
        for c in rec["candidates"]:
            lines.append(f"| {rec['image']} | `{c['label']}` | {_fmt(c['dice'])} | {_fmt(c['iou'])} | "
                         f"{c['max_abs_diff']:.3g} | {c['mean_abs_diff']:.3g} | "
                         f"{100 * c['flipped_fraction']:.4f} | {_fmt(c['dice_vs_truth'])} |")
    return lines


def report_markdown(report: ParityReport) -> str:
    """parity.md: the overall table, why each failing candidate fails, and the per-image table."""
    lay = report.layout
    tiling = ("whole image" if lay["tile"] is None else
              f"tiles fitted to each image, overlap {lay['overlap']}, {lay['blend']} blend" if lay["tile"] == "fit" else
              f"tiles {lay['tile'][0]}x{lay['tile'][1]}, overlap {lay['overlap']}, {lay['blend']} blend")
    lines = [
        "# Parity report", "",
        f"Reference `{report.reference}` ({report.reference_backend}, {report.reference_precision}); "
        f"{tiling}, batch {lay['batch_size']}, the same for every model.",
        f"Images: {len(report.images)} compared of {report.total_images}"
        + (f", {len(report.skipped)} skipped" if report.skipped else "") + ".",
        "Dice and IoU: binary models on the foreground, multiclass on the mean over foreground "
        "classes; both masks empty counts as 1.0. Overall figures are pooled over all pixels.", "",
    ]
    lines += _overall_table(report)
    lines += ["", "Verdicts: agreement with the reference (the tolerance table) decides, except for a BF16/FP16/INT8 "
                  "candidate with ground truth: accuracy retention (dice vs truth >= --min-retention, 99% by "
                  "default, of the reference's: the MLPerf rule; 99.9% reported). Agreement is reported for every "
                  "candidate."]
    for c in report.candidates:
        f = verdict_fields(c)
        lines.append(f"- `{c.spec.label}`: {f['rule']} decided ({f['why']}); agreement {f['agreement']}"
                     + (f" ({'; '.join(f['agreement_failures'])})" if f["agreement_failures"] else "")
                     + (f", retention {_pct(f['retention'])} (99.9%: {'yes' if f.get('retains_99_9') else 'no'})"
                        if f["retention"] is not None else ""))
        lines += [f"\n`{c.spec.label}` fails: {reason}" for reason in c.failures]
    missing = report.truth_missing
    if missing:
        lines.append(f"\nNo ground truth for {len(missing)} image(s): "
                     + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    if report.skipped:
        lines += ["", "Skipped:"] + [f"- {reason}" for _, reason in report.skipped]
    lines += ["", "## Per image", ""] + _per_image_table(report)
    lines += ["", "`worst.png`: each candidate's worst image: input | reference mask | candidate mask | "
                  f"differences ({DIFF_LEGEND}).", ""]
    return "\n".join(lines)


def worst_figure(report: ParityReport) -> np.ndarray | None:
    """worst.png as a BGR array: one row per candidate (None when no image was compared)."""
    rows = [c.worst_row for c in report.candidates if c.worst_row is not None]
    return stack_rows(rows) if rows else None


def write_reports(report: ParityReport, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write parity.json, parity.md and worst.png into ``out_dir`` (each atomically)."""
    out = Path(out_dir)
    files = {"json": out / "parity.json", "markdown": out / "parity.md", "worst_png": out / "worst.png"}
    data = report_dict(report)
    data["files"] = {k: str(v) for k, v in files.items()}
    write_text(files["json"], json.dumps(data, indent=2) + "\n")
    write_text(files["markdown"], report_markdown(report))
    figure = worst_figure(report)
    if figure is not None:
        write_image(files["worst_png"], figure)
    return files
