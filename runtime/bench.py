"""Benchmark a model on this machine: batch latency, end-to-end throughput, stage times, peak RSS.

What :func:`run_bench` measures, in one process and one run (warm-up always excluded):

1. **latency** of ``backend.predict`` for each batch size, on real tiles of the model's tile size
   cut from the images (random tiles if none can be read): ``warmup`` untimed calls, then
   ``repeat`` timed calls -> p50/p90/p99 seconds per batch and tiles/s (batch size / p50);
2. **end to end**: :meth:`Segmenter.segment_folder` over the images into a temporary folder
   (decode, pre-process, batch, infer, blend, post-process, write; concurrent), ``runs`` times on
   the already-warm model; the fastest run is reported (every run is listed) -> slides/s, tiles/s,
   busy seconds per stage, and the peak resident memory of the process (polled in a thread);
3. optionally the **seed baseline** (``baseline="seed"``): the seed API's tiled loop
   (:mod:`runtime.seedstyle`: per-tile ``keras_model.predict(b, verbose=0)``, batch 1, resized
   margin crops, AND with a downscaled whole-image mask) on the same Keras model and the first
   ``baseline_slides`` images, each timed from decode to the written mask; our end-to-end run on
   the same images gives the ratio ours/seed in slides/s.

The machine (CPU model, cores, RAM, SIMD flags) and library versions are recorded.  This module
also provides :func:`machine`, :func:`library_versions`, :func:`percentiles` and :class:`PeakRSS`
to the benchmark scripts.  TensorFlow is imported only for a ``.keras`` model or the seed baseline;
matplotlib only to draw the chart (skipped with a note when it is not installed).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from flexunet.core.atomic import atomic_path, write_text
from flexunet.core.machine import cpu_info, cpu_threads, library_versions
from flexunet.runtime.backends import Backend, load_backend
from flexunet.core.errors import FlexunetError, ImageReadError, MissingDependencyError
from flexunet.core.imageio import expand_inputs, read_image, write_image

DEFAULT_BATCH_SIZES = (1, 2, 4, 8)

Progress = Callable[[str], None]


# -- machine, statistics, memory ----------------------------------------------------------------------
def machine() -> dict:
    """Platform, Python, CPU model, cores (and those this process may use), RAM, the SIMD flags
    that matter for inference (AVX*, AMX, VNNI), and library versions."""
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cores": os.cpu_count(), "usable_cores": cpu_threads()}
    model, flags = cpu_info()
    info["cpu"] = model or platform.processor() or platform.machine()
    info["simd"] = sorted(f for f in flags if f.startswith(("avx", "amx")) or "vnni" in f)
    try:
        import psutil

        info["ram_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    info["versions"] = library_versions()
    return info


def percentiles(samples: Sequence[float]) -> dict:
    """p50/p90/p99 (linear interpolation), mean, min, max and count of ``samples``
    (None for the statistics of no samples)."""
    s = sorted(float(v) for v in samples)

    def pct(p: float) -> float | None:
        if not s:
            return None
        k = (len(s) - 1) * p / 100.0
        lo, hi = int(k), min(int(k) + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (k - lo)

    return {"p50": pct(50), "p90": pct(90), "p99": pct(99), "mean": statistics.fmean(s) if s else None,
            "min": s[0] if s else None, "max": s[-1] if s else None, "n": len(s)}


class PeakRSS:
    """Peak resident memory of this process and its children, polled in a thread (bytes).

        with PeakRSS() as rss:
            work()
        print(rss.peak, rss.start)
    """

    def __init__(self, interval: float = 0.05):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flexunet-rss", daemon=True)

    def _sample(self) -> int:
        total = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except Exception:  # noqa: BLE001 -- a child that just exited
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


# -- latency -------------------------------------------------------------------------------------------
def parse_batch_sizes(text: str | Sequence[int]) -> list[int]:
    """``"1,2,4,8"`` -> ``[1, 2, 4, 8]`` (sorted, unique, each >= 1).

    Raises:
        FlexunetError: not a comma-separated list of positive integers.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        sizes = sorted({int(str(v).strip()) for v in items if str(v).strip()})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1:
        raise FlexunetError(f"--batch-sizes {text!r}: expected positive integers separated by commas, like 1,2,4,8")
    return sizes


