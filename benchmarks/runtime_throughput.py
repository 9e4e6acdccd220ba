"""Whole-slide runtime on real slides: pipeline vs bare model compute vs the seed-style loop; memory.

    python benchmarks/runtime_throughput.py --onnx exported/model.onnx --keras models/best_model.keras \
        --slides ../shared/data/Tiled-MultipleMyeloma/images --masks ../shared/data/Tiled-MultipleMyeloma/masks

Measured in one run, on the same model and slides:
  * bare compute: the slides' tiles, pre-extracted in memory, through the backend in batches;
  * end to end: ``Segmenter.segment_folder`` (decode, pre-process, infer, blend, write: concurrent);
  * seed-style: per-tile Keras ``predict`` with batch 1, resized margin crops, paste, AND with a
    downscaled whole-image mask (flexunet.runtime.seedstyle);
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
    from flexunet.core.imageio import list_images
    from flexunet.runtime import Segmenter

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


def _rss_run(args) -> dict:
    """Peak RSS of a long folder run, measured in a fresh process (:func:`_rss_child`)."""
    child = subprocess.run([sys.executable, __file__, "--rss-child", "--onnx", str(args.onnx), "--keras",
                            str(args.keras), "--slides", str(args.slides), "--backend", args.backend,
                            "--batch-size", str(args.batch_size), "--rss-slides", str(args.rss_slides)]
                           + (["--tile", args.tile] if args.tile else []),
                           capture_output=True, text=True, check=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


def _bare_compute(seg, layout, slides, batch_size: int) -> tuple[float, int]:
    """Seconds to run every tile the pipeline will run, pre-extracted in memory, through the
    backend in batches (after one warm-up batch); and the number of tiles."""
    from flexunet.core.imageio import read_image

    tiles = np.concatenate([layout.tiles(seg.info.preprocess(read_image(p))) for p in slides])
    seg.backend.predict(tiles[:batch_size])  # warm-up
    t = time.perf_counter()
    for i in range(0, len(tiles), batch_size):
        seg.backend.predict(tiles[i:i + batch_size])
    return time.perf_counter() - t, len(tiles)


def _quality(args, seg, size: int, margin: int, slides) -> tuple[list[dict], float, int]:
    """Per slide: tiled vs whole-image mask dice, the seed-style loop's (first ``--seed-slides``
    slides, timed), and each against the ground truth; the seed loop's seconds and slide count."""
    from flexunet.core.console import import_tensorflow_quietly
    from flexunet.core.imageio import read_image
    from flexunet.core.metrics import dice
    from flexunet.runtime import Segmenter
    from flexunet.runtime.ground_truth import masks_index, truth_labels
    from flexunet.runtime.seedstyle import seed_style_labels

    whole_seg = Segmenter(args.onnx, backend=args.backend, whole=True)
    import_tensorflow_quietly()  # the seed-style loop runs the Keras model
    from flexunet.runtime.backends.keras import load_keras_model

    kmodel = load_keras_model(args.keras)
    truth_index = masks_index(args.masks) if args.masks is not None else {}
    info = seg.info
    rows, seed_seconds = [], 0.0
    for k, p in enumerate(slides):
        img = read_image(p)
        tiled, whole = seg.segment(img).labels, whole_seg.segment(img).labels
        row, masks = {"slide": p.name, "tiled_vs_whole": dice(tiled, whole)}, {"tiled": tiled, "whole": whole}
        if k < args.seed_slides:
            t = time.perf_counter()
            masks["seed"] = seed_style_labels(info.preprocess(img), lambda b: kmodel.predict(b, verbose=0), size,
                                              margin=margin)
            seed_seconds += time.perf_counter() - t
            row["seed_vs_whole"] = dice(masks["seed"], whole)
        if p.stem in truth_index:
            gt = truth_labels(truth_index[p.stem], info.num_classes, info.class_colors)
            row.update({f"{name}_vs_truth": dice(gt, m) for name, m in masks.items()})
        rows.append(row)
        print(row, flush=True)
    whole_seg.close()
    return rows, seed_seconds, min(args.seed_slides, len(slides))


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r]
    return float(np.mean(vals)) if vals else None


