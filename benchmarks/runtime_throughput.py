"""Whole-slide runtime on real slides: pipeline vs bare model compute vs the seed-style loop; memory.

    python benchmarks/runtime_throughput.py --onnx exported/model.onnx --keras models/best_model.keras \
        --slides ../shared/data/Tiled-MultipleMyeloma/images --masks ../shared/data/Tiled-MultipleMyeloma/masks

Measured in one run, on the same model and slides:
  * bare compute: the slides' tiles, pre-extracted in memory, through the backend in batches;
  * end to end: ``Segmenter.segment_folder`` (decode, pre-process, infer, blend, write: concurrent);
  * seed-style: per-tile Keras ``predict`` with batch 1, resized margin crops, paste, AND with a
    downscaled whole-image mask (runtime.seedstyle);
  * quality: tiled vs ``--whole`` mask dice (our tiling and the seed's), and dice vs ground truth;
  * peak RSS of a folder run over ``--rss-slides`` slides (the folder's slides repeated), in a
    separate process.
Writes benchmarks/results/runtime_throughput.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.common import PeakRSS, write_results  # noqa: E402


def _tile(text: str | None):
    if text is None or text == "fit":
        return text
    h, _, w = text.lower().partition("x")
    return (int(h), int(w or h))


def _rss_child(args) -> None:
    """Child process: a folder run over N slides (the folder repeated), printing peak RSS as JSON."""
    from flexunet.runtime import Segmenter
    from flexunet.core.imageio import list_images

    slides = list_images(args.slides)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for i in range(args.rss_slides):
            src = slides[i % len(slides)]
            dest = folder / f"{i:04d}_{src.name}"
            try:  # hard links: distinct inputs (symlinks to one file are de-duplicated as one input)
                os.link(src, dest)
            except OSError:
                shutil.copyfile(src, dest)
        with PeakRSS() as rss, Segmenter(args.onnx, backend=args.backend, batch_size=args.batch_size,
                                         tile=_tile(args.tile)) as seg:
            t = time.perf_counter()
            summary = seg.segment_folder([folder], Path(tmp) / "out")
            wall = time.perf_counter() - t
    print(json.dumps({"peak_rss_bytes": rss.peak, "slides": len(summary.done), "wall_seconds": wall}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", type=Path, required=True, help="exported model (--dynamic-size for --whole)")
    ap.add_argument("--keras", type=Path, required=True, help="the same model as .keras (seed-style loop)")
    ap.add_argument("--slides", type=Path, required=True)
    ap.add_argument("--masks", type=Path, default=None, help="ground-truth masks (same names)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--tile", default=None, help="N, HxW or fit (default: the model's input size)")
    ap.add_argument("--seed-slides", type=int, default=4, help="slides for the (slow) seed-style loop")
    ap.add_argument("--rss-slides", type=int, default=100)
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--name", default="runtime_throughput")
    args = ap.parse_args(argv)
    if args.rss_child:
        return _rss_child(args)

    from flexunet.runtime import Segmenter
    from flexunet.core.imageio import list_images, read_image, read_mask
    from flexunet.core.masks import binary_labels
    from flexunet.core.metrics import dice
    from flexunet.runtime.seedstyle import seed_style_labels

    slides = list_images(args.slides)
    seg = Segmenter(args.onnx, backend=args.backend, batch_size=args.batch_size, tile=_tile(args.tile))
    info = seg.info
    if seg.fit:  # the tile segment_folder will choose: fitted to the first slide
        seg.tile = seg.fitted_tile(*read_image(slides[0]).shape[:2])
    layout = seg.layout()
    th, tw = layout.tile
    overlap = layout.overlap
    print(f"{len(slides)} slides; backend {seg.describe()}; tile {th}x{tw}, overlap {overlap}, "
          f"batch {args.batch_size}", flush=True)

    # 1. bare model compute on exactly the tiles the pipeline will run
    tiles = np.concatenate([layout.tiles(info.preprocess(read_image(p))) for p in slides])
    backend = seg.backend
    backend.predict(tiles[:args.batch_size])  # warm-up
    t = time.perf_counter()
    for i in range(0, len(tiles), args.batch_size):
        backend.predict(tiles[i:i + args.batch_size])
    bare = time.perf_counter() - t
    n_tiles = len(tiles)
    del tiles

    # 2. end to end, folder run (warm: the session is already initialised)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        summary = seg.segment_folder([args.slides], Path(tmp) / "out")
        e2e = time.perf_counter() - t
    stage = summary.stage_seconds

    # 3. quality: tiled vs whole (ours), seed-style vs whole, each vs ground truth
    whole_seg = Segmenter(args.onnx, backend=args.backend, whole=True)
    from flexunet.core.console import import_tensorflow_quietly  # the seed-style loop runs the Keras model

    import_tensorflow_quietly()
    from flexunet.runtime.backends.keras import load_keras_model

    kmodel = load_keras_model(args.keras)
    size = info.tile_size[0]
    rows = []
    seed_seconds = 0.0
    for k, p in enumerate(slides):
        img = read_image(p)
        tiled = seg.segment(img).labels
        whole = whole_seg.segment(img).labels
        row = {"slide": p.name, "tiled_vs_whole": dice(tiled, whole)}
        if k < args.seed_slides:
            x = info.preprocess(img)
            t = time.perf_counter()
            seed = seed_style_labels(x, lambda b: kmodel.predict(b, verbose=0), size, margin=overlap)
            seed_seconds += time.perf_counter() - t
            row["seed_vs_whole"] = dice(seed, whole)
        if args.masks is not None:
            gt = binary_labels(read_mask(next(args.masks.glob(p.stem + ".*"))))
            row["tiled_vs_truth"], row["whole_vs_truth"] = dice(gt, tiled), dice(gt, whole)
            if "seed_vs_whole" in row:
                row["seed_vs_truth"] = dice(gt, seed)
        rows.append(row)
        print(row, flush=True)
    n_seed = min(args.seed_slides, len(slides))

    # 4. memory for a long folder, in a fresh process
    child = subprocess.run([sys.executable, __file__, "--rss-child", "--onnx", str(args.onnx), "--keras",
                            str(args.keras), "--slides", str(args.slides), "--backend", args.backend,
                            "--batch-size", str(args.batch_size), "--rss-slides", str(args.rss_slides)]
                           + (["--tile", args.tile] if args.tile else []),
                           capture_output=True, text=True, check=True)
    rss = json.loads(child.stdout.strip().splitlines()[-1])

    def mean(key):
        vals = [r[key] for r in rows if key in r]
        return float(np.mean(vals)) if vals else None

    res = {
        "slides": len(slides), "tiles": n_tiles, "tile": [th, tw], "overlap": overlap,
        "batch_size": args.batch_size, "backend": seg.describe(),
        "bare_compute_seconds": bare, "end_to_end_seconds": e2e,
        "end_to_end_slides_per_s": len(slides) / e2e, "bare_slides_per_s": len(slides) / bare,
        "e2e_over_bare_time": e2e / bare, "stage_seconds": stage,
        "seed_style_seconds_per_slide": seed_seconds / max(n_seed, 1), "seed_style_slides": n_seed,
        "speedup_vs_seed_style": (seed_seconds / max(n_seed, 1)) / (e2e / len(slides)),
        "dice_tiled_vs_whole_mean": mean("tiled_vs_whole"), "dice_tiled_vs_whole_min":
            min(r["tiled_vs_whole"] for r in rows),
        "dice_seed_vs_whole_mean": mean("seed_vs_whole"),
        "dice_vs_truth_mean": {"tiled": mean("tiled_vs_truth"), "whole": mean("whole_vs_truth"),
                               "seed_style": mean("seed_vs_truth")},
        "rss_run": rss, "per_slide": rows,
    }
    md = f"""# Whole-slide runtime, {len(slides)} slides of {args.slides}

