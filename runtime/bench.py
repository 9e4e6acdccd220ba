"""Benchmark a model on this machine: batch latency, end-to-end throughput, stage times, peak RSS.

What :func:`run_bench` measures, in one process and one run (warm-up always excluded), with the
model loaded once:

1. **latency** of ``backend.predict`` for each batch size, on real tiles of the model's tile size
   cut from the images (random tiles if none can be read): ``warmup`` untimed calls, then
   ``repeat`` timed calls -> p50/p90/p99 seconds per batch and tiles/s (batch size / p50);
2. **end to end**: :meth:`Segmenter.segment_folder` over the images into a temporary folder
   (decode, pre-process, batch, infer, blend, post-process, write; concurrent), ``runs`` times on
   the already-warm model; the fastest run is reported (every run is listed) -> slides/s, tiles/s,
   busy seconds per stage, and the peak resident memory of the process (polled in a thread);
3. optionally the **seed baseline** (``baseline="seed"``, :mod:`flexunet.runtime.bench_seed`) on
   the same Keras model and the first ``baseline_slides`` images; our end-to-end run on the same
   images gives the ratio ours/seed in slides/s.  When the benchmarked model is that ``.keras``
   file, the baseline runs on the model already loaded.

Both timings are in :mod:`flexunet.runtime.bench_timing`, the machine description in
:mod:`flexunet.runtime.measure`, the reports in :mod:`flexunet.runtime.bench_report`.  TensorFlow
is imported only for a ``.keras`` model or the seed baseline.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

from flexunet.core.errors import FlexunetError
from flexunet.core.imageio import expand_inputs
from flexunet.core.machine import cpu_threads
from flexunet.runtime.backends import Backend, load_backend
from flexunet.runtime.backends.base import KERAS_SUFFIXES
from flexunet.runtime.bench_seed import check_baseline, seed_baseline
from flexunet.runtime.bench_timing import (DEFAULT_BATCH_SIZES, CountingBackend, Progress, end_to_end,
                                           latency_sweep, parse_batch_sizes, sample_tiles)
from flexunet.runtime.layout import check_memory, tile_source
from flexunet.runtime.measure import flexunet_version, machine


def _model_summary(backend: Backend) -> dict:
    info = backend.info
    path = Path(backend.path) if backend.path is not None else None
    return {"path": str(path) if path else None, "bytes": path.stat().st_size if path and path.is_file() else None,
            "backend": backend.name, "precision": info.precision, "input": [info.height, info.width, info.channels],
            "num_classes": info.num_classes, "class_names": list(info.class_names), "multiple": info.multiple,
            "tile": list(info.tile_size), "overlap": info.overlap, "blend": info.blend,
            "max_batch": backend.max_batch, "fixed_size": list(backend.fixed_size) if backend.fixed_size else None}


def _check_counts(**counts: tuple[int, int]) -> None:
    for name, (value, low) in counts.items():
        if value < low:
            raise FlexunetError(f"{name} must be at least {low}, got {value}")


def _probe(backend: CountingBackend, model: Path, tile, overlap: int | None, blend: str | None, largest_batch: int,
           memory_budget: int | None = None):
    """A Segmenter of the benchmark's layout (batch 1), once batches of ``largest_batch`` tiles are
    known to fit in memory (:func:`~flexunet.runtime.layout.check_memory`)."""
    from flexunet.runtime.segmenter import Segmenter

    probe = Segmenter(backend, tile=tile, overlap=overlap, blend=blend, batch_size=1, memory_budget=memory_budget)
    try:
        check_memory(probe.layout(), backend.info, largest_batch, tile_source(tile, backend.fixed_size))
    except FlexunetError as exc:
        raise FlexunetError(f"{model}: {exc}") from None
    return probe


def _options(seg, given: dict, batch_size: int | None, threads: int | None, images: int, latency_tiles: str,
             baseline: dict) -> dict:
    """bench.json's options: those ``given``, what the run made of the others, ``baseline``'s."""
    layout = seg.layout()
    return {**given, "e2e_batch_size": seg.batch_size,
            "e2e_batch_size_source": "--batch-size" if batch_size else "fastest in the sweep",
            "tile": "fit" if seg.fit else list(layout.tile) if layout.tile else None,
            "overlap": layout.overlap, "blend": layout.blend, "threads": threads or cpu_threads(),
            "images": images, "latency_tiles": latency_tiles, **baseline}


def _baseline(loaded: Backend, model: Path, keras_path: Path, config, seg, paths: Sequence[Path], e2e: dict,
              runs: int, slides: int, say: Progress) -> dict:
    """The seed baseline on the first ``slides`` images with our end-to-end figures on the same
    images (``e2e`` when that is all of them); it reuses ``loaded`` when the benchmarked model is
    the baseline's ``.keras`` file (only the keras backend loads one)."""
    subset = paths[:slides]
    ours = e2e if len(subset) == len(paths) else end_to_end(seg, subset, runs, say, "end to end (baseline slides)")
    same = keras_path.resolve() == model.resolve()
    kb = loaded if same else load_backend(keras_path, "keras", config=config)
    try:
        result = seed_baseline(kb, subset, say)
    finally:
        if not same:
            kb.close()
    seed_rate, our_rate = result["slides_per_s"], ours["slides_per_s"]
    result["ours_slides"] = ours["slides"]
    result["ours_slides_per_s"] = our_rate
    result["ratio"] = our_rate / seed_rate if seed_rate and our_rate else None
    result["ratio_meaning"] = "ours / seed in slides per second, same images, same run"
    return result