def sample_tiles(paths: Sequence[Path], segmenter, count: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """``count`` pre-processed tiles of the segmenter's tile size: real tiles cut from the images
    (repeated when there are fewer), else random images pre-processed; and which it was."""
    info = segmenter.info
    layout = segmenter.layout()
    tiles: list[np.ndarray] = []
    for path in paths:
        if len(tiles) >= count:
            break
        try:
            image = read_image(path)
        except ImageReadError:
            continue
        tiles += list(layout.tiles(info.preprocess(image))[:count - len(tiles)])
    source = "image tiles"
    if not tiles:
        th, tw = segmenter.tile
        rng = np.random.default_rng(seed)
        tiles = [info.preprocess(rng.integers(0, 256, size=(th, tw, 3), dtype=np.uint8))]
        source = "random tiles"
    stack = np.stack(tiles).astype(np.float32, copy=False)
    reps = -(-count // len(stack))
    return np.ascontiguousarray(np.concatenate([stack] * reps)[:count]), source


def latency_sweep(backend: Backend, tiles: np.ndarray, batch_sizes: Sequence[int], repeat: int = 20,
                  warmup: int = 3, progress: Progress | None = None) -> list[dict]:
    """Seconds per ``backend.predict`` call for each batch size (``warmup`` untimed calls first).

    Returns one record per batch size: ``batch_size``, ``seconds`` (:func:`percentiles` of the
    ``repeat`` samples), ``ms_per_tile`` (p50/p90/p99 divided by the batch size), ``tiles_per_s``
    (batch size / p50), ``split`` (True when the backend runs the batch in several native calls).
    """
    say = progress or (lambda line: None)
    records = []
    for b in batch_sizes:
        batch = tiles[:b]
        for _ in range(warmup):
            backend.predict(batch)
        samples = []
        for _ in range(repeat):
            t = time.perf_counter()
            backend.predict(batch)
            samples.append(time.perf_counter() - t)
        stats = percentiles(samples)
        per_tile = {k: 1000.0 * stats[k] / b for k in ("p50", "p90", "p99", "mean")}
        rec = {"batch_size": b, "seconds": stats, "ms_per_tile": per_tile,
               "tiles_per_s": b / stats["p50"] if stats["p50"] else None,
               "split": bool(backend.max_batch and b > backend.max_batch)}
        records.append(rec)
        say(f"latency batch {b}: p50 {stats['p50'] * 1000:.2f} ms, p90 {stats['p90'] * 1000:.2f} ms, "
            f"p99 {stats['p99'] * 1000:.2f} ms ({rec['tiles_per_s']:.1f} tiles/s)")
    return records


# -- end to end ----------------------------------------------------------------------------------------
class CountingBackend(Backend):
    """Forwards to ``inner`` and counts the tiles predicted (``tiles``); closing it leaves
    ``inner`` open."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.name, self.info, self.path = inner.name, inner.info, inner.path
        self.max_batch, self.fixed_size = inner.max_batch, inner.fixed_size
        self.tiles = 0

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.tiles += len(batch)
        return self.inner.predict(batch)

    def accepts(self, height: int, width: int) -> bool:
        return self.inner.accepts(height, width)

    def interrupt(self) -> None:
        self.inner.interrupt()


def end_to_end(segmenter, paths: Sequence[Path], runs: int = 2, progress: Progress | None = None,
               label: str = "end to end") -> dict:
    """``runs`` folder runs of ``segmenter`` (whose backend is a :class:`CountingBackend`) over
    ``paths`` into temporary folders; the fastest run's figures plus every run."""
    say = progress or (lambda line: None)
    counter = segmenter.backend
    records = []
    for k in range(runs):
        counter.tiles = 0
        with tempfile.TemporaryDirectory(prefix="flexunet-bench-") as tmp, PeakRSS() as rss:
            summary = segmenter.segment_folder(paths, Path(tmp) / "out")
        wall = summary.wall_seconds
        done = len(summary.done)
        rec = {"wall_seconds": wall, "slides": done, "tiles": counter.tiles,
               "slides_per_s": done / wall if wall > 0 else None,
               "tiles_per_s": counter.tiles / wall if wall > 0 else None,
               "stage_seconds": dict(summary.stage_seconds), "peak_rss_bytes": rss.peak,
               "rss_before_bytes": rss.start,
               "skipped": [{"path": str(p), "reason": r} for p, r in summary.skipped]}
        records.append(rec)
        say(f"{label} run {k + 1}/{runs}: {done} slides, {counter.tiles} tiles in {wall:.2f} s "
            f"({rec['slides_per_s'] or 0:.3f} slides/s), peak RSS {rss.peak / 2**20:.0f} MiB")
    best = min(records, key=lambda r: r["wall_seconds"])
    return {**best, "peak_rss_bytes": max(r["peak_rss_bytes"] for r in records),
            "runs": records, "reported": "fastest of the runs; peak_rss_bytes: highest of the runs"}


# -- the seed baseline ---------------------------------------------------------------------------------
def _keras_model(backend):
    """The Keras model inside a keras backend."""
    return backend.model


def seed_baseline(keras_backend, paths: Sequence[Path], progress: Progress | None = None) -> dict:
    """Time the seed API's tiled loop (:func:`runtime.seedstyle.seed_style_labels`) with
    ``keras_model.predict(b, verbose=0)`` per tile, from decode to the written mask, per image."""
    from flexunet.runtime.seedstyle import seed_style_labels

    say = progress or (lambda line: None)
    info = keras_backend.info
    th, tw = keras_backend.fixed_size or info.tile_size
    if th != tw:
        raise FlexunetError(f"{keras_backend.path}: the seed baseline needs a square model input, not {th}x{tw}")
    size, margin = int(tw), int(info.overlap)
    model = _keras_model(keras_backend)

    def predict_one(b):
        return model.predict(b, verbose=0)

    predict_one(np.zeros((1, size, size, info.channels), np.float32))  # warm-up (graph tracing)
    seconds, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="flexunet-seed-") as tmp:
        for path in paths:
            t = time.perf_counter()
            try:
                image = read_image(path)
            except ImageReadError as exc:
                skipped.append({"path": str(path), "reason": str(exc)})
                continue
            labels = seed_style_labels(info.preprocess(image), predict_one, size, margin=margin,
                                       bitwise_blending=True, threshold=info.threshold)
            write_image(Path(tmp) / f"{path.stem}.png", labels * np.uint8(255) if info.num_classes == 1 else labels)
            seconds.append(time.perf_counter() - t)
            say(f"seed baseline {path.name}: {seconds[-1]:.2f} s")
    total = sum(seconds)
    return {"kind": "seed", "model": str(keras_backend.path), "backend": keras_backend.name,
            "slides": len(seconds), "skipped": skipped, "seconds": total,
            "seconds_per_slide": total / len(seconds) if seconds else None,
            "slides_per_s": len(seconds) / total if total > 0 else None,
            "settings": {"tile": size, "margin": margin, "batch_size": 1, "bitwise_blending": True,
                         "predict": "keras_model.predict(tile, verbose=0)", "resized_margin_crops": True}}


# -- the whole benchmark -----------------------------------------------------------------------------------
def _model_summary(backend: Backend) -> dict:
    info = backend.info
    path = Path(backend.path) if backend.path is not None else None
    return {"path": str(path) if path else None, "bytes": path.stat().st_size if path and path.is_file() else None,
            "backend": backend.name, "precision": info.precision, "input": [info.height, info.width, info.channels],
            "num_classes": info.num_classes, "class_names": list(info.class_names), "multiple": info.multiple,
            "tile": list(info.tile_size), "overlap": info.overlap, "blend": info.blend,
            "max_batch": backend.max_batch, "fixed_size": list(backend.fixed_size) if backend.fixed_size else None}


def check_baseline(model: Path, baseline: str | None, keras: Path | None) -> Path | None:
    """The .keras model of the baseline (None without one); FlexunetError before any measurement
    when it is missing or TensorFlow is not installed."""
    if baseline is None:
        return None
    if baseline != "seed":
        raise FlexunetError(f"unknown baseline {baseline!r}; the only one is 'seed'")
    path = keras if keras is not None else (model if model.suffix.lower() == ".keras" else None)
    if path is None:
        raise FlexunetError(f"--baseline seed runs a Keras model: {model} is not .keras; pass --keras PATH "
                            "(the same model as .keras)")
    if path.suffix.lower() != ".keras" or not path.is_file():
        raise FlexunetError(f"{path}: --keras needs an existing .keras model")
    if importlib.util.find_spec("tensorflow") is None:
        raise MissingDependencyError("--baseline seed needs TensorFlow (pip install 'flexunet[train]')")
    return path


def run_bench(model: str | os.PathLike, images: Sequence[str | os.PathLike], *, backend: str = "auto",
              batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, repeat: int = 20, warmup: int = 3, runs: int = 2,
              batch_size: int | None = None, tile=None, overlap: int | None = None, blend: str | None = None,
              threads: int | None = None, config: str | os.PathLike | None = None, baseline: str | None = None,
              keras: str | os.PathLike | None = None, baseline_slides: int = 4,
              progress: Progress | None = None) -> dict:
    """Run the benchmark (see the module docstring); returns what bench.json holds.

    Args:
        model: ``.onnx``, ``.keras`` or ``.engine`` file; ``backend``, ``tile``, ``overlap``,
            ``blend``, ``threads``, ``config`` as for :class:`~runtime.segmenter.Segmenter`.
        images: image files and folders.
        batch_sizes: batch sizes of the latency sweep; ``repeat`` timed calls each after
            ``warmup`` untimed ones.
        runs: end-to-end folder runs (the fastest is reported).
        batch_size: batch size of the end-to-end runs (default: the sweep's highest tiles/s).
        baseline: ``"seed"`` to time the seed API's loop on the ``.keras`` model (``model`` itself
            or ``keras``) over the first ``baseline_slides`` images.

    Raises:
        FlexunetError: bad options, no images, a model that cannot be loaded.
    """
    from flexunet import __version__
    from flexunet.runtime.segmenter import Segmenter

    say = progress or (lambda line: None)
    model = Path(model)
    batch_sizes = parse_batch_sizes(batch_sizes if not isinstance(batch_sizes, str) else batch_sizes)
    for name, value, low in (("repeat", repeat, 1), ("warmup", warmup, 0), ("runs", runs, 1),
                             ("baseline_slides", baseline_slides, 1)):
        if value < low:
            raise FlexunetError(f"{name} must be at least {low}, got {value}")
    keras_path = check_baseline(model, baseline, Path(keras) if keras is not None else None)
    paths = expand_inputs(images)
    if not paths:
        raise FlexunetError(f"no images in {', '.join(map(str, images))}")
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t0 = time.perf_counter()
    loaded = load_backend(model, backend, threads=threads,
                          config=config if model.suffix.lower() == ".keras" else None)
    try:
        counter = CountingBackend(loaded)
        probe = Segmenter(counter, tile=tile, overlap=overlap, blend=blend, batch_size=1)
        say(f"backend: {loaded.name}; {probe.describe().rsplit(', batch', 1)[0]}")
        tiles, source = sample_tiles(paths, probe, max(batch_sizes))
        latency = latency_sweep(loaded, tiles, batch_sizes, repeat, warmup, say)
        del tiles
        fastest = max(latency, key=lambda r: r["tiles_per_s"] or 0.0)["batch_size"]
        e2e_batch = batch_size or fastest
        seg = Segmenter(counter, tile=tile, overlap=overlap, blend=blend, batch_size=e2e_batch)
        e2e = end_to_end(seg, paths, runs, say)
        result_baseline = None
        if keras_path is not None:
            subset = paths[:baseline_slides]
            ours = e2e if len(subset) == len(paths) else end_to_end(seg, subset, runs, say, "end to end (baseline slides)")
            same = keras_path.resolve() == model.resolve() and hasattr(loaded, "_model")
            kb = loaded if same else load_backend(keras_path, "keras", config=config)
            try:
                result_baseline = seed_baseline(kb, subset, say)
            finally:
                if not same:
                    kb.close()
            seed_rate, our_rate = result_baseline["slides_per_s"], ours["slides_per_s"]
            result_baseline["ours_slides"] = ours["slides"]
            result_baseline["ours_slides_per_s"] = our_rate
            result_baseline["ratio"] = our_rate / seed_rate if seed_rate and our_rate else None
            result_baseline["ratio_meaning"] = "ours / seed in slides per second, same images, same run"
        layout = seg.layout()
        data = {
            "tool": "flexunet bench", "flexunet_version": __version__, "date": started,
            "seconds": None,
            "machine": machine(),
            "model": _model_summary(loaded),
            "options": {"backend": backend, "batch_sizes": list(batch_sizes), "repeat": repeat, "warmup": warmup,
                        "runs": runs, "e2e_batch_size": seg.batch_size,
                        "e2e_batch_size_source": "--batch-size" if batch_size else "fastest in the sweep",
                        "tile": list(layout.tile) if layout.tile else None, "overlap": layout.overlap,
                        "blend": layout.blend, "threads": threads or cpu_threads(), "images": len(paths),
                        "latency_tiles": source, "baseline": baseline, "baseline_slides": baseline_slides},
            "latency": latency,
            "end_to_end": e2e,
            "baseline": result_baseline,
        }
        data["versions"] = data["machine"]["versions"]
        data["seconds"] = round(time.perf_counter() - t0, 3)
        return data
    finally:
        loaded.close()


# -- reports -----------------------------------------------------------------------------------------
def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.2f}"


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def to_markdown(data: dict) -> str:
    """bench.md: the figures of :func:`run_bench` as tables."""
    m, opts, e2e, mach = data["model"], data["options"], data["end_to_end"], data["machine"]
    tile = "x".join(map(str, opts["tile"])) if opts["tile"] else "whole image"
    lines = [
        f"# Benchmark: `{Path(m['path']).name if m['path'] else m['backend']}`", "",
        f"{data['date']}; backend {m['backend']}, precision {m['precision']}; tiles {tile}, overlap "
        f"{opts['overlap']}, {opts['blend']} blend; {opts['images']} images; {opts['threads']} threads.",
        f"Machine: {mach.get('cpu', '?')}, {mach.get('cores')} cores ({mach.get('usable_cores')} usable), "
        f"{mach.get('ram_gb', '?')} GB RAM, SIMD {' '.join(mach.get('simd', [])) or '—'}; {mach['platform']}, "
        f"Python {mach['python']}.", "",
        f"## Latency per batch ({opts['repeat']} timed calls after {opts['warmup']} warm-up, {opts['latency_tiles']})",
        "", "| batch | p50 ms | p90 ms | p99 ms | ms/tile (p50) | tiles/s |", "|---|---|---|---|---|---|",
    ]
    for r in data["latency"]:
        s = r["seconds"]
        lines.append(f"| {r['batch_size']}{' (split)' if r['split'] else ''} | {_ms(s['p50'])} | {_ms(s['p90'])} | "
                     f"{_ms(s['p99'])} | {_num(r['ms_per_tile']['p50'], '.2f')} | {_num(r['tiles_per_s'], '.1f')} |")
    lines += [
        "", f"## End to end (batch {opts['e2e_batch_size']}, fastest of {opts['runs']} runs)", "",
        "| measure | value |", "|---|---|",
        f"| slides | {e2e['slides']} ({len(e2e['skipped'])} skipped) |",
        f"| tiles | {e2e['tiles']} |",
        f"| wall | {e2e['wall_seconds']:.3f} s |",
        f"| slides/s | {_num(e2e['slides_per_s'])} |",
        f"| tiles/s | {_num(e2e['tiles_per_s'], '.1f')} |",
        f"| peak RSS | {e2e['peak_rss_bytes'] / 2**20:.0f} MiB (before: {e2e['rss_before_bytes'] / 2**20:.0f} MiB) |",
        "", "Busy seconds per stage (stages run concurrently, so they may add up to more than the wall time):", "",
        "| stage | seconds | % of wall |", "|---|---|---|",
    ]
    wall = e2e["wall_seconds"] or float("nan")
    for stage, sec in e2e["stage_seconds"].items():
        lines.append(f"| {stage} | {sec:.3f} | {100 * sec / wall:.1f} |")
    b = data.get("baseline")
    if b:
        lines += ["", "## Seed baseline", "",
                  f"The seed API's loop (per-tile `keras_model.predict`, batch 1, resized margin crops of "
                  f"{b['settings']['margin']} px, AND with a downscaled whole-image mask) on `{Path(b['model']).name}`, "
                  f"{b['slides']} slides, decode to written mask:", "",
                  "| measure | seed | ours |", "|---|---|---|",
                  f"| seconds/slide | {_num(b['seconds_per_slide'])} | "
                  f"{_num(1 / b['ours_slides_per_s'] if b['ours_slides_per_s'] else None)} |",
                  f"| slides/s | {_num(b['slides_per_s'])} | {_num(b['ours_slides_per_s'])} |", "",
                  f"**Ratio ours/seed: {_num(b['ratio'], '.2f')}x** (slides/s, same images, same run)."]
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in data["versions"].items()), ""]
    return "\n".join(lines)


