"""INT8 calibration of a TensorRT engine built from an ONNX model without Q/DQ nodes (implicit
quantisation, deprecated in TensorRT 10 but supported): an ``IInt8EntropyCalibrator2`` fed from
calibration tiles, and its cache.

A cache belongs to one model and one calibration set: ``<cache>.json`` records the ONNX file's and
the tiles' sha256, and a cache made for another model or other tiles is ignored (recalibrated).  A
cache made for this model lets a later build skip calibration, with or without the tiles.

Importing this module imports neither TensorRT nor cuda-python; everything but
:func:`make_calibrator` and the device buffer of :class:`CalibrationFeed` works without them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flexunet.core.atomic import write_bytes, write_text
from flexunet.core.errors import FlexunetError, MissingDependencyError
from flexunet.runtime.backends.tensorrt_platform import cuda_call, cudart

log = logging.getLogger("flexunet.tensorrt")


def calibration_batch_size(n_tiles: int, min_batch: int, opt_batch: int, max_batch: int) -> int:
    """Batch size for INT8 calibration: the profile's opt batch, fewer if there are fewer tiles."""
    if n_tiles < max(1, min_batch):
        raise FlexunetError(f"{n_tiles} calibration tile(s) are fewer than the engine's minimum batch {min_batch}")
    return max(min_batch, min(opt_batch, max_batch, n_tiles))


