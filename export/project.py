"""``flexunet project``: one dataset's whole chain on its real samples, with the commands a user runs.

    train -> evaluate -> export (FP32 + INT8) -> tiled inference on the held-out images
          -> parity of both ONNX models against Keras (with ground truth) -> throughput

Everything is written beside the config (``projects/<name>/reduced/`` for the CPU-sized variant):
``models/``, ``eval/``, ``evaluation.csv`` (training and evaluation, as the seeds name them),
``export/`` (ONNX artifacts and export_report.json), ``out/`` (masks of the held-out images),
``parity/`` and ``bench/`` (full reports), and ``results/``: the figures that are kept with the
project (results.json, results.md, comparison.png, parity.md, worst.png, training curves).  The
project's README block between :data:`README_BEGIN` and :data:`README_END` and the summary table in
``projects/README.md`` are rewritten from results.json files.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np

from flexunet.core.compare import mask_scores, num_labels
from flexunet.runtime import parity as par
from flexunet.core.atomic import atomic_dir, write_text
from flexunet.core.config import CONFIG_FILENAME, Config, class_names, load_config
from flexunet.core.errors import EXIT_FAILED, EXIT_OK, FlexunetError
from flexunet.core.imageio import read_image, write_image

README_BEGIN = "<!-- flexunet project results -->"
README_END = "<!-- end of results -->"
SUMMARY_BEGIN = "<!-- flexunet projects summary -->"
SUMMARY_END = "<!-- end of summary -->"
STEPS = ("train", "evaluate", "export", "infer", "parity", "bench")
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


def resolve_config(project: Path, config: Path | None = None) -> Path:
    """The config a project run uses: ``config`` if given, else the project's reduced variant.

    ``project`` is a project folder (``projects/IHC``) or a config file.
    """
    if config is not None:
        path = Path(config)
    elif Path(project).is_file():
        path = Path(project)
    else:
        path = Path(project) / "reduced" / CONFIG_FILENAME
        if not path.is_file():
            path = Path(project) / CONFIG_FILENAME
    if not path.is_file():
        raise FlexunetError(f"{path}: no such config (a project folder holds {CONFIG_FILENAME} "
                            f"and reduced/{CONFIG_FILENAME})")
    return path


def project_name(config_path: Path) -> str:
    """``IHC`` for ``projects/IHC/reduced/train_eval_infer.config`` and ``projects/IHC/train_eval_infer.config``."""
    folder = config_path.resolve().parent
    return folder.parent.name if folder.name == "reduced" else folder.name


def project_readme(config_path: Path) -> Path:
    folder = config_path.resolve().parent
    return (folder.parent if folder.name == "reduced" else folder) / "README.md"


def _pairs(cfg: Config):
    """Training and held-out pairs; a missing folder or file is one line naming it (exit 2)."""
    from flexunet.train.dataset import split_pairs

    train, test = split_pairs(cfg, "train"), split_pairs(cfg, "test")
    if not test:
        raise cfg.error("test", "image_datapath", "missing: a project run needs a held-out [test] split")
    if not train:
        raise cfg.error("train", "image_datapath", "missing: a project run trains on [train]")
    wanted = set(cfg.test.files or [])
    found = {p.image.name for p in test} | {p.image.stem for p in test}
    missing = sorted(w for w in wanted if w not in found)
    if missing:
        raise cfg.error("test", "files", f"{len(missing)} held-out file(s) not found in "
                        f"{cfg.test.image_datapath} with masks in {cfg.test.mask_datapath}: "
                        + ", ".join(missing[:5]))
    return train, test


class _Steps:
    """Numbered step headers with times, on stdout."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.times: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        k = STEPS.index(name) + 1
        self.say(f"[{k}/{len(STEPS)}] {name}")
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        self.times[name] = round(time.perf_counter() - t, 2)
        self.say(f"[{k}/{len(STEPS)}] {name}: done in {self.times[name]:.0f}s")
        return out


