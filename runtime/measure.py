"""Measuring on this machine, for ``flexunet bench``, ``flexunet parity`` and the benchmark scripts:
the machine's description (from :mod:`flexunet.core.machine`) and flexunet's version, percentiles
of timing samples, and the peak resident memory of a block of work."""
from __future__ import annotations

import os
import platform
import statistics
import threading
from typing import Sequence

from flexunet.core.machine import cpu_info, cpu_threads, library_versions


def flexunet_version() -> str:
    """This installation's flexunet version, from the package metadata (as ``flexunet.__version__``,
    which the runtime, a lower layer, does not import)."""
    return library_versions(("flexunet",)).get("flexunet", "0+unknown")


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
    """Peak resident memory (bytes) of this process and its children while the block runs: sampled
    on entry, every ``interval`` seconds by a thread, and on exit.

        with PeakRSS() as rss:
            work()
        print(rss.peak - rss.start)
    """

    def __init__(self, interval: float = 0.05):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.start = 0
        self.peak = 0
        self.samples = 0  # taken by the thread
        self._sampled = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flexunet-rss", daemon=True)

    def current(self) -> int:
        """Resident bytes of this process and its children now."""
        total = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except Exception:  # noqa: BLE001 -- a child that just exited
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            value = self.current()
            with self._sampled:
                self.peak = max(self.peak, value)
                self.samples += 1
                self._sampled.notify_all()

    def wait_samples(self, n: int = 1, timeout: float | None = None) -> bool:
        """Block until the thread has taken ``n`` more samples (True), or ``timeout`` seconds have
        passed (False): memory held until then is in :attr:`peak`."""
        with self._sampled:
            target = self.samples + n
            return self._sampled.wait_for(lambda: self.samples >= target, timeout)

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = self.current()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())
