"""The Tiled-MultipleMyeloma targets, measured in one run on the held-out slides with the defaults:

    python benchmarks/tmm_targets.py --keras tmm/models/best_model.keras --onnx tmm/export/model.onnx \
        [--int8 tmm/export/model.int8.onnx] --data-root ../shared/data

* speed: the seed-style loop (runtime.bench_seed: per-tile Keras ``predict``, batch 1, resized margin
  crops, AND with a downscaled whole-image mask) and every path (ONNX Runtime FP32, OpenVINO FP32 and
  BF16 where installed, ONNX Runtime INT8 with ``--int8``) timed in turn, ``--rounds`` times, each a
  folder run over the held-out slides from decode to written masks; ratio = the seed loop's fastest
  round / the path's fastest round;
* verdicts: every path's probabilities against ONNX Runtime FP32's on the held-out slides, with their
  ground truth, judged by ``flexunet.core.compare.judge`` (FP32: agreement; BF16/INT8: accuracy
  retention); the exact FP32 path is the faster FP32 path that passes;
* tiling: tiled (the defaults: ``fit`` tiles, the overlap measured at export, the budget's batch) vs
  ``--whole`` mask dice on every slide of the folder;
* memory: peak RSS of a default folder run over ``--rss-slides`` slides (the held-out ones hard-linked
  over and over into a temporary folder), in a fresh process.
Writes benchmarks/results/<--name>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.common import SHARED_DATA, PeakRSS, write_results  # noqa: E402

HELD_OUT = ("102.jpg", "111.jpg", "202.jpg", "213.jpg")
TARGETS = {"exact_fp32_vs_seed": 2.5, "fastest_passing_vs_seed": 4.0, "tiled_vs_whole_dice": 0.999,
           "peak_rss_gib": 2.0}


def _paths(args) -> tuple[list[Path], list[Path], Path]:
    from flexunet.core.imageio import list_images

    folder = args.data_root / "Tiled-MultipleMyeloma"
    slides = list_images(folder / "images")
    held = [p for p in slides if p.name in HELD_OUT]
    if len(held) != len(HELD_OUT):
        raise SystemExit(f"{folder}: the held-out slides {', '.join(HELD_OUT)} are not all there")
    return held, slides, folder / "masks"


def _candidates(args) -> dict[str, tuple[Path, str, str]]:
    """Path name -> (model file, backend, precision), those this machine can run."""
    import importlib.util

    from flexunet.core.machine import cpu_has_bf16

    paths = {"onnxruntime-fp32": (args.onnx, "onnxruntime", "fp32")}
    if importlib.util.find_spec("openvino") is not None:
        paths["openvino-fp32"] = (args.onnx, "openvino", "fp32")
        if cpu_has_bf16():
            paths["openvino-bf16"] = (args.onnx, "openvino-bf16", "bf16")
    if args.int8 is not None:
        paths["onnxruntime-int8"] = (args.int8, "onnxruntime", "int8")
    return paths


def _backend(path: Path, backend: str):
    """The loaded backend of a path; ONNX Runtime sessions without thread spinning, as they take turns
    with the other paths (benchmarks.common.timeit_interleaved says why)."""
    from flexunet.runtime.backends import load_backend
    from flexunet.runtime.backends.onnx import OnnxBackend

    return OnnxBackend(path, provider="cpu", spinning=False) if backend == "onnxruntime" else load_backend(path, backend)


def _probabilities(seg, paths) -> list[np.ndarray]:
    from flexunet.core.imageio import read_image

    return [seg.segment(read_image(p)).probabilities for p in paths]


def _verdicts(segs: dict, precisions: dict, held: list[Path], masks: Path) -> dict:
    """Each path against ONNX Runtime FP32 on the held-out slides, with their ground truth."""
    from flexunet.core.compare import TOLERANCES, compare, judge, truth_agreement
    from flexunet.runtime.ground_truth import masks_index, truth_labels

    info = segs["onnxruntime-fp32"].info
    index = masks_index(masks)
    truth = np.stack([truth_labels(index[p.stem], info.num_classes, info.class_colors) for p in held])
    ref = np.stack(_probabilities(segs["onnxruntime-fp32"], held))
    ref_truth = truth_agreement(truth, ref, info.threshold).dice
    out = {}
    for name, seg in segs.items():
        probs = ref if name == "onnxruntime-fp32" else np.stack(_probabilities(seg, held))
        agreement = compare(ref, probs, info.threshold)
        worst = min(compare(r, q, info.threshold).dice for r, q in zip(ref, probs))
        precision = precisions[name]
        verdict = judge(precision, agreement, TOLERANCES[precision], worst_dice=worst, reference_vs_truth=ref_truth,
                        candidate_vs_truth=truth_agreement(truth, probs, info.threshold).dice)
        out[name] = {"precision": precision, **agreement.to_dict(), "worst_slide_dice": worst,
                     "dice_vs_truth": truth_agreement(truth, probs, info.threshold).dice,
                     "reference_dice_vs_truth": ref_truth, **verdict.to_dict()}
        print(name, {k: out[name][k] for k in ("dice", "max_abs_diff", "verdict", "rule")}, flush=True)
    return out


def _folder_seconds(seg, paths) -> float:
    with tempfile.TemporaryDirectory(prefix="tmm-targets-") as tmp:
        t = time.perf_counter()
        summary = seg.segment_files(paths, Path(tmp) / "out")
        seconds = time.perf_counter() - t
    if summary.skipped:
        raise SystemExit(f"skipped: {summary.skipped}")
    return seconds


def _speed(segs: dict, keras_backend, held: list[Path], rounds: int) -> dict:
    """Seconds per slide of the seed loop and of each path, timed in turn, each round."""
    from flexunet.runtime.bench_seed import seed_baseline

    for seg in segs.values():  # warm-up: sessions compiled, memory arenas grown
        seg.segment(np.zeros((256, 256, 3), np.uint8))
    times: dict[str, list[float]] = {"seed": [], **{name: [] for name in segs}}
    for r in range(rounds):
        times["seed"].append(seed_baseline(keras_backend, held)["seconds_per_slide"])
        for name, seg in segs.items():
            times[name].append(_folder_seconds(seg, held) / len(held))
        print(f"round {r + 1}:", {k: round(v[-1], 3) for k, v in times.items()}, flush=True)
    best = {k: min(v) for k, v in times.items()}
    return {"seconds_per_slide": times, "best_seconds_per_slide": best,
            "vs_seed": {k: best["seed"] / v for k, v in best.items() if k != "seed"}}


def _tiling(seg, slides: list[Path]) -> list[dict]:
    """Tiled (``seg``: the defaults) vs whole-image mask dice per slide."""
    from flexunet.core.imageio import read_image
    from flexunet.core.metrics import dice
    from flexunet.runtime import Segmenter

    rows = []
    with Segmenter(seg.backend, whole=True) as whole:
        for p in slides:
            image = read_image(p)
            rows.append({"slide": p.name, "held_out": p.name in HELD_OUT,
                         "dice": dice(seg.segment(image).labels, whole.segment(image).labels)})
    return rows


def _rss_child(args) -> None:
    """Child process: a default folder run over ``--rss-slides`` hard links of the held-out slides."""
    from flexunet.runtime import Segmenter

    held, _, _ = _paths(args)
    with tempfile.TemporaryDirectory(prefix="tmm-rss-") as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for i in range(args.rss_slides):
            os.link(held[i % len(held)], folder / f"{i:04d}_{held[i % len(held)].name}")
        with PeakRSS() as rss, Segmenter(args.onnx, backend=args.rss_backend) as seg:
            t = time.perf_counter()
            summary = seg.segment_folder([folder], Path(tmp) / "out")
            wall = time.perf_counter() - t
            how = seg.describe()
    print(json.dumps({"peak_rss_bytes": rss.peak, "slides": len(summary.done), "wall_seconds": wall,
                      "backend": args.rss_backend, "tiling": how}))


def _rss_run(args) -> dict:
    cmd = [sys.executable, __file__, "--rss-child", "--onnx", str(args.onnx), "--keras", str(args.keras),
           "--data-root", str(args.data_root), "--rss-slides", str(args.rss_slides), "--rss-backend", args.rss_backend]
    child = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


def _targets(res: dict) -> dict:
    """Each target: the measured figure and whether it is met."""
    verdicts, ratios = res["verdicts"], res["speed"]["vs_seed"]
    fp32 = [n for n, v in verdicts.items() if v["precision"] == "fp32" and v["verdict"] == "pass"]
    exact = max(fp32, key=lambda n: ratios[n])
    fastest = max((n for n, v in verdicts.items() if v["verdict"] == "pass"), key=lambda n: ratios[n])
    dices = [r["dice"] for r in res["tiling"] if r["held_out"]]
    every = [r["dice"] for r in res["tiling"]]
    rss = res["rss_run"]["peak_rss_bytes"] / 2**30
    rows = {
        "exact_fp32_vs_seed": (exact, ratios[exact], ratios[exact] >= TARGETS["exact_fp32_vs_seed"]),
        "fastest_passing_vs_seed": (fastest, ratios[fastest], ratios[fastest] >= TARGETS["fastest_passing_vs_seed"]),
        "tiled_vs_whole_dice": ("held-out mean / worst", [float(np.mean(dices)), min(dices)],
                                min(dices) >= TARGETS["tiled_vs_whole_dice"]),
        "tiled_vs_whole_dice_every_slide": ("all slides mean / worst", [float(np.mean(every)), min(every)],
                                            min(every) >= TARGETS["tiled_vs_whole_dice"]),
        "peak_rss_gib": (f"{res['rss_run']['slides']} slides", rss, rss <= TARGETS["peak_rss_gib"]),
    }
    return {k: {"what": w, "value": v, "met": bool(m)} for k, (w, v, m) in rows.items()}


def _markdown(res: dict) -> str:
    t, speed, d = res["targets"], res["speed"], res["defaults"]
    lines = [f"# Tiled-MultipleMyeloma targets ({len(HELD_OUT)} held-out slides, one run)", "",
             f"defaults: {d['tiling']}; on a 1920x2560 slide: tiles {d['fitted_tile'][0]}x{d['fitted_tile'][1]}, "
             f"batch {d['batch']} (overlap measured at export: {d['measured_overlap']}; "
             f"activation bytes per pixel: {d['activation_bytes']}); seed-style loop "
             f"{speed['best_seconds_per_slide']['seed']:.2f} s/slide", "",
             "| path | s/slide (best of rounds) | vs seed-style loop | mask dice vs ORT FP32 | max \\|Δp\\| "
             "| dice vs truth | verdict (rule) |", "|---|---|---|---|---|---|---|"]
    for name, v in res["verdicts"].items():
        lines.append(f"| {name} | {speed['best_seconds_per_slide'][name]:.3f} | {speed['vs_seed'][name]:.2f}x | "
                     f"{v['dice']:.5f} | {v['max_abs_diff']:.2g} | {v['dice_vs_truth']:.4f} | {v['verdict']} ({v['rule']}) |")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for key, row in t.items():
        value = row["value"]
        shown = " / ".join(f"{x:.5f}" for x in value) if isinstance(value, list) else f"{value:.3f}"
        bound = "<=" if key == "peak_rss_gib" else ">="
        lines.append(f"| {key} ({bound} {TARGETS[key.removesuffix('_every_slide')]}) | {row['what']}: {shown} | "
                     f"{'yes' if row['met'] else 'no'} |")
    lines += ["", "tiled vs whole per slide: " + ", ".join(f"{r['slide']} {r['dice']:.5f}" for r in res["tiling"])]
    return "\n".join(lines) + "\n"


def _arguments(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keras", type=Path, required=True, help="the reduced project model (.keras)")
    ap.add_argument("--onnx", type=Path, required=True, help="its --dynamic-size export (model.onnx)")
    ap.add_argument("--int8", type=Path, default=None, help="its INT8 export (model.int8.onnx)")
    ap.add_argument("--data-root", type=Path, default=SHARED_DATA)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rss-slides", type=int, default=100)
    ap.add_argument("--rss-backend", default="auto", help="backend of the memory run (the default: auto)")
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--name", default="tmm_targets")
    return ap.parse_args(argv)


def main(argv=None):
    args = _arguments(argv)
    if args.rss_child:
        return _rss_child(args)
    from flexunet.runtime import Segmenter
    from flexunet.runtime.backends import load_backend

    held, slides, masks = _paths(args)
    candidates = _candidates(args)
    segs = {name: Segmenter(_backend(path, backend)) for name, (path, backend, _) in candidates.items()}
    ref = segs["onnxruntime-fp32"]
    info = ref.info
    defaults = {"tiling": ref.describe(), "fitted_tile": list(ref.layout((1920, 2560)).tile),
                "batch": ref.batch_for(ref.layout((1920, 2560))), "measured_overlap": info.measured_overlap,
                "activation_bytes": info.activation_bytes}
    print(defaults, flush=True)
    res = {"model": str(args.keras), "onnx": str(args.onnx), "held_out": list(HELD_OUT), "defaults": defaults}
    res["verdicts"] = _verdicts(segs, {n: c[2] for n, c in candidates.items()}, held, masks)
    res["tiling"] = _tiling(ref, slides)
    print("tiling:", [round(r["dice"], 5) for r in res["tiling"]], flush=True)
    with load_backend(args.keras, "keras") as keras_backend:
        res["speed"] = _speed(segs, keras_backend, held, args.rounds)
    for seg in segs.values():
        seg.backend.close()
    res["rss_run"] = _rss_run(args)
    res["targets"] = _targets(res)
    md = _markdown(res)
    print(md)
    write_results(args.name, res, md)


if __name__ == "__main__":
    main()