def calibration_batches(tiles: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive ``(batch_size, H, W, C)`` C-contiguous float32 batches of ``tiles``.

    TensorRT calibrates with one fixed shape, so a last incomplete batch is dropped.  Arguments
    are checked when this is called, not when iteration starts.
    """
    tiles = np.asarray(tiles)
    if tiles.ndim != 4 or len(tiles) == 0:
        raise ValueError(f"calibration tiles must be a non-empty (N, H, W, C) array, got shape {tiles.shape}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    batch_size = int(batch_size)
    full = len(tiles) // batch_size
    if full * batch_size < len(tiles):
        log.info(f"calibration: {len(tiles) - full * batch_size} tile(s) beyond the last full batch "
                 f"of {batch_size} are not used")

    def gen():
        for i in range(full):
            yield np.ascontiguousarray(tiles[i * batch_size:(i + 1) * batch_size], dtype=np.float32)

    return gen()


def calibration_cache_matches(meta: dict | None, onnx_sha256: str, tiles_sha256: str | None = None) -> bool:
    """Whether a calibration cache described by ``meta`` (its ``<cache>.json``) was made for this
    ONNX file and, when tiles are given, for these tiles."""
    if not isinstance(meta, dict) or meta.get("onnx_sha256") != onnx_sha256:
        return False
    return tiles_sha256 is None or meta.get("tiles_sha256") == tiles_sha256


def tiles_sha256(tiles: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tiles, dtype=np.float32).tobytes()).hexdigest()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@dataclass
class CalibrationPlan:
    """How an engine gets its INT8 ranges: ``calibrate`` (INT8 without Q/DQ nodes) from ``tiles``
    or from the ``cache`` when ``use_cache`` (it was made for this model and these tiles)."""

    calibrate: bool
    tiles: np.ndarray | None
    cache: Path | None
    use_cache: bool
    onnx_sha256: str
    tiles_sha256: str | None

    @property
    def meta(self) -> Path | None:
        """The cache's record of the model and tiles it was made for."""
        return Path(str(self.cache) + ".json") if self.cache else None


def calibration_plan(onnx_path: Path, precision: str, qdq: bool, onnx_sha256: str, tiles: np.ndarray | None,
                     cache: str | Path | None) -> CalibrationPlan:
    """Decide how the engine of ``onnx_path`` is calibrated; FlexunetError when an INT8 engine has
    neither tiles, nor a cache made for this model, nor Q/DQ nodes."""
    calibrate = precision == "int8" and not qdq
    cache = Path(cache) if cache else None
    tiles_sha = tiles_sha256(tiles) if calibrate and tiles is not None else None
    plan = CalibrationPlan(calibrate, tiles, cache, False, onnx_sha256, tiles_sha)
    found = calibrate and cache is not None and cache.is_file()
    plan.use_cache = (found and cache.stat().st_size > 0
                      and calibration_cache_matches(_read_json(plan.meta), onnx_sha256, tiles_sha))
    if found and not plan.use_cache:
        log.info(f"{cache}: calibration cache made for another model or other tiles; not used")
    if calibrate and tiles is None and not plan.use_cache:
        raise FlexunetError(f"{onnx_path}: an INT8 engine needs calibration tiles (calibration images), a "
                            "calibration cache made for this model, or a Q/DQ-quantised ONNX")
    return plan


class CalibrationFeed:
    """What the INT8 calibrator does, apart from being a TensorRT class (:func:`make_calibrator`
    makes one of both): it feeds ``tiles`` in batches through one device buffer, offers TensorRT
    the cache file only when ``use_cache`` and writes the new cache there.  No exception crosses
    into TensorRT: the first one is kept in :attr:`error` and ends calibration."""

    def __init__(self, tiles: np.ndarray | None, batch_size: int, cache_path: Path | None, use_cache: bool):
        self.batch_size = batch_size
        self.cache_path = cache_path
        self.use_cache = use_cache
        self.n_tiles = 0 if tiles is None else int(len(tiles))
        self.batches = calibration_batches(tiles, batch_size) if tiles is not None else iter(())
        self.fed = 0
        self.cache_hit = False
        self.wrote_cache = False
        self.error: BaseException | None = None
        self.device_ptr = None
        if tiles is not None:
            nbytes = batch_size * math.prod(tiles.shape[1:]) * np.dtype(np.float32).itemsize
            self.device_ptr = cuda_call(cudart().cudaMalloc(nbytes), "cudaMalloc (calibration batch)")

    def get_batch_size(self):
        return self.batch_size

    def get_batch(self, names):
        try:
            batch = next(self.batches, None)
            if batch is None:
                return None
            rt = cudart()
            cuda_call(rt.cudaMemcpy(self.device_ptr, batch.ctypes.data, batch.nbytes,
                                    rt.cudaMemcpyKind.cudaMemcpyHostToDevice), "cudaMemcpy (calibration batch)")
            self.fed += 1
            return [int(self.device_ptr)]
        except BaseException as exc:
            self.error = exc
            return None

    def read_calibration_cache(self):
        p = self.cache_path
        if self.use_cache and p is not None and p.is_file() and p.stat().st_size > 0:
            self.cache_hit = True
            log.info(f"INT8 calibration cache reused: {p}")
            return p.read_bytes()
        return None

    def write_calibration_cache(self, cache):
        if self.cache_path is None:
            return
        try:
            write_bytes(self.cache_path, bytes(cache))
            self.wrote_cache = True
        except BaseException as exc:
            self.error = exc

    def free(self):
        if self.device_ptr is not None:
            cudart().cudaFree(self.device_ptr)
            self.device_ptr = None

    def record(self, plan: CalibrationPlan, onnx_path: Path) -> dict:
        """After the build: raise the error calibration met, record a new cache's model and tiles
        in ``<cache>.json``, and return the sidecar's calibration entry."""
        if self.error is not None:
            raise FlexunetError(f"{onnx_path}: INT8 calibration failed ({self.error})")
        if self.wrote_cache:
            write_text(plan.meta, json.dumps({"onnx_sha256": plan.onnx_sha256, "tiles_sha256": plan.tiles_sha256})
                       + "\n")
        return {"cache": str(plan.cache) if plan.cache else None, "cache_hit": self.cache_hit,
                "batches": self.fed, "batch_size": self.batch_size, "tiles": self.n_tiles}


def make_calibrator(trt, tiles: np.ndarray | None, batch_size: int, cache_path: Path | None, use_cache: bool):
    """A TensorRT ``IInt8EntropyCalibrator2`` that is a :class:`CalibrationFeed`."""
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise MissingDependencyError(
            f"TensorRT {trt.__version__} has no INT8 calibrator (removed in TensorRT 11); build from a "
            "Q/DQ ONNX (explicit quantisation) or with TensorRT 10.x")

    class EntropyCalibrator(CalibrationFeed, trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)  # the binding's trampoline must be initialised
            CalibrationFeed.__init__(self, tiles, batch_size, cache_path, use_cache)

    return EntropyCalibrator()


def attach_calibrator(trt, builder, config, input_name: str, shapes: dict, plan: CalibrationPlan):
    """Give ``config`` a calibrator for ``plan`` (and the one fixed shape TensorRT calibrates with:
    the profile's opt batch, fewer with fewer tiles); returns it, or None when nothing calibrates."""
    if not plan.calibrate:
        return None
    tiles = None
    if plan.tiles is not None:
        tiles = np.asarray(plan.tiles)
        if tiles.ndim != 4 or tuple(tiles.shape[1:]) != tuple(shapes["opt"][1:]):
            h, w, c = shapes["opt"][1:]
            raise FlexunetError(f"calibration tiles have shape {tiles.shape}; the engine input is (N, {h}, {w}, {c})")
    n_tiles = len(tiles) if tiles is not None else shapes["opt"][0]
    batch = calibration_batch_size(n_tiles, shapes["min"][0], shapes["opt"][0], shapes["max"][0])
    calib_shape = (batch,) + tuple(shapes["opt"][1:])
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, calib_shape, calib_shape, calib_shape)
    calibrator = make_calibrator(trt, tiles, batch, plan.cache, plan.use_cache)
    config.int8_calibrator = calibrator
    config.set_calibration_profile(profile)
    return calibrator
