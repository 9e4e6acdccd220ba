"""Scaling a folder run out with Ray: the local pipeline vs ``flexunet infer --ray`` on this machine.

    python benchmarks/ray_scaling.py --onnx /tmp/ray_demo/model.onnx \
        [--slides ../shared/data/Tiled-MultipleMyeloma/images] [--copies 3] [--tile fit] [--batch-size 2] [--rounds 2]

The slides (copied ``--copies`` times under distinct names) are segmented by each setting in a
process of its own, the settings taking turns (``--rounds`` rounds; the best round is kept):

* ``local, 1 thread`` / ``local, 2 threads``: ``Segmenter.segment_files`` (ONNX Runtime CPU);
* ``ray, 1 actor x 1 thread`` / ``ray, 2 actors x 1 thread``: ``segment_on_ray`` on a local Ray
  instance started by the run (what ``flexunet infer --ray`` does).

Per setting: seconds of the whole call (for Ray: starting the instance and the actors, and stopping
them, included), slides/s end to end, slides/s in the steady state (from the moment every actor
-- or the local pipeline -- has finished its first slide to the last slide), and peak RSS of the
driver, of the actors (each and together) and of Ray's own processes (GCS, raylet, agents, idle
workers, Ray Data's coordinator actors), sampled every 0.1 s over the process tree.  At equal
cores the steady rates of ``ray 1x1`` and ``local, 1 thread``, and of ``ray 2x1`` and ``local, 2
threads``, are compared (Ray / local; the overhead is how much slower Ray is, 0 when it is faster).
The masks of the 2-core runs are compared byte for byte.  Writes benchmarks/results/ray_scaling.{json,md}.
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

from benchmarks.common import SHARED_DATA, write_results  # noqa: E402

#: name -> (engine, actors, threads per actor / pipeline)
SETTINGS = {
    "local, 1 thread": ("local", 1, 1),
    "local, 2 threads": ("local", 1, 2),
    "ray, 1 actor x 1 thread": ("ray", 1, 1),
    "ray, 2 actors x 1 thread": ("ray", 2, 1),
}
EQUAL_CORES = (("ray, 1 actor x 1 thread", "local, 1 thread"), ("ray, 2 actors x 1 thread", "local, 2 threads"))
SAMPLE_S = 0.1
GIB = 1 << 30


# -- a setting, in its own process ---------------------------------------------------------------------
def _child(args) -> None:
    """Run one setting over the slides of ``args.inputs`` into ``args.out``; print times as JSON."""
    from flexunet.core.imageio import expand_inputs
    from flexunet.runtime.infer_cli import TileSize

    engine, actors, threads = SETTINGS[args.child]
    paths = expand_inputs([args.inputs])
    options = dict(tile=TileSize().convert(args.tile, None, None), batch_size=args.batch_size)
    finished: list[float] = []
    start = time.perf_counter()
    progress = lambda event: finished.append(time.perf_counter() - start)  # noqa: E731
    if engine == "local":
        from flexunet.runtime.segmenter import Segmenter

        with Segmenter(args.onnx, threads=threads, **options) as segmenter:
            summary = segmenter.segment_files(paths, args.out, progress=progress)
    else:
        from flexunet.runtime.ray_engine import segment_on_ray

        summary = segment_on_ray(args.onnx, paths, args.out, actors=actors, threads=threads, options=options,
                                 progress=progress, echo=lambda line: None)
    print(json.dumps({"wall": time.perf_counter() - start, "finished": finished, "done": len(summary.done),
                      "skipped": len(summary.skipped)}))


# -- the parent: processes, memory, results ------------------------------------------------------------
def _kind(proc, driver: int) -> str:
    if proc.pid == driver:
        return "driver"
    try:
        title = " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 -- a process that just exited
        return "ray"
    return "actor" if "SegmentActor" in title or "MapWorker" in title else "ray"


def _sample(root, peaks: dict) -> None:
    """Add one sample of the RSS of ``root`` and its descendants to ``peaks``."""
    totals = {"driver": 0, "actor": 0, "ray": 0}
    try:
        procs = [root, *root.children(recursive=True)]
    except Exception:  # noqa: BLE001 -- the run just ended
        return
    for proc in procs:
        try:
            rss = proc.memory_info().rss
        except Exception:  # noqa: BLE001
            continue
        kind = _kind(proc, root.pid)
        totals[kind] += rss
        if kind == "actor":
            peaks["each actor"] = max(peaks.get("each actor", 0), rss)
    for kind, value in totals.items():
        peaks[kind] = max(peaks.get(kind, 0), value)
    peaks["total"] = max(peaks.get("total", 0), sum(totals.values()))


def _run_setting(args, name: str, inputs: Path, out: Path) -> dict:
    """One setting in a child process: its times and peak RSS."""
    import psutil

    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, __file__, "--child", name, "--inputs", str(inputs), "--out", str(out),
               "--onnx", str(args.onnx), "--tile", args.tile, "--batch-size", str(args.batch_size)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root, peaks = psutil.Process(child.pid), {}
    while child.poll() is None:
        _sample(root, peaks)
        time.sleep(SAMPLE_S)
    stdout, stderr = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"{name}: exit {child.returncode}\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    engine, actors, _ = SETTINGS[name]
    first_all = result["finished"][actors - 1]  # every actor (or the pipeline) has finished a slide
    steady = (len(result["finished"]) - actors) / (result["finished"][-1] - first_all)
    return {**result, "slides_per_s": result["done"] / result["wall"], "steady_slides_per_s": steady,
            "first_slide_s": result["finished"][0], "peak_rss": peaks}


def _prepare(slides: Path, copies: int, folder: Path) -> int:
    """``copies`` copies of the slides under distinct names (hard links where possible)."""
    folder.mkdir(parents=True)
    sources = sorted(p for p in slides.iterdir() if p.is_file())
    for k in range(copies):
        for src in sources:
            dest = folder / f"{k}_{src.name}"
            try:
                os.link(src, dest)
            except OSError:
                shutil.copyfile(src, dest)
    return copies * len(sources)


def _same_masks(a: Path, b: Path) -> bool:
    masks = sorted(p.name for p in a.glob("*.png"))
    return masks == sorted(p.name for p in b.glob("*.png")) and all(
        (a / m).read_bytes() == (b / m).read_bytes() for m in masks)


def _markdown(args, slides: int, best: dict, overhead: dict, same: bool) -> str:
    gib = lambda v: f"{v / GIB:.2f}"  # noqa: E731
    lines = [f"# Ray scaling, {slides} slides of {args.slides} ({args.copies} copies)", "",
             f"model {args.onnx}, tile {args.tile}, batch {args.batch_size}; best of {args.rounds} rounds, "
             "settings in turn; Ray on a local instance started by each run", "",
             "| setting | end to end s | slides/s end to end | slides/s steady | first slide s | "
             "peak RSS GiB: driver | actors (each) | Ray processes | total |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in best.items():
        p = r["peak_rss"]
        actors = f"{gib(p.get('actor', 0))} ({gib(p.get('each actor', 0))})" if "ray" in name else "-"
        ray = gib(p.get("ray", 0)) if "ray" in name else "-"
        lines.append(f"| {name} | {r['wall']:.1f} | {r['slides_per_s']:.3f} | {r['steady_slides_per_s']:.3f} | "
                     f"{r['first_slide_s']:.1f} | {gib(p.get('driver', 0))} | {actors} | {ray} | {gib(p['total'])} |")
    lines += ["", "| equal cores | Ray / local slides/s, steady | Ray overhead, steady | Ray / local, end to end |",
              "|---|---|---|---|"]
    for (ray, local), o in overhead.items():
        lines.append(f"| {ray} vs {local} | {o['steady']:.2f}x | {100 * max(0.0, 1 - o['steady']):.0f}% | "
                     f"{o['end_to_end']:.2f}x |")
    lines += ["", f"masks of `local, 2 threads` and `ray, 2 actors x 1 thread` identical byte for byte: "
                  f"{'yes' if same else 'NO'}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--slides", type=Path, default=SHARED_DATA / "Tiled-MultipleMyeloma" / "images")
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--tile", default="fit")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--name", default="ray_scaling")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    if not args.slides.is_dir():
        raise SystemExit(f"{args.slides}: no such folder (the Tiled-MultipleMyeloma sample; see ../shared/data)")
    with tempfile.TemporaryDirectory(prefix="ray_scaling_") as tmp:
        slides = _prepare(args.slides, args.copies, Path(tmp) / "in")
        runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
        for round_ in range(args.rounds):
            for name in SETTINGS:
                runs[name].append(_run_setting(args, name, Path(tmp) / "in", Path(tmp) / name.replace(" ", "_")))
                print(f"round {round_ + 1} {name}: {runs[name][-1]['steady_slides_per_s']:.3f} slides/s steady, "
                      f"{runs[name][-1]['wall']:.1f} s", flush=True)
        same = _same_masks(Path(tmp) / "local,_2_threads", Path(tmp) / "ray,_2_actors_x_1_thread")
    best = {name: max(rs, key=lambda r: r["steady_slides_per_s"]) for name, rs in runs.items()}
    overhead = {(ray, local): {"steady": best[ray]["steady_slides_per_s"] / best[local]["steady_slides_per_s"],
                               "end_to_end": best[ray]["slides_per_s"] / best[local]["slides_per_s"]}
                for ray, local in EQUAL_CORES}
    markdown = _markdown(args, slides, best, overhead, same)
    write_results(args.name, {"slides": slides, "onnx": str(args.onnx), "tile": args.tile,
                              "batch_size": args.batch_size, "rounds": runs, "best": best,
                              "ray_over_local": {f"{r} vs {l}": o for (r, l), o in overhead.items()},
                              "masks_identical": same}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
