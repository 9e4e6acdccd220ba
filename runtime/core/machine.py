"""Facts about this machine and installation, read once here: CPU model and flags, usable cores,
library versions (from package metadata; nothing is imported), and file digests."""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Sequence

#: Libraries whose versions are recorded in reports and model metadata (those installed).
LIBRARIES = ("flexunet", "numpy", "opencv-python-headless", "onnxruntime-gpu", "onnxruntime", "onnx",
             "tensorrt", "tensorflow", "keras", "tf2onnx", "psutil", "click", "matplotlib")


def cpu_threads() -> int:
    """Number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str | None, tuple[str, ...]]:
    """(CPU model name, feature flags) from /proc/cpuinfo; (None, ()) where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, ()
    model, flags = None, ()
    for line in text.splitlines():
        if model is None and line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        elif not flags and line.startswith("flags"):
            flags = tuple(line.split(":", 1)[1].split())
        if model is not None and flags:
            break
    return model, flags


def cpu_has_vnni() -> bool:
    """Whether this CPU has VNNI (AVX512-VNNI or AVX-VNNI): 8-bit dot products without saturation."""
    return bool(set(cpu_info()[1]) & {"avx512_vnni", "avx_vnni"})


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str]:
    """Python's and the installed versions of ``names`` (from package metadata)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def sha256_file(path: str | os.PathLike, digest=None) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (``digest``: a hashlib object to update)."""
    digest = digest or hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
