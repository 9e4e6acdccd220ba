"""The GPU figures: ONNX Runtime CUDA vs TensorRT FP32 / FP16 / INT8 engines on the real slides.

    python benchmarks/gpu_table.py --keras projects/Tiled-MultipleMyeloma/reduced/models/best_model.keras \
        --data-root ../shared/data

Needs TensorRT and a CUDA GPU; elsewhere it says why in one line and exits 2, writing nothing.
Runs the commands a user would run: `flexunet export --trt fp32|fp16|int8` (INT8 calibrated on the
project's training slides, one timing cache shared by the builds, the INT8 engine kept whatever its
dice: parity judges it), `flexunet parity` (Keras reference vs the ONNX model on CUDA and the three
engines, on the held-out [test] slides with ground truth) and `flexunet bench` for each on all
slides with `--baseline seed`.  Writes benchmarks/results/gpu_table.{json,md} with the machine
description (GPU and TensorRT version from the engines' build records).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import write_results  # noqa: E402
from benchmarks.readme_table import flexunet, split_folders  # noqa: E402

PRECISIONS = ("fp32", "fp16", "int8")


def _parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keras", type=Path, required=True)
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=None, help="default: the one training recorded")
    ap.add_argument("--batch-sizes", default="1,4,8")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--baseline-slides", type=int, default=2)
    return ap.parse_args(argv)


def _engines(args, cfg_path, root, calib, out: Path) -> tuple[dict, dict, dict]:
    """Export one engine per precision: (models by name, backend by name, engine sidecars by precision)."""
    models, backends, builds = {}, {}, {}
    for precision in PRECISIONS:
        r = flexunet("export", args.keras, "-o", out, "--config", cfg_path, "--data-root", root,
                     "--trt", precision, "--calibration-images", calib, "--int8-min-dice", 0,
                     "--max-batch", args.max_batch, "--opt-batch", min(4, args.max_batch))
        if r.returncode:
            sys.exit(r.stderr)
        name = f"TensorRT {precision.upper()}"
        models[name], backends[name] = out / f"model.{precision}.engine", "tensorrt"
        builds[precision] = json.loads((out / f"model.{precision}.engine.json").read_text())
    models = {"ONNX Runtime CUDA FP32": out / "model.onnx", **models}
    backends["ONNX Runtime CUDA FP32"] = "onnxruntime-cuda"
    return models, backends, builds


def _bench_all(args, models: dict, backends: dict, images: Path, cfg_path, tmp: Path) -> dict:
    bench = {}
    for name, model in models.items():
        folder = tmp / f"bench_{name.replace(' ', '_')}"
        r = flexunet("bench", model, images, "--backend", backends[name],
                     "--batch-sizes", args.batch_sizes, "--repeat", "20", "--runs", "2",
                     "--baseline", "seed", "--keras", args.keras, "--baseline-slides", args.baseline_slides,
                     "--config", cfg_path, "-o", folder)
        if r.returncode:
            sys.exit(r.stderr)
        bench[name] = json.loads((folder / "bench.json").read_text())
    return bench


def _rows(models: dict, bench: dict, parity: dict) -> list[dict]:
    by_file = {}
    for c in parity["candidates"]:
        by_file.setdefault(Path(c["model"]).name, []).append(c)
    rows = []
    for name, model in models.items():
        b, c = bench[name], by_file[Path(model).name].pop(0)
        rows.append({"model": name, "slides_per_s": b["end_to_end"]["slides_per_s"],
                     "tiles_per_s": b["end_to_end"]["tiles_per_s"], "ratio_vs_seed": b["baseline"]["ratio"],
                     "latency": b.get("latency"), "dice_vs_keras": c["overall"]["dice"],
                     "dice_vs_truth": c["overall"].get("dice_vs_truth"), "parity": c["verdict"]})
    return rows


def _markdown(rows: list[dict], builds: dict) -> str:
    platform = next(iter(builds.values()))["platform"]
    gpu, trt = platform.get("gpu_name", "?"), platform.get("tensorrt_version", "?")
    md = [f"GPU: {gpu}; TensorRT {trt}", "",
          "| model | slides/s | tiles/s | vs seed-style loop (same run) | mask dice vs Keras | dice vs truth | parity |",
          "|---|---|---|---|---|---|---|"]
    for r_ in rows:
        truth = f"{r_['dice_vs_truth']:.4f}" if r_["dice_vs_truth"] is not None else "–"
        md.append(f"| {r_['model']} | {r_['slides_per_s']:.3f} | {r_['tiles_per_s']:.1f} | {r_['ratio_vs_seed']:.2f}x "
                  f"| {r_['dice_vs_keras']:.4f} | {truth} | {r_['parity']} |")
    return "\n".join(md) + "\n"


def main(argv=None):
    args = _parse_args(argv)
    from flexunet.runtime.backends.tensorrt_platform import check_available

    reason = check_available()
    if reason:
        print(f"gpu_table: {reason}; this benchmark needs TensorRT and a CUDA GPU", file=sys.stderr)
        sys.exit(2)

    from flexunet.core.config import load_config
    from flexunet.export.exporter import find_config
    from flexunet.train.dataset import split_pairs

    cfg_path, root = find_config(args.keras, args.config, args.data_root)
    cfg = load_config(cfg_path, data_root=root)
    train, test = split_pairs(cfg, "train"), split_pairs(cfg, "test")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        calib, held = split_folders(tmp, train, test)
        models, backends, builds = _engines(args, cfg_path, root, calib, tmp / "export")
        cands = [arg for model in models.values() for arg in ("--candidate", model)]
        flexunet("parity", held, "--reference", args.keras, *cands, "--masks", test[0].mask.parent,
                 "--config", cfg_path, "-o", tmp / "parity")
        parity = json.loads((tmp / "parity" / "parity.json").read_text())
        bench = _bench_all(args, models, backends, cfg.train.image_datapath, cfg_path, tmp)

    rows = _rows(models, bench, parity)
    text = _markdown(rows, builds)
    print(text)
    write_results("gpu_table", {"rows": rows, "parity": parity, "bench": bench, "engines": builds}, text)


if __name__ == "__main__":
    main()
