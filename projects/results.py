"""A project run's results: results.json's content (:func:`project_results`), the results folder
(:func:`write_results`: results.json, results.md, comparison.png, the parity report and the training
curves), and one line per exported model that failed parity (:func:`parity_failures`)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from flexunet.core.atomic import atomic_dir
from flexunet.core.compare import mask_scores, num_labels
from flexunet.core.config import Config, class_names
from flexunet.core.imageio import read_image, write_image
from flexunet.projects.report import results_markdown
from flexunet.runtime.disagreement_figure import figure_row, label_colors, stack_rows
from flexunet.runtime.ground_truth import truth_labels
from flexunet.runtime.parity import ParityReport
from flexunet.runtime.parity_report import candidate_summary

COMPARISON_ROWS = 3  # held-out images in comparison.png
TRUTH_LEGEND = "red: missed (truth only), cyan: extra (prediction only), yellow: other class"

#: The seeds' published test figures for the full datasets (../shared/data/DATA.md).
PUBLISHED = {
    "IHC": "dice_coef 0.6397",
    "Clustered-Cervical-Cell": "dice_coef 0.8646",
    "TNBC": "binary_accuracy 0.9457",
    "Lizard": "dice_coef_multiclass 0.8807",
    "Tiled-MultipleMyeloma": "dice_coef 0.7115",
}

_EXPORT_FIELDS = ("precision", "bytes", "seconds", "vs_keras", "vs_fp32", "weight_bits", "float_convolutions",
                  "rule", "tuning")


def _parity_figures(parity: ParityReport) -> tuple[dict, dict]:
    """(candidates of parity.json by label: file name, with ``@backend`` when not ONNX Runtime's
    default; their figures kept in results.json, with the rule that decided each verdict)."""
    cands = {c.spec.label: candidate_summary(c) for c in parity.candidates}
    kept = {k: {"precision": c["precision"], "backend": c["backend"], "dice_vs_keras": c["overall"]["dice"],
                "iou_vs_keras": c["overall"]["iou"], "max_abs_diff": c["overall"]["max_abs_diff"],
                "flipped_fraction": c["overall"]["flipped_fraction"], "min_dice": c["tolerance"]["min_dice"],
                "dice_vs_truth": c["overall"]["dice_vs_truth"], "verdict": c["verdict"], "rule": c["rule"],
                "why": c["why"], "retention": c["retention"], "retains_99_9": c.get("retains_99_9"),
                "failures": c["failures"]} for k, c in cands.items()}
    return cands, kept


def project_results(name: str, cfg: Config, config_path: Path, data_root: Path | None, *, started: str,
                    training: dict | None, evaluation, export_report: dict, parity: ParityReport,
                    throughput: dict, train_images: int, test_images: list[Path],
                    step_seconds: dict[str, float], unavailable: dict[str, str] | None = None) -> dict:
    """results.json's content: the run's settings and every figure its steps measured
    (``unavailable``: the paths that cannot run on this machine, with the reason)."""
    cands, kept = _parity_figures(parity)
    per_class = None if evaluation.per_class is None else dict(zip(class_names(cfg), evaluation.per_class))
    ref_truth = parity.reference_truth
    m = cfg.model
    return {
        "project": name, "config": str(config_path), "data_root": str(data_root) if data_root else None,
        "started": started, "keras_weights_sha256": export_report["keras_weights_sha256"],
        "variant": "reduced" if cfg.path.parent.name == "reduced" else "seed",
        "published": PUBLISHED.get(name),
        "model": {"parameters": export_report["parameters"], "input": [m.image_height, m.image_width, m.image_channels],
                  "num_classes": m.num_classes, "base_filters": m.base_filters, "num_layers": m.num_layers,
                  "base_kernels": list(m.base_kernels)},
        "split": {"train_images": train_images, "held_out": [p.name for p in test_images]},
        "training": training,
        "evaluation": {"metrics": evaluation.metrics, "per_class_dice": per_class, "csv": str(evaluation.csv_path)},
        "tiled_dice_vs_truth": {"keras": ref_truth.dice if ref_truth else None,
                                "fp32": cands["model.onnx"]["overall"]["dice_vs_truth"],
                                "int8": cands["model.int8.onnx"]["overall"]["dice_vs_truth"]},
        "verdicts": {"reference": "keras", "masks": str(cfg.test.mask_datapath),
                     "rules": "FP32 by agreement with Keras; BF16/FP16/INT8 with ground truth by accuracy "
                              "retention (dice vs truth >= 99% of Keras's), else by agreement"},
        "export": {k: {f: v.get(f) for f in _EXPORT_FIELDS if f in v} for k, v in export_report["artifacts"].items()},
        "parity": {"passed": parity.failed == 0, "layout": parity.layout, "candidates": kept,
                   "unavailable": dict(unavailable or {})},
        "throughput": throughput,
        "step_seconds": step_seconds,
    }


def parity_failures(results: dict) -> list[str]:
    """One line per exported model that failed its parity check (none when all passed)."""
    folder = Path(results["config"]).parent
    out = []
    for name, c in results["parity"]["candidates"].items():
        if c["verdict"] == "pass":
            continue
        if c.get("rule") == "retention":
            line = (f"{name} fails parity: keeps {100 * c['retention']:.2f}% of Keras's dice vs truth, < 99% "
                    f"(accuracy retention decides) ({folder / 'results' / 'parity.md'})")
        else:
            line = (f"{name} fails parity: mask dice vs Keras {c['dice_vs_keras']:.4f} < {c['min_dice']} "
                    f"(agreement decides) ({folder / 'results' / 'parity.md'})")
        if c["precision"] == "int8":
            line += (f"; python benchmarks/weight_headroom.py --model {folder / 'export' / 'model.onnx'} "
                     "shows whether any INT8 version of this model can pass")
        out.append(line)
    return out


def comparison_figure(onnx: Path, pairs) -> np.ndarray | None:
    """input | ground truth | prediction (ONNX FP32) | differences, for the first held-out images."""
    from flexunet.runtime.segmenter import Segmenter

    rows = []
    with Segmenter(onnx) as seg:
        info = seg.info
        labels = num_labels(info.num_classes)
        colors = label_colors(info.class_colors, labels)
        for pair in pairs[:COMPARISON_ROWS]:
            image = read_image(pair.image)
            truth = truth_labels(pair.mask, info.num_classes, info.class_colors)
            pred = seg.segment(image).labels
            dice = mask_scores(truth, pred, labels)["dice"]
            rows.append(figure_row(image, truth, pred, colors,
                                   f"{pair.image.name}: input | ground truth | ONNX prediction | "
                                   f"differences  (dice {dice:.3f})", legend=TRUTH_LEGEND))
    return stack_rows(rows) if rows else None


def write_results(folder: Path, results: dict, cfg: Config, onnx: Path, test_pairs, parity_dir: Path) -> None:
    """Write the results folder as a whole: an earlier one stays intact until the new one is complete."""
    with atomic_dir(folder) as tmp:
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (tmp / "results.md").write_text(results_markdown(results) + "\n")
        figure = comparison_figure(onnx, test_pairs)
        if figure is not None:
            write_image(tmp / "comparison.png", figure)
        for src in (parity_dir / "parity.md", parity_dir / "worst.png", cfg.train.eval_dir / "train_metrics.png",
                    cfg.train.eval_dir / "train_losses.png"):
            if src.is_file():
                shutil.copyfile(src, tmp / src.name)
