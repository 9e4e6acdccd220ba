"""Shared helpers for benchmark scripts: machine description, timing, peak RSS, result files."""
from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def machine() -> dict:
    """CPU model, cores, RAM, instruction-set flags that matter for inference, library versions."""
    import importlib.metadata as md

    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = next((l.split(":", 1)[1].split() for l in text.splitlines() if l.startswith("flags")), [])
        info["simd"] = sorted(f for f in flags if f.startswith(("avx", "amx")) or "vnni" in f)
    except OSError:
        pass
    try:
        import psutil

        info["ram_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    versions = {}
    for name in ("onnxruntime-gpu", "onnxruntime", "tensorflow", "keras", "tf2onnx", "onnx", "numpy",
                 "opencv-python-headless"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    info["versions"] = versions
    return info


def percentiles(samples: list[float]) -> dict:
    s = sorted(samples)

    def pct(p):
        if not s:
            return float("nan")
        k = (len(s) - 1) * p / 100.0
        lo, hi = int(k), min(int(k) + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (k - lo)

    return {"p50": pct(50), "p90": pct(90), "p99": pct(99), "mean": statistics.fmean(s) if s else float("nan"),
            "n": len(s)}


class PeakRSS:
    """Poll this process's (and its children's) resident memory in a thread; .peak in bytes."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = self.proc.memory_info().rss
        for c in self.proc.children(recursive=True):
            try:
                total += c.memory_info().rss
            except Exception:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def timeit(fn, repeat: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def write_results(name: str, data: dict, markdown: str | None = None) -> Path:
    """benchmarks/results/<name>.json (+ .md), with the machine description."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), **data}
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    if markdown is not None:
        md = RESULTS / f"{name}.md"
        md.with_suffix(".md.part").write_text(markdown)
        md.with_suffix(".md.part").replace(md)
    return path
