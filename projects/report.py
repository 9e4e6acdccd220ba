"""Project results as markdown: one run's figures (results.md and the project README's block between
:data:`README_BEGIN` and :data:`README_END`), and the cross-project summary table between
:data:`SUMMARY_BEGIN` and :data:`SUMMARY_END` of a projects folder's README, built from the
``*/reduced/results/results.json`` files below it (``flexunet project --summary DIR``)."""
from __future__ import annotations

import json
from pathlib import Path

from flexunet.core.atomic import write_text
from flexunet.core.errors import FlexunetError

README_BEGIN = "<!-- flexunet project results -->"
README_END = "<!-- end of results -->"
SUMMARY_BEGIN = "<!-- flexunet projects summary -->"
SUMMARY_END = "<!-- end of summary -->"
SUMMARY_RESULTS = "*/reduced/results/results.json"


#: The measured paths of a project run besides Keras: (throughput key, parity candidate, name).
PATHS = (("onnx_fp32", "model.onnx", "ONNX Runtime FP32"), ("onnx_int8", "model.int8.onnx", "ONNX Runtime INT8"),
         ("openvino_fp32", "model.onnx@openvino", "OpenVINO FP32"),
         ("openvino_bf16", "model.onnx@openvino-bf16", "OpenVINO BF16"))
NOT_MEASURED = "not measured"


def _f(value, fmt=".4f") -> str:
    return "–" if value is None else format(value, fmt)


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _path(r: dict, key: str, label: str) -> tuple[dict | None, dict | None]:
    """A path's parity figures and throughput, or (None, None) when the run did not measure it."""
    c, s = r["parity"]["candidates"].get(label), r["throughput"].get(key)
    return (c, s) if c is not None and s is not None else (None, None)


def _why_not(r: dict, key: str) -> str:
    reason = r["parity"].get("unavailable", {}).get(key)
    return f"{NOT_MEASURED} ({reason})" if reason else NOT_MEASURED


def _training_line(t: dict) -> str:
    return (f"Training: {t['epochs_run']} epochs in {t['seconds'] / 60:.1f} min (best epoch "
            f"{t['best_epoch']}, val_loss {t['best_val_loss']:.4f}"
            + (f"; budget {t['max_minutes']:g} min" if t.get("max_minutes") else "") + ")"
            + (f"; the model trained in the run of {t['reused_from']}, reused with --skip-train."
               if t.get("reused_from") else "."))


def _figures_table(r: dict) -> list[str]:
    ev, p, s = r["evaluation"]["metrics"], r["parity"]["candidates"], r["throughput"]
    lines = ["| held-out figure | value |", "|---|---|"]
    lines += [f"| evaluate `{k}` (Keras, model-input samples) | {_f(v)} |" for k, v in ev.items()]
    lines += [f"| evaluate dice `{k}` | {_f(v)} |" for k, v in (r["evaluation"]["per_class_dice"] or {}).items()]
    td = r["tiled_dice_vs_truth"]
    lines.append(f"| tiled mask dice vs truth: Keras / ONNX FP32 / ONNX INT8 | {_f(td['keras'])} / "
                 f"{_f(td['fp32'])} / {_f(td['int8'])} |")
    lines.append(f"| seeds' published figure (full dataset and model) | {r['published'] or '–'} |")
    lines += ["", "| model | mask dice vs Keras | max \\|Δp\\| | flipped % | dice vs truth | retention | "
              "verdict (rule) | images/s |", "|---|---|---|---|---|---|---|---|",
              f"| Keras | reference | – | – | {_f(td['keras'])} | – | reference | "
              f"{_f(s['keras']['images_per_s'], '.2f')} |"]
    for key, label, name in PATHS:
        c, speed = _path(r, key, label)
        if c is None:
            lines.append(f"| {name} | {_why_not(r, key)} | | | | | | |")
            continue
        rule = c.get("rule") or f"agreement, min dice {c['min_dice']}"
        lines.append(f"| {name} | {_f(c['dice_vs_keras'], '.5f')} | {c['max_abs_diff']:.3g} | "
                     f"{100 * c['flipped_fraction']:.3f} | {_f(c.get('dice_vs_truth'))} | {_pct(c.get('retention'))} | "
                     f"{c['verdict']} ({rule}) | {_f(speed['images_per_s'], '.2f')} |")
    return lines


def _tuning_line(tuning: dict) -> str:
    return (f"\nINT8 mixed precision: {len(tuning['float_nodes'])} of {tuning['candidates']} convolutions kept in "
            f"FP32 ({100 * tuning.get('float_share', 0):.1f}% of multiply-adds): "
            f"{', '.join(tuning['float_nodes']) or 'none'}; "
            f"mask dice vs FP32 on {tuning['check_tiles']} held-out calibration "
            f"tiles {tuning['dice_all_int8']:.4f} all-INT8, {tuning['dice']:.4f} as exported"
            + (f"; verdict by accuracy retention (the tiles' masks): {_pct(tuning.get('retention_all_int8'))} "
               f"all-INT8, {_pct(tuning.get('retention'))} as exported (>= {100 * tuning['min_retention']:g}%)."
               if tuning.get("rule") == "retention" else
               f" (target {tuning['target_dice']}; verdict by agreement)."))


