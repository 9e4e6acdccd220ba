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
             "openvino", "tensorrt", "tensorflow", "keras", "tf2onnx", "psutil", "click", "matplotlib")


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


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in BF16 natively (AVX512_BF16 or AMX-BF16)."""
    return bool(set(cpu_info()[1]) & {"avx512_bf16", "amx_bf16"})


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


#: cgroup files (v2, then v1) of a container's memory limit and its current use.
_CGROUP_MEMORY = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def _cgroup_free() -> int | None:
    """Bytes left under this container's memory limit (None without a limit)."""
    for limit_file, usage_file in _CGROUP_MEMORY:
        try:
            limit, usage = Path(limit_file).read_text().strip(), Path(usage_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and usage.isdigit() and int(limit) < 1 << 60:  # "max" or a huge number: none
            return max(0, int(limit) - int(usage))
        return None
    return None


def _address_space_free(psutil) -> int | None:
    """Bytes left under this process's address-space limit (``ulimit -v``; None without one)."""
    try:
        import resource
    except ImportError:  # not Unix
        return None
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft == resource.RLIM_INFINITY:
        return None
    return max(0, soft - psutil.Process().memory_info().vms)


def available_memory() -> int:
    """Bytes this process can still allocate: the machine's available memory, or less when a
    container's memory limit (cgroup) or this process's address-space limit (``ulimit -v``) leaves
    less."""
    import psutil

    limits = [psutil.virtual_memory().available, _cgroup_free(), _address_space_free(psutil)]
    return min(v for v in limits if v is not None)


def total_memory() -> int | None:
    """Bytes of this machine's physical memory (None where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