def run_project(config_path: Path, data_root: Path | None = None, *, skip_train: bool = False,
                epochs: int | None = None, say: Callable[[str], None] = print) -> tuple[dict, int]:
    """Run the chain for one config; returns results.json's content and the exit code (0 pass, 1 fail)."""
    from flexunet.runtime.segmenter import Segmenter
    from flexunet.train.evaluate import evaluate
    from flexunet.train.trainer import BEST_MODEL_FILE, train

    from flexunet.export.exporter import ExportOptions, run_export

    config_path = Path(config_path)
    cfg = load_config(config_path, data_root=data_root)
    name = project_name(config_path)
    base = cfg.path.parent
    train_pairs, test_pairs = _pairs(cfg)
    test_images = [p.image for p in test_pairs]
    masks_dir = cfg.test.mask_datapath
    model_path = cfg.train.model_dir / BEST_MODEL_FILE
    steps = _Steps(say)
    started = datetime.now().isoformat(timespec="seconds")
    say(f"project {name}: {config_path} ({len(train_pairs)} training images, {len(test_pairs)} held-out)")

    training = None
    if skip_train:
        if not model_path.is_file():
            raise FlexunetError(f"{model_path}: no trained model to reuse (run without --skip-train)")
        say(f"[1/{len(STEPS)}] train: skipped, reusing {model_path}")
    else:
        r = steps.run("train", train, cfg, epochs=epochs)
        if r.interrupted:
            raise KeyboardInterrupt
        training = {"seconds": round(r.seconds, 1), "epochs_run": r.epochs_run, "best_epoch": r.best_epoch,
                    "best_val_loss": r.best_val_loss, "max_minutes": cfg.train.max_minutes}

    ev = steps.run("evaluate", evaluate, cfg, model_path)
    export_dir = base / "export"
    report = steps.run("export", run_export, model_path, ExportOptions(
        out_dir=export_dir, config=cfg.path, data_root=data_root, int8=True,
        calibration_images=[p.image for p in train_pairs], int8_min_dice=0.0))
    onnx, int8 = export_dir / "model.onnx", export_dir / "model.int8.onnx"

    def infer():
        with Segmenter(onnx) as seg:
            return seg.segment_folder(test_images, base / "out", colorize=True, overlay=True)

    summary = steps.run("infer", infer)
    if summary.skipped:
        raise FlexunetError(f"{summary.skipped[0][0]}: {summary.skipped[0][1]}")

    def parity():
        rep = par.run_parity(model_path, [onnx, int8], test_images, masks_dir=masks_dir, config=cfg.path,
                             progress=say)
        par.write_reports(rep, base / "parity")
        return rep

    prep = steps.run("parity", parity)
    speed = steps.run("bench", _throughput, {"keras": model_path, "onnx_fp32": onnx, "onnx_int8": int8},
                      test_images, cfg.path, say)

    if training is None:
        training = _earlier_training(base / "results" / "results.json", report["keras_weights_sha256"])
    results = _results(name, cfg, config_path, data_root, started, training, ev, report, prep, speed,
                       len(train_pairs), test_images, steps.times)
    _write_results(base / "results", results, cfg, onnx, test_pairs, base / "parity")
    update_readme(project_readme(config_path), results)
    summary_path = Path(__file__).resolve().parents[1] / "projects" / "README.md"
    if config_path.resolve().is_relative_to(summary_path.parent):
        update_summary(summary_path)
    say(results_markdown(results))
    return results, (EXIT_OK if results["parity"]["passed"] else EXIT_FAILED)


def _earlier_training(results_json: Path, weights_sha256: str) -> dict | None:
    """With --skip-train: the training record of the earlier run that trained this very model
    (same Keras weights hash), marked as reused; None when there is none."""
    try:
        earlier = json.loads(results_json.read_text())
    except (OSError, ValueError):
        return None
    t = earlier.get("training")
    if not t or earlier.get("keras_weights_sha256") != weights_sha256:
        return None
    return {**t, "reused_from": t.get("reused_from") or earlier.get("started")}


