"""Shared helpers for benchmark scripts: interleaved timing and result files.

The machine description, latency percentiles and peak-RSS sampler are the runtime's own
(:mod:`flexunet.runtime.measure`, which ``flexunet bench`` uses), re-exported here.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flexunet.core.atomic import write_text  # noqa: E402
from flexunet.runtime.measure import PeakRSS, machine, percentiles  # noqa: E402,F401

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def timeit_interleaved(fns: dict, repeat: int, warmup: int = 1, settle: int = 1) -> dict[str, list[float]]:
    """Times of each of ``fns`` (name -> callable), called in turn ``repeat`` times, so that
    every one sees the same machine load: ratios between them stay fair on a shared machine.

    At each turn ``settle`` untimed calls come first, so that the timed call does not pay for
    switching models.  ONNX Runtime sessions that take turns should also be made without thread
    spinning (``OnnxBackend(..., spinning=False)``): idle worker threads spin for a while after a
    run, and on 2 cores the previous session's threads then compete with the current one
    (measured at batch 1: FP32 90 ms and INT8 53 ms per 512x512 tile timed in turn with spinning,
    58 and 26 ms each on its own)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            for _ in range(settle):
                fn()
            t = time.perf_counter()
            fn()
            out[k].append(time.perf_counter() - t)
    return out


def write_results(name: str, data: dict, markdown: str | None = None) -> Path:
    """benchmarks/results/<name>.json (+ .md), with the machine description."""
    data = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), **data}
    path = write_text(RESULTS / f"{name}.json", json.dumps(data, indent=2) + "\n")
    if markdown is not None:
        write_text(RESULTS / f"{name}.md", markdown)
    return path
