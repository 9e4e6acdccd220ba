"""The two timed measurements of ``flexunet bench``: the latency of ``backend.predict`` per batch size
on sample tiles, and end-to-end folder runs (decode to written masks) with their stage times and
peak resident memory."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from flexunet.core.errors import FlexunetError
from flexunet.runtime.backends import Backend
from flexunet.runtime.measure import PeakRSS, percentiles
from flexunet.runtime.tiles import image_tiles

DEFAULT_BATCH_SIZES = (1, 2, 4, 8)

Progress = Callable[[str], None]


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
    """``count`` pre-processed tiles of the segmenter's layout (a ``fit`` tile fitted to the first
    readable image) from at most ``count`` images, repeated when they hold fewer; random images
    pre-processed when none of those is readable; and which it was.

    Raises:
        FlexunetError: none of ``paths`` is readable (all of them were tried).
    """
    info = segmenter.info
    try:
        stack, source = image_tiles(list(paths)[:count], info, count, seed, layout=segmenter.layout()), "image tiles"
    except FlexunetError:
        if len(paths) <= count:  # every image was tried (each one named in a warning)
            raise no_images(len(paths)) from None
        th, tw = segmenter.layout().tile or info.tile_size
        noise = np.random.default_rng(seed).integers(0, 256, size=(th, tw, 3), dtype=np.uint8)
        stack, source = info.preprocess(noise)[None].astype(np.float32), "random tiles"
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


def no_images(total: int, first: str | None = None) -> FlexunetError:
    """The error of a benchmark none of whose ``total`` images could be segmented (``first``: the
    first one's reason)."""
    return FlexunetError(f"none of the {total} images could be read; nothing was measured"
                         + (f" (first: {first})" if first else ""))


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
    ``paths`` into temporary folders; the fastest run's figures, the highest peak RSS, and every run."""
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
        if not done:  # no report of 0 slides/s
            raise no_images(len(paths), next((item["reason"] for item in rec["skipped"]), None))
        records.append(rec)
        say(f"{label} run {k + 1}/{runs}: {done} slides, {counter.tiles} tiles in {wall:.2f} s "
            f"({rec['slides_per_s'] or 0:.3f} slides/s), peak RSS {rss.peak / 2**20:.0f} MiB")
    best = min(records, key=lambda r: r["wall_seconds"])
    return {**best, "peak_rss_bytes": max(r["peak_rss_bytes"] for r in records),
            "runs": records, "reported": "fastest of the runs; peak_rss_bytes: highest of the runs"}