backend {seg.describe()}; tile {th}x{tw}, overlap {overlap}, batch {args.batch_size}; {n_tiles} tiles

| measure | value |
|---|---|
| bare model compute (same tiles, in memory) | {bare:.1f} s ({len(slides) / bare:.3f} slides/s) |
| end to end folder run | {e2e:.1f} s ({len(slides) / e2e:.3f} slides/s) |
| end to end / bare compute (time) | {e2e / bare:.3f} |
| seed-style loop (Keras, batch 1, resized margin crops) | {res['seed_style_seconds_per_slide']:.2f} s/slide ({n_seed} slides) |
| speed-up vs seed-style | {res['speedup_vs_seed_style']:.2f}x |
| tiled vs whole mask dice (mean / min) | {res['dice_tiled_vs_whole_mean']:.5f} / {res['dice_tiled_vs_whole_min']:.5f} |
| seed-style vs whole mask dice (mean) | {res['dice_seed_vs_whole_mean']:.5f} |
| dice vs ground truth: tiled / whole / seed-style | {' / '.join('–' if v is None else f'{v:.4f}' for v in res['dice_vs_truth_mean'].values())} |
| peak RSS, folder of {rss['slides']} slides | {rss['peak_rss_bytes'] / 2**30:.2f} GiB ({rss['wall_seconds']:.0f} s) |
"""
    print(md)
    write_results(args.name, res, md)


if __name__ == "__main__":
    main()