def _throughput(models: dict[str, Path], images: list[Path], config: Path, say) -> dict:
    """Images per second end to end (decode to written mask) for each model, the seed-style loop
    timed in the same run as the FP32 ONNX model."""
    from flexunet.runtime.bench import run_bench

    out = {}
    for key, model in models.items():
        baseline = dict(baseline="seed", keras=models["keras"]) if key == "onnx_fp32" else {}
        data = run_bench(model, images, batch_sizes=(1, 4), repeat=5, warmup=2, runs=2, batch_size=4,
                         config=config, progress=say, **baseline)
        e2e = data["end_to_end"]
        out[key] = {"images_per_s": e2e["slides_per_s"], "tiles_per_s": e2e["tiles_per_s"],
                    "backend": data["model"].get("backend"), "peak_rss_bytes": e2e["peak_rss_bytes"]}
        if data["baseline"]:
            out[key]["seed_loop_images_per_s"] = data["baseline"]["slides_per_s"]
            out[key]["vs_seed_loop"] = data["baseline"]["ratio"]
    out["machine"] = data["machine"]
    return out


def parity_failures(results: dict) -> list[str]:
    """One line per exported model that failed its parity check (none when all passed)."""
    folder = Path(results["config"]).parent
    out = []
    for name, c in results["parity"]["candidates"].items():
        if c["verdict"] == "pass":
            continue
        line = (f"{name} fails parity: mask dice vs Keras {c['dice_vs_keras']:.4f} < {c['min_dice']} "
                f"({folder / 'results' / 'parity.md'})")
        if c["precision"] == "int8":
            line += (f"; python benchmarks/weight_headroom.py --model {folder / 'export' / 'model.onnx'} "
                     "shows whether any INT8 version of this model can pass")
        out.append(line)
    return out


def _results(name, cfg, config_path, data_root, started, training, ev, export_report, prep, speed,
             n_train, test_images, times) -> dict:
    cands = {Path(c["model"]).name: c for c in prep.to_dict()["candidates"]}
    per_class = None if ev.per_class is None else dict(zip(class_names(cfg), ev.per_class))
    ref_truth = prep.reference_truth
    return {
        "project": name, "config": str(config_path), "data_root": str(data_root) if data_root else None,
        "started": started, "keras_weights_sha256": export_report["keras_weights_sha256"],
        "variant": "reduced" if cfg.path.parent.name == "reduced" else "seed",
        "published": PUBLISHED.get(name),
        "model": {"parameters": export_report["parameters"], "input": [cfg.model.image_height, cfg.model.image_width,
                                                                       cfg.model.image_channels],
                  "num_classes": cfg.model.num_classes, "base_filters": cfg.model.base_filters,
                  "num_layers": cfg.model.num_layers, "base_kernels": list(cfg.model.base_kernels)},
        "split": {"train_images": n_train, "held_out": [p.name for p in test_images]},
        "training": training,
        "evaluation": {"metrics": ev.metrics, "per_class_dice": per_class, "csv": str(ev.csv_path)},
        "tiled_dice_vs_truth": {"keras": ref_truth.dice if ref_truth else None,
                                "fp32": cands["model.onnx"]["overall"]["dice_vs_truth"],
                                "int8": cands["model.int8.onnx"]["overall"]["dice_vs_truth"]},
        "export": {k: {kk: v.get(kk) for kk in ("precision", "bytes", "seconds", "vs_keras", "vs_fp32",
                                                "weight_bits", "float_convolutions", "tuning") if kk in v}
                   for k, v in export_report["artifacts"].items()},
        "parity": {"passed": prep.failed == 0, "layout": prep.layout,
                   "candidates": {k: {"precision": c["precision"], "dice_vs_keras": c["overall"]["dice"],
                                      "iou_vs_keras": c["overall"]["iou"],
                                      "max_abs_diff": c["overall"]["max_abs_diff"],
                                      "flipped_fraction": c["overall"]["flipped_fraction"],
                                      "min_dice": c["tolerance"]["min_dice"],
                                      "verdict": c["verdict"]} for k, c in cands.items()}},
        "throughput": speed,
        "step_seconds": times,
    }


