"""The README's model table: Keras vs ONNX FP32 vs ONNX INT8 on the real 2560x1920 slides.

    python benchmarks/readme_table.py --keras projects/Tiled-MultipleMyeloma/reduced/models/best_model.keras \
        --data-root ../shared/data

Runs the commands a user would run, in this order: `flexunet export` (FP32 + INT8 calibrated on
the project's training slides), `flexunet parity` (Keras reference vs both ONNX models on the
held-out [test] slides, with ground truth), and `flexunet bench` for each model on all slides with
`--baseline seed` (the seed-style loop timed in the same run, so each ratio comes from one run).
Writes benchmarks/results/readme_table.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import write_results  # noqa: E402


def flexunet(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "flexunet", *[str(a) for a in args]]
    print("$ flexunet " + " ".join(str(a) for a in args), flush=True)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)


def split_folders(tmp: Path, train, test) -> tuple[Path, Path]:
    """Folders of hard links to the training (calibration) and held-out images, as a user would
    pass them to `flexunet export --calibration-images` and `flexunet parity`."""
    calib, held = tmp / "calibration", tmp / "test"
    for folder, pairs in ((calib, train), (held, test)):
        folder.mkdir()
        for p in pairs:
            os.link(p.image, folder / p.image.name)
    return calib, held


def measure(keras: Path, cfg_path: Path, root: Path | None, train, test, slides: Path,
            baseline_slides: int) -> tuple[dict, dict, dict, dict]:
    """Export, parity and one bench per model, as a user runs them (in a temporary folder):
    the models, export_report.json, parity.json and each model's bench.json."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        calib, held = split_folders(tmp, train, test)
        out = tmp / "export"
        r = flexunet("export", keras, "-o", out, "--config", cfg_path, "--data-root", root, "--int8",
                     "--calibration-images", calib, "--int8-min-dice", "0")
        if r.returncode:
            sys.exit(r.stderr)
        export_report = json.loads((out / "export_report.json").read_text())
        models = {"Keras": keras, "ONNX FP32": out / "model.onnx", "ONNX INT8": out / "model.int8.onnx"}
        flexunet("parity", held, "--reference", keras, "--candidate", models["ONNX FP32"],
                 "--candidate", models["ONNX INT8"], "--masks", test[0].mask.parent,
                 "--config", cfg_path, "-o", tmp / "parity")
        parity = json.loads((tmp / "parity" / "parity.json").read_text())
        bench = {}
        for name, model in models.items():
            report = tmp / f"bench_{name.replace(' ', '_')}"
            r = flexunet("bench", model, slides, "--batch-sizes", "4", "--repeat", "5", "--runs", "1",
                         "--baseline", "seed", "--keras", keras, "--baseline-slides", baseline_slides,
                         "--config", cfg_path, "-o", report)
            if r.returncode:
                sys.exit(r.stderr)
            bench[name] = json.loads((report / "bench.json").read_text())
    return models, export_report, parity, bench


def table(models: dict, parity: dict, bench: dict, held_out: int) -> tuple[list[dict], str]:
    """One row per model (speed from its bench run, agreement from the parity run) and the markdown."""
    ref = parity["reference"]
    cands = {Path(c["model"]).name: c for c in parity["candidates"]}
    rows = []
    for name, model in models.items():
        e2e, base = bench[name]["end_to_end"], bench[name]["baseline"]
        if name == "Keras":
            vs_keras, vs_truth, verdict = 1.0, ref.get("dice_vs_truth"), "reference"
        else:
            c = cands[Path(model).name]
            vs_keras, vs_truth, verdict = c["overall"]["dice"], c["overall"].get("dice_vs_truth"), c["verdict"]
        rows.append({"model": name, "slides_per_s": e2e["slides_per_s"], "ratio_vs_seed": base["ratio"],
                     "seed_slides_per_s": base["slides_per_s"], "dice_vs_keras": vs_keras,
                     "dice_vs_truth": vs_truth, "parity": verdict})
    md = ["| model | slides/s (16 slides, end to end) | vs seed-style loop (same run) | mask dice vs Keras "
          f"({held_out} held-out slides) | dice vs ground truth | parity verdict |", "|---|---|---|---|---|---|"]
    for r in rows:
        truth = f"{r['dice_vs_truth']:.4f}" if r["dice_vs_truth"] is not None else "–"
        md.append(f"| {r['model']} | {r['slides_per_s']:.3f} | {r['ratio_vs_seed']:.2f}x | "
                  f"{r['dice_vs_keras']:.4f} | {truth} | {r['parity']} |")
    return rows, "\n".join(md) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keras", type=Path, required=True)
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=None, help="default: the one training recorded")
    ap.add_argument("--baseline-slides", type=int, default=2)
    args = ap.parse_args(argv)

    from flexunet.core.config import load_config
    from flexunet.export.exporter import find_config
    from flexunet.train.dataset import split_pairs

    cfg_path, root = find_config(args.keras, args.config, args.data_root)
    cfg = load_config(cfg_path, data_root=root)
    train, test = split_pairs(cfg, "train"), split_pairs(cfg, "test")
    models, export_report, parity, bench = measure(args.keras, cfg_path, root, train, test,
                                                   cfg.train.image_datapath, args.baseline_slides)
    rows, text = table(models, parity, bench, len(test))
    print(text)
    write_results("readme_table", {"rows": rows, "parity": parity, "bench": bench,
                                   "export": export_report["artifacts"]}, text)


if __name__ == "__main__":
    main()