def run_bench(model: str | os.PathLike, images: Sequence[str | os.PathLike], *, backend: str = "auto",
              batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, repeat: int = 20, warmup: int = 3, runs: int = 2,
              batch_size: int | None = None, tile=None, overlap: int | None = None, blend: str | None = None,
              threads: int | None = None, config: str | os.PathLike | None = None, baseline: str | None = None,
              keras: str | os.PathLike | None = None, baseline_slides: int = 4,
              memory_budget: int | None = None, progress: Progress | None = None) -> dict:
    """Run the benchmark (see the module docstring); returns what bench.json holds.

    Args:
        model: ``.onnx``, ``.keras`` or ``.engine`` file; ``backend``, ``tile``, ``overlap``,
            ``blend``, ``threads``, ``config`` as for :class:`~flexunet.runtime.segmenter.Segmenter`.
        images: image files and folders.
        batch_sizes: batch sizes of the latency sweep; ``repeat`` timed calls each after
            ``warmup`` untimed ones.
        runs: end-to-end folder runs (the fastest is reported).
        batch_size: batch size of the end-to-end runs (default: the sweep's highest tiles/s).
        memory_budget: bytes for one batch; bounds ``fit`` tiles as for ``flexunet infer``.
        baseline: ``"seed"`` to time the seed API's loop on the ``.keras`` model (``model`` itself
            or ``keras``) over the first ``baseline_slides`` images.

    Raises:
        FlexunetError: bad options, no images or none readable, a model that cannot be loaded, tile
            batches too large for the memory available.
    """
    from flexunet.runtime.segmenter import Segmenter

    say = progress or (lambda line: None)
    model = Path(model)
    batch_sizes = parse_batch_sizes(batch_sizes)
    _check_counts(repeat=(repeat, 1), warmup=(warmup, 0), runs=(runs, 1), baseline_slides=(baseline_slides, 1))
    keras_path = check_baseline(model, baseline, Path(keras) if keras is not None else None)
    paths = expand_inputs(images)
    if not paths:
        raise FlexunetError(f"no images in {', '.join(map(str, images))}")
    started, t0 = time.strftime("%Y-%m-%d %H:%M:%S"), time.perf_counter()
    loaded = load_backend(model, backend, threads=threads,
                          config=config if model.suffix.lower() in KERAS_SUFFIXES else None)
    try:
        counter = CountingBackend(loaded)
        probe = _probe(counter, model, tile, overlap, blend, max([*batch_sizes, batch_size or 1]), memory_budget)
        say(f"backend: {loaded.name}; {probe.describe().rsplit(', batch', 1)[0]}")
        tiles, source = sample_tiles(paths, probe, max(batch_sizes))
        latency = latency_sweep(loaded, tiles, batch_sizes, repeat, warmup, say)
        del tiles
        fastest = max(latency, key=lambda r: r["tiles_per_s"] or 0.0)["batch_size"]
        seg = Segmenter(counter, tile=tile, overlap=overlap, blend=blend, batch_size=batch_size or fastest,
                        memory_budget=memory_budget)
        e2e = end_to_end(seg, paths, runs, say)
        result_baseline = None if keras_path is None else \
            _baseline(loaded, model, keras_path, config, seg, paths, e2e, runs, baseline_slides, say)
        options = _options(seg, dict(backend=backend, batch_sizes=list(batch_sizes), repeat=repeat, warmup=warmup,
                                     runs=runs), batch_size, threads, len(paths), source,
                           dict(baseline=baseline, baseline_slides=baseline_slides))
        mach = machine()
        return {"tool": "flexunet bench", "flexunet_version": flexunet_version(), "date": started,
                "seconds": round(time.perf_counter() - t0, 3), "machine": mach, "model": _model_summary(loaded),
                "options": options, "latency": latency, "end_to_end": e2e, "baseline": result_baseline,
                "versions": mach["versions"]}
    finally:
        loaded.close()