def write_chart(data: dict, path: str | os.PathLike) -> str | None:
    """bench.png: latency per tile vs batch size, the stage breakdown (and the baseline ratio).
    Returns None when written, else why not (matplotlib is not installed)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "matplotlib is not installed; no chart (pip install matplotlib)"
    lat, e2e, b = data["latency"], data["end_to_end"], data.get("baseline")
    fig = Figure(figsize=(13 if b else 10, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3 if b else 2)
    ax = axes[0]
    xs = np.arange(len(lat))
    p50 = [r["ms_per_tile"]["p50"] for r in lat]
    p90 = [r["ms_per_tile"]["p90"] for r in lat]
    p99 = [r["ms_per_tile"]["p99"] for r in lat]
    ax.bar(xs, p50, color="#4C72B0", label="p50")
    ax.errorbar(xs, p50, yerr=[np.zeros(len(xs)), np.subtract(p99, p50)], fmt="none", ecolor="black",
                capsize=4, label="to p99")
    ax.plot(xs, p90, "o", color="#DD8452", label="p90")
    ax.set_xticks(xs, [str(r["batch_size"]) for r in lat])
    ax.set_xlabel("batch size")
    ax.set_ylabel("ms per tile")
    ax.set_title("predict latency per tile")
    ax.set_ylim(0, 1.35 * max(p99 + [1e-9]))
    ax.legend(loc="upper left", fontsize=8, ncol=3)
    twin = ax.twinx()
    twin.plot(xs, [r["tiles_per_s"] for r in lat], "-s", color="#55A868")
    twin.set_ylabel("tiles/s (p50)", color="#55A868")
    ax = axes[1]
    stages = list(e2e["stage_seconds"])
    ax.barh(stages[::-1], [e2e["stage_seconds"][s] for s in stages[::-1]], color="#8172B3")
    ax.axvline(e2e["wall_seconds"], color="black", linestyle="--", label=f"wall {e2e['wall_seconds']:.2f} s")
    ax.set_xlabel("busy seconds")
    ax.set_title(f"end to end: {_num(e2e['slides_per_s'])} slides/s")
    ax.legend(loc="lower right", fontsize=8)
    if b:
        ax = axes[2]
        rates = [b["ours_slides_per_s"] or 0.0, b["slides_per_s"] or 0.0]
        ax.bar(["flexunet", "seed loop"], rates, color=["#4C72B0", "#C44E52"])
        ax.set_ylabel("slides/s")
        ax.set_title(f"ours / seed: {_num(b['ratio'], '.2f')}x")
    fig.suptitle(f"{data['model']['backend']}, {data['machine'].get('cpu', '')}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return None


REPORT_FILES = ("bench.json", "bench.md", "bench.png")


def write_reports(data: dict, out_dir: str | os.PathLike) -> tuple[dict[str, Path], str | None]:
    """bench.json, bench.md and bench.png in ``out_dir``; returns the files and the note when the
    chart was skipped."""
    out = Path(out_dir)
    files = {"json": out / "bench.json", "markdown": out / "bench.md", "chart": out / "bench.png"}
    note = write_chart(data, files["chart"])
    if note is not None:
        files.pop("chart")
    data = {**data, "files": {k: str(v) for k, v in files.items()}, "chart_note": note}
    write_text(files["json"], json.dumps(data, indent=2) + "\n")
    markdown = to_markdown(data)
    if note is not None:
        markdown += f"\n({note})\n"
    write_text(files["markdown"], markdown)
    return files, note