def _comparison(cfg: Config, onnx: Path, pairs) -> np.ndarray | None:
    """input | ground truth | prediction (ONNX FP32) | differences, for the first held-out images."""
    from flexunet.runtime.segmenter import Segmenter

    rows = []
    with Segmenter(onnx) as seg:
        colors = list(seg.info.class_colors)
        labels = num_labels(seg.info.num_classes)
        colors += [(255, 255, 255)] * max(0, labels - len(colors))
        for pair in pairs[:COMPARISON_ROWS]:
            image = read_image(pair.image)
            truth = par.truth_labels(pair.mask, seg.info.num_classes, seg.info.class_colors)
            pred = seg.segment(image).labels
            dice = mask_scores(truth, pred, labels)["dice"]
            rows.append(par.figure_row(image, truth, pred, colors,
                                       f"{pair.image.name}: input | ground truth | ONNX prediction | "
                                       f"differences  (dice {dice:.3f})", legend=TRUTH_LEGEND))
    return par.stack_rows(rows) if rows else None


def _write_results(folder: Path, results: dict, cfg: Config, onnx: Path, test_pairs, parity_dir: Path) -> None:
    """Write the results folder as a whole: an earlier one stays intact until the new one is complete."""
    with atomic_dir(folder) as tmp:
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (tmp / "results.md").write_text(results_markdown(results) + "\n")
        figure = _comparison(cfg, onnx, test_pairs)
        if figure is not None:
            write_image(tmp / "comparison.png", figure)
        for src in (parity_dir / "parity.md", parity_dir / "worst.png", cfg.train.eval_dir / "train_metrics.png",
                    cfg.train.eval_dir / "train_losses.png"):
            if src.is_file():
                shutil.copyfile(src, tmp / src.name)


def _f(value, fmt=".4f") -> str:
    return "–" if value is None else format(value, fmt)


def results_markdown(r: dict) -> str:
    """The figures of one run as markdown (results.md and the README block)."""
    ev, t, p, s = r["evaluation"]["metrics"], r["training"], r["parity"]["candidates"], r["throughput"]
    lines = [f"Run of `{r['config']}` ({r['variant']} variant) started {r['started']}: "
             f"{r['model']['parameters']:,} parameters, {r['split']['train_images']} training images, "
             f"{len(r['split']['held_out'])} held-out images.", ""]
    if t:
        lines.append(f"Training: {t['epochs_run']} epochs in {t['seconds'] / 60:.1f} min (best epoch "
                     f"{t['best_epoch']}, val_loss {t['best_val_loss']:.4f}"
                     + (f"; budget {t['max_minutes']:g} min" if t.get("max_minutes") else "") + ")"
                     + (f"; the model trained in the run of {t['reused_from']}, reused with --skip-train."
                        if t.get("reused_from") else "."))
    lines += ["", "| held-out figure | value |", "|---|---|"]
    for k, v in ev.items():
        lines.append(f"| evaluate `{k}` (Keras, model-input samples) | {_f(v)} |")
    for k, v in (r["evaluation"]["per_class_dice"] or {}).items():
        lines.append(f"| evaluate dice `{k}` | {_f(v)} |")
    td = r["tiled_dice_vs_truth"]
    lines.append(f"| tiled mask dice vs truth: Keras / ONNX FP32 / ONNX INT8 | {_f(td['keras'])} / "
                 f"{_f(td['fp32'])} / {_f(td['int8'])} |")
    lines.append(f"| seeds' published figure (full dataset and model) | {r['published'] or '–'} |")
    lines += ["", "| model | mask dice vs Keras | max \\|Δp\\| | flipped % | parity (min dice) | images/s |",
              "|---|---|---|---|---|---|",
              f"| Keras | reference | – | – | – | {_f(s['keras']['images_per_s'], '.2f')} |"]
    for key, file in (("onnx_fp32", "model.onnx"), ("onnx_int8", "model.int8.onnx")):
        c = p[file]
        lines.append(f"| ONNX {c['precision'].upper()} | {_f(c['dice_vs_keras'], '.5f')} | {c['max_abs_diff']:.3g} | "
                     f"{100 * c['flipped_fraction']:.3f} | {c['verdict']} ({c['min_dice']}) | "
                     f"{_f(s[key]['images_per_s'], '.2f')} |")
    tuning = r["export"].get("model.int8.onnx", {}).get("tuning")
    if tuning:
        kept = len(tuning["float_nodes"])
        lines.append(f"\nINT8 mixed precision: {kept} of {tuning['candidates']} convolutions kept in FP32 "
                     f"({100 * tuning.get('float_share', 0):.1f}% of multiply-adds): "
                     f"{', '.join(tuning['float_nodes']) or 'none'}; "
                     f"mask dice vs FP32 on {tuning['check_tiles']} held-out calibration "
                     f"tiles {tuning['dice_all_int8']:.4f} all-INT8, {tuning['dice']:.4f} as exported "
                     f"(target {tuning['target_dice']}).")
    fp = s["onnx_fp32"]
    if fp.get("vs_seed_loop"):
        lines.append(f"\nSeed-style loop (per-tile Keras predict, batch 1) in the same run: "
                     f"{fp['seed_loop_images_per_s']:.2f} images/s; ONNX FP32 is {fp['vs_seed_loop']:.2f}x that.")
    lay = r["parity"]["layout"]
    lines.append(f"Tiling: {lay['tile'][0]}x{lay['tile'][1]} tiles, overlap {lay['overlap']}, {lay['blend']} blend, "
                 f"batch {lay['batch_size']}. Machine: {s['machine'].get('cpu', '?')}, "
                 f"{s['machine'].get('cores', '?')} cores. Step times (s): "
                 + ", ".join(f"{k} {v:.0f}" for k, v in r["step_seconds"].items()) + ".")
    return "\n".join(lines)


