"""Whole-slide benchmark: mosaic slides of the real Tiled-MultipleMyeloma images (2560x1920) on
blank glass, written as tiled (256 px, JPEG) pyramidal TIFFs, segmented by ``flexunet infer``.

Measures, each run in a fresh process (peak RSS from ``getrusage``):

* a 10,000 x 10,000 slide holding 4 images, with the tissue mask and with ``--no-tissue-mask``:
  slide time and the tissue-skip speed-up;
* the same 4 images on a larger slide (``--big``, default 100,000 x 100,000): the same work on a
  slide 100 times larger, so the peak RSS shows whether memory grows with the slide;
* a 20,000 x 20,000 mosaic of all 16 images: slides/s and megapixels of tissue per second.

    python benchmarks/wsi.py --onnx tmm/model.onnx --images ../shared/data/Tiled-MultipleMyeloma/images

Results: ``benchmarks/results/wsi.{json,md}``.  The slides are written to ``--work`` (default a
temporary folder) and removed afterwards.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import SHARED_DATA, machine, write_results  # noqa: E402

TILE = 256
GLASS = 236
MPP = 0.5
_CHILD = ("import resource, sys\nfrom flexunet.cli import cli\ntry:\n    cli.main(args=sys.argv[1:], "
          "standalone_mode=False)\nfinally:\n    print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
          "file=sys.stderr)\n")


def placements(side: int, count: int, shape: tuple[int, int], gap: int = 400) -> list[tuple[int, int]]:
    """Top-left corners of ``count`` images in a centred grid on a ``side`` x ``side`` slide."""
    cols = int(np.ceil(np.sqrt(count)))
    rows = -(-count // cols)
    h, w = shape
    y0, x0 = (side - rows * h - (rows - 1) * gap) // 2, (side - cols * w - (cols - 1) * gap) // 2
    return [(y0 + (i // cols) * (h + gap), x0 + (i % cols) * (w + gap)) for i in range(count)]


def level_tiles(side: int, images: list[np.ndarray], corners: list[tuple[int, int]], f: int):
    """The RGB tiles of level ``1/f`` of the mosaic, row-major; blank tiles are one shared array."""
    size = -(-side // f)
    small = [cv2.resize(im, (im.shape[1] // f, im.shape[0] // f), interpolation=cv2.INTER_AREA) if f > 1 else im
             for im in images]
    boxes = [(y // f, x // f, im) for (y, x), im in zip(corners, small)]
    blank = np.full((TILE, TILE, 3), GLASS, np.uint8)
    for ty in range(0, size, TILE):
        for tx in range(0, size, TILE):
            tile = None
            for y, x, im in boxes:
                y1, x1 = max(ty, y), max(tx, x)
                y2, x2 = min(ty + TILE, y + im.shape[0]), min(tx + TILE, x + im.shape[1])
                if y1 < y2 and x1 < x2:
                    tile = blank.copy() if tile is None else tile
                    tile[y1 - ty:y2 - ty, x1 - tx:x2 - tx] = im[y1 - y:y2 - y, x1 - x:x2 - x]
            yield blank if tile is None else tile


def write_mosaic(path: Path, side: int, images: list[np.ndarray]) -> dict:
    """A pyramidal JPEG TIFF mosaic; returns its description."""
    import tifffile

    corners = placements(side, len(images), images[0].shape[:2])
    start = time.perf_counter()
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        f = 1
        while True:
            size = -(-side // f)
            extra = dict(resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER") if f == 1 else {}
            tif.write(level_tiles(side, images, corners, f), shape=(size, size, 3), dtype=np.uint8,
                      tile=(TILE, TILE), compression="jpeg", compressionargs={"level": 90}, photometric="rgb",
                      subfiletype=1 if f > 1 else 0, **extra)
            if size <= 1024:
                break
            f *= 2
    tissue = sum(im.shape[0] * im.shape[1] for im in images)
    return {"side": side, "images": len(images), "tissue_pixels": tissue, "tissue_share": tissue / side ** 2,
            "file_mb": round(path.stat().st_size / 1e6, 1), "build_seconds": round(time.perf_counter() - start, 1)}


def run_infer(onnx: Path, slide: Path, out: Path, *options: str) -> dict:
    """``flexunet infer`` in a fresh process: wall seconds, peak RSS and the slide's report line."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, "infer", str(onnx), str(slide), "-o", str(out), *options],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"flexunet infer failed ({proc.returncode}): {proc.stderr[-2000:]}")
    rss = int(re.search(r"MAXRSS (\d+)", proc.stderr).group(1)) * 1024
    line = next(l for l in proc.stderr.splitlines() if l.startswith("slide "))
    computed, regions = map(int, re.search(r"(\d+)/(\d+) regions computed", line).groups())
    skipped = float(re.search(r"([0-9.]+)% of the area skipped", line).group(1)) / 100
    seconds = float(re.search(r"([0-9.]+) s$", line).group(1))
    return {"wall_seconds": round(wall, 1), "slide_seconds": seconds, "peak_rss_mib": round(rss / 2**20),
            "regions": regions, "computed": computed, "area_skipped": skipped, "report": line,
            "options": list(options)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", type=Path, required=True)
    ap.add_argument("--images", type=Path, default=SHARED_DATA / "Tiled-MultipleMyeloma" / "images")
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--big", type=int, default=100_000)
    ap.add_argument("--mosaic", type=int, default=20_000)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--name", default="wsi")
    args = ap.parse_args()
    paths = sorted(args.images.glob("*.jpg"))
    if not paths:
        raise SystemExit(f"{args.images}: no images (the shared data is absent)")
    rgb = [cv2.imread(str(p))[..., ::-1].copy() for p in paths]
    work = args.work or Path(tempfile.mkdtemp(prefix="flexunet-wsi-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"model": str(args.onnx), "slides": {}, "runs": {}}
    try:
        for name, side, count in (("small", args.small, 4), ("big", args.big, 4), ("mosaic", args.mosaic, 16)):
            slide = work / f"{name}_{side}.tif"
            results["slides"][name] = write_mosaic(slide, side, rgb[:count])
            print(f"{name}: {results['slides'][name]}", flush=True)
            runs = [("tissue", ())] + ([("no_tissue_mask", ("--no-tissue-mask",))] if name == "small" else [])
            for label, options in runs:
                key = f"{name}_{label}"
                results["runs"][key] = run_infer(args.onnx, slide, work / f"out_{key}", *options)
                print(f"{key}: {results['runs'][key]}", flush=True)
            if name == "small":  # skipping background changes nothing on the tissue
                import tifffile

                masked, full = (tifffile.imread(work / f"out_small_{k}" / slide.with_suffix(".tif").name)
                                for k in ("tissue", "no_tissue_mask"))
                results["small_masks_identical"] = bool(np.array_equal(masked, full))
                del masked, full
            slide.unlink()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    summarise(results)
    write_results(args.name, results, markdown(results))


def summarise(results: dict) -> None:
    runs, slides = results["runs"], results["slides"]
    results["tissue_skip_speedup"] = round(runs["small_no_tissue_mask"]["slide_seconds"]
                                           / runs["small_tissue"]["slide_seconds"], 2)
    results["rss_big_vs_small"] = round(runs["big_tissue"]["peak_rss_mib"] / runs["small_tissue"]["peak_rss_mib"], 3)
    mosaic = runs["mosaic_tissue"]
    results["mosaic_slides_per_second"] = round(1.0 / mosaic["slide_seconds"], 4)
    tissue_mpx = slides["mosaic"]["tissue_pixels"] / 1e6
    results["mosaic_tissue_mpx_per_second"] = round(tissue_mpx / mosaic["slide_seconds"], 2)


def markdown(results: dict) -> str:
    lines = ["# Whole-slide benchmark", "",
             f"Model: `{results['model']}`; CPU: {machine().get('cpu')}.",
             "", "| run | slide | tissue share | regions computed | area skipped | slide s | peak RSS MiB |",
             "|---|---|---|---|---|---|---|"]
    for key, run in results["runs"].items():
        slide = results["slides"][key.split("_")[0]]
        lines.append(f"| {key} | {slide['side']} x {slide['side']} | {100 * slide['tissue_share']:.2f}% | "
                     f"{run['computed']}/{run['regions']} | {100 * run['area_skipped']:.1f}% | "
                     f"{run['slide_seconds']} | "
                     f"{run['peak_rss_mib']} |")
    small, big, mosaic = (results["slides"][k] for k in ("small", "big", "mosaic"))
    lines += ["", f"- tissue-skip speed-up ({small['side']} px slide): {results['tissue_skip_speedup']}x, masks "
              f"identical with and without the tissue mask: {results.get('small_masks_identical')}",
              f"- peak RSS, {big['side']} px vs {small['side']} px slide (same tissue): {results['rss_big_vs_small']}x",
              f"- {mosaic['side']} px mosaic of {mosaic['images']} images: {results['mosaic_slides_per_second']} "
              f"slides/s, {results['mosaic_tissue_mpx_per_second']} Mpx of tissue/s"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