def _markdown(args, res: dict) -> str:
    rss, n, bare, e2e = res["rss_run"], res["slides"], res["bare_compute_seconds"], res["end_to_end_seconds"]
    (th, tw), truth = res["tile"], res["dice_vs_truth_mean"]
    return f"""# Whole-slide runtime, {n} slides of {args.slides}

backend {res['backend']}; tile {th}x{tw}, overlap {res['overlap']}, batch {args.batch_size}; {res['tiles']} tiles

| measure | value |
|---|---|
| bare model compute (same tiles, in memory) | {bare:.1f} s ({n / bare:.3f} slides/s) |
| end to end folder run | {e2e:.1f} s ({n / e2e:.3f} slides/s) |
| end to end / bare compute (time) | {e2e / bare:.3f} |
| seed-style loop (Keras, batch 1, resized margin crops) | {res['seed_style_seconds_per_slide']:.2f} s/slide ({res['seed_style_slides']} slides) |
| speed-up vs seed-style | {res['speedup_vs_seed_style']:.2f}x |
| tiled vs whole mask dice (mean / min) | {res['dice_tiled_vs_whole_mean']:.5f} / {res['dice_tiled_vs_whole_min']:.5f} |
| seed-style vs whole mask dice (mean) | {res['dice_seed_vs_whole_mean']:.5f} |
| dice vs ground truth: tiled / whole / seed-style | {' / '.join('–' if v is None else f'{v:.4f}' for v in truth.values())} |
| peak RSS, folder of {rss['slides']} slides | {rss['peak_rss_bytes'] / 2**30:.2f} GiB ({rss['wall_seconds']:.0f} s) |
"""


def _arguments(argv):
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
    return ap.parse_args(argv)


def main(argv=None):
    args = _arguments(argv)
    if args.rss_child:
        return _rss_child(args)

    from flexunet.core.imageio import list_images, read_image
    from flexunet.runtime import Segmenter

    slides = list_images(args.slides)
    seg = Segmenter(args.onnx, backend=args.backend, batch_size=args.batch_size, tile=_tile(args.tile))
    layout = seg.layout(read_image(slides[0]).shape[:2])  # with --tile fit: the tile a folder run chooses
    th, tw = layout.tile
    print(f"{len(slides)} slides; backend {seg.describe()}; tile {th}x{tw}, overlap {layout.overlap}, "
          f"batch {args.batch_size}", flush=True)
    bare, n_tiles = _bare_compute(seg, layout, slides, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:  # end to end, warm: the session is already initialised
        t = time.perf_counter()
        summary = seg.segment_folder([args.slides], Path(tmp) / "out")
        e2e = time.perf_counter() - t
    rows, seed_seconds, n_seed = _quality(args, seg, seg.info.tile_size[0], layout.overlap, slides)
    seed_per_slide = seed_seconds / max(n_seed, 1)
    res = {
        "slides": len(slides), "tiles": n_tiles, "tile": [th, tw], "overlap": layout.overlap,
        "batch_size": args.batch_size, "backend": seg.describe(),
        "bare_compute_seconds": bare, "end_to_end_seconds": e2e,
        "end_to_end_slides_per_s": len(slides) / e2e, "bare_slides_per_s": len(slides) / bare,
        "e2e_over_bare_time": e2e / bare, "stage_seconds": summary.stage_seconds,
        "seed_style_seconds_per_slide": seed_per_slide, "seed_style_slides": n_seed,
        "speedup_vs_seed_style": seed_per_slide / (e2e / len(slides)),
        "dice_tiled_vs_whole_mean": _mean(rows, "tiled_vs_whole"),
        "dice_tiled_vs_whole_min": min(r["tiled_vs_whole"] for r in rows),
        "dice_seed_vs_whole_mean": _mean(rows, "seed_vs_whole"),
        "dice_vs_truth_mean": {"tiled": _mean(rows, "tiled_vs_truth"), "whole": _mean(rows, "whole_vs_truth"),
                               "seed_style": _mean(rows, "seed_vs_truth")},
        "rss_run": _rss_run(args), "per_slide": rows,
    }
    seg.close()
    md = _markdown(args, res)
    print(md)
    write_results(args.name, res, md)


if __name__ == "__main__":
    main()