def _replace_block(text: str, begin: str, end: str, body: str) -> str | None:
    if begin not in text or end not in text:
        return None
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body.strip()}\n{end}{tail}"


def update_readme(readme: Path, results: dict) -> bool:
    """Rewrite the results block of a project README (if it has the markers)."""
    if not readme.is_file():
        return False
    body = (results_markdown(results) + "\n\n![input, ground truth, prediction, differences]"
            "(reduced/results/comparison.png)\n\nFull reports: `reduced/results/` (results.json, parity.md, "
            "worst.png, training curves).")
    if results["variant"] != "reduced":
        body = body.replace("reduced/results/", "results/")
    text = _replace_block(readme.read_text(), README_BEGIN, README_END, body)
    if text is None:
        return False
    write_text(readme, text)
    return True


def summary_table(projects_dir: Path) -> str:
    """The per-dataset table of projects/README.md, from every ``*/reduced/results/results.json``."""
    rows = ["| dataset | held-out | Keras held-out dice (evaluate) | tiled mask dice vs truth | ONNX FP32 dice vs Keras "
            "| ONNX INT8 dice vs Keras | parity | images/s Keras / FP32 / INT8 | training | seeds' published |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(projects_dir.glob("*/reduced/results/results.json")):
        r = json.loads(path.read_text())
        ev = r["evaluation"]["metrics"]
        key = next((k for k in ("dice_coef_multiclass", "dice_coef", "mask_dice") if k in ev), None)
        c, s, t = r["parity"]["candidates"], r["throughput"], r["training"]
        trained = f"{t['seconds'] / 60:.1f} min" if t else "–"
        rows.append(
            f"| [{r['project']}]({r['project']}/README.md) | {len(r['split']['held_out'])} | "
            f"{key or '–'} {_f(ev.get(key))} | {_f(r['tiled_dice_vs_truth']['keras'])} | "
            f"{_f(c['model.onnx']['dice_vs_keras'], '.5f')} | {_f(c['model.int8.onnx']['dice_vs_keras'], '.4f')} | "
            f"{'pass' if r['parity']['passed'] else 'FAIL'} | "
            f"{_f(s['keras']['images_per_s'], '.2f')} / {_f(s['onnx_fp32']['images_per_s'], '.2f')} / "
            f"{_f(s['onnx_int8']['images_per_s'], '.2f')} | "
            f"{trained} | "
            f"{r['published'] or '–'} |")
    return "\n".join(rows)


def update_summary(readme: Path) -> bool:
    if not readme.is_file():
        return False
    text = _replace_block(readme.read_text(), SUMMARY_BEGIN, SUMMARY_END, summary_table(readme.parent))
    if text is None:
        return False
    write_text(readme, text)
    return True