def results_markdown(r: dict) -> str:
    """The figures of one run as markdown (results.md and the README block)."""
    t, s = r["training"], r["throughput"]
    lines = [f"Run of `{r['config']}` ({r['variant']} variant) started {r['started']}: "
             f"{r['model']['parameters']:,} parameters, {r['split']['train_images']} training images, "
             f"{len(r['split']['held_out'])} held-out images.", ""]
    if t:
        lines.append(_training_line(t))
    lines += [""] + _figures_table(r)
    tuning = r["export"].get("model.int8.onnx", {}).get("tuning")
    if tuning:
        lines.append(_tuning_line(tuning))
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


def replace_block(text: str, begin: str, end: str, body: str) -> str | None:
    """``text`` with what lies between the markers ``begin`` and ``end`` replaced by ``body``;
    None when a marker is missing."""
    if begin not in text or end not in text:
        return None
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body.strip()}\n{end}{tail}"


def update_readme(readme: Path, results: dict, results_link: Path) -> bool:
    """Rewrite the results block of a project README (if it has the markers); ``results_link``
    is the results folder relative to the README."""
    if not readme.is_file():
        return False
    link = results_link.as_posix()
    body = (results_markdown(results) + "\n\n![input, ground truth, prediction, differences]"
            f"({link}/comparison.png)\n\nFull reports: `{link}/` (results.json, parity.md, "
            "worst.png, training curves).")
    text = replace_block(readme.read_text(), README_BEGIN, README_END, body)
    if text is None:
        return False
    write_text(readme, text)
    return True


def _summary_row(r: dict) -> str:
    ev = r["evaluation"]["metrics"]
    key = next((k for k in ("dice_coef_multiclass", "dice_coef", "mask_dice") if k in ev), None)
    c, s, t = r["parity"]["candidates"], r["throughput"], r["training"]
    trained = f"{t['seconds'] / 60:.1f} min" if t else "–"
    openvino = [_openvino_cell(r, key, label) for key, label, _ in PATHS[2:]]
    return (f"| [{r['project']}]({r['project']}/README.md) | {len(r['split']['held_out'])} | "
            f"{key or '–'} {_f(ev.get(key))} | {_f(r['tiled_dice_vs_truth']['keras'])} | "
            f"{_f(c['model.onnx']['dice_vs_keras'], '.5f')} | {_f(c['model.int8.onnx']['dice_vs_keras'], '.4f')} | "
            f"{'pass' if r['parity']['passed'] else 'FAIL'} | "
            f"{_f(s['keras']['images_per_s'], '.2f')} / {_f(s['onnx_fp32']['images_per_s'], '.2f')} / "
            f"{_f(s['onnx_int8']['images_per_s'], '.2f')} | {' | '.join(openvino)} | {trained} | "
            f"{r['published'] or '–'} |")


def _openvino_cell(r: dict, key: str, label: str) -> str:
    """images/s, verdict (rule), retention of an OpenVINO path; "not measured" when the run had none."""
    c, speed = _path(r, key, label)
    if c is None:
        return NOT_MEASURED
    return (f"{_f(speed['images_per_s'], '.2f')}, {c['verdict']} ({c.get('rule', 'agreement')}), "
            f"{_pct(c.get('retention'))}")


def summary_table(projects_dir: Path) -> str:
    """The per-dataset table of a projects folder's README, one row per
    ``<project>/reduced/results/results.json`` below ``projects_dir``.

    Raises:
        FlexunetError: no results below ``projects_dir``.
    """
    found = sorted(Path(projects_dir).glob(SUMMARY_RESULTS))
    if not found:
        raise FlexunetError(f"{projects_dir}: no {SUMMARY_RESULTS} below it; run flexunet project first")
    rows = ["| dataset | held-out | Keras held-out dice (evaluate) | tiled mask dice vs truth | ONNX FP32 dice vs Keras "
            "| ONNX INT8 dice vs Keras | parity | images/s Keras / FP32 / INT8 | OpenVINO FP32: images/s, verdict, "
            "retention | OpenVINO BF16: images/s, verdict, retention | training | seeds' published |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows += [_summary_row(json.loads(path.read_text())) for path in found]
    return "\n".join(rows)


def update_summary(projects_dir: Path) -> tuple[str, bool]:
    """Build the summary table of ``projects_dir`` and write it between the markers of its
    README.md (the only file written); returns the table and whether it was written (False: no
    README.md, or one without the markers)."""
    table = summary_table(projects_dir)
    readme = Path(projects_dir) / "README.md"
    if not readme.is_file():
        return table, False
    text = replace_block(readme.read_text(), SUMMARY_BEGIN, SUMMARY_END, table)
    if text is None:
        return table, False
    write_text(readme, text)
    return table, True
