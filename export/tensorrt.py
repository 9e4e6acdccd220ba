"""Build a TensorRT engine from a flexunet ONNX model (TensorRT 10.x; 8.6 works too).

One function, :func:`build_engine`, in the spirit of Polygraphy's
``EngineFromNetwork(NetworkFromOnnxPath(p), CreateConfig(...))``: parse the ONNX (explicit batch),
add one optimisation profile over batch sizes on the NHWC input, set the precision, optionally
calibrate INT8, build, and write the serialised engine plus its JSON sidecar ``<engine>.json``
(both atomically).  The sidecar records the build settings, the TensorRT version, the GPU and its
compute capability, the CUDA driver/runtime versions, the model's :class:`ModelInfo` and the
ONNX file's sha256; the runtime (:mod:`runtime.backends.tensorrt`) refuses an engine whose sidecar
names another TensorRT version or GPU.

INT8 comes two ways:

* the ONNX already holds QuantizeLinear/DequantizeLinear nodes (explicit quantisation, the way
  TensorRT 10 recommends): built with the INT8 flag and no calibrator;
* otherwise (implicit quantisation, deprecated in TensorRT 10 but supported): an
  ``IInt8EntropyCalibrator2`` fed from ``calibration_tiles``; its cache is written to
  ``calibration_cache`` and read back by later builds, which then skip calibration.  A cache
  belongs to one model and one calibration set: ``<cache>.json`` records the ONNX file's and the
  tiles' sha256, and a cache made for another model or other tiles is ignored (recalibrated).

A tactic timing cache (``timing_cache``) is loaded when present and saved after each build, so
rebuilds of the same or similar networks on the same GPU are faster.

Importing this module imports neither TensorRT nor cuda-python; :func:`check_available` says in
one line why a build cannot happen here.  The pure parts (settings, profile shapes, calibration
batching, Q/DQ detection, sidecar comparison) are separate functions, tested without a GPU.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from flexunet.core.atomic import write_bytes, write_text
from flexunet.runtime.backends.tensorrt import (  # re-exported: the runtime owns these, export uses them
    SIDECAR_FORMAT,
    check_available,
    compatibility_problem,
    cuda_call,
    cudart,
    current_platform,
    import_tensorrt,
    load_engine_checked,
    sha256_bytes,
    sidecar_path,
    trt_logger,
)
from flexunet.core.errors import FlexunetError, MissingDependencyError, ModelError
from flexunet.core.modelinfo import ModelInfo

__all__ = [
    "PRECISIONS", "build_engine", "check_available", "load_engine_checked", "compatibility_problem",
    "sidecar_path", "current_platform", "validate_settings", "profile_shapes", "calibration_batches",
    "calibration_batch_size", "calibration_cache_matches", "has_qdq_nodes",
]

log = logging.getLogger("flexunet.tensorrt")

PRECISIONS = ("fp32", "fp16", "int8")
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
SIDECAR_SCHEMA = 1


# ------------------------------------------------------------------------------------------------
# pure helpers
# ------------------------------------------------------------------------------------------------
def validate_settings(precision: str, min_batch: int, opt_batch: int, max_batch: int,
                      workspace_gb: float) -> None:
    """Raise FlexunetError (one line) for an unknown precision, bad batch range or workspace."""
    if precision not in PRECISIONS:
        raise FlexunetError(f"TensorRT precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    try:
        ok = all(int(b) == b for b in (min_batch, opt_batch, max_batch)) and 1 <= min_batch <= opt_batch <= max_batch
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise FlexunetError(f"TensorRT batch sizes must be integers with 1 <= min ({min_batch}) <= "
                            f"opt ({opt_batch}) <= max ({max_batch})")
    if not workspace_gb or workspace_gb <= 0:
        raise FlexunetError(f"TensorRT workspace must be > 0 GB, not {workspace_gb}")


def profile_shapes(dims: list[int | None], min_batch: int, opt_batch: int, max_batch: int,
                   info: ModelInfo | None = None, where: str = "model") -> dict[str, tuple[int, ...]]:
    """Min/opt/max NHWC shapes of the optimisation profile.

    Args:
        dims: the network input's ``[N, H, W, C]``, None for a dynamic dimension.
        min_batch, opt_batch, max_batch: the batch range (ignored, with a warning, when the ONNX
            fixes the batch size).
        info: the model's metadata: a dynamic ``H``/``W`` becomes ``info.tile_size`` (the profile
            fixes the spatial size: tiled inference always feeds whole tiles), a dynamic ``C``
            becomes ``info.channels``.
        where: the file named in error messages.

    Returns:
        ``{"min": (n, h, w, c), "opt": ..., "max": ...}``.
    """
    if len(dims) != 4:
        raise ModelError(f"{where}: input shape {list(dims)} is not NHWC (4-D)")
    n, h, w, c = dims
    if h is None or w is None or c is None:
        if info is None:
            raise ModelError(f"{where}: the input size is dynamic {list(dims)}; pass the model's ModelInfo "
                             "(its tile size fixes the engine's input size)")
        th, tw = info.tile_size
        h = th if h is None else h
        w = tw if w is None else w
        c = info.channels if c is None else c
    if info is not None and c != info.channels:
        raise ModelError(f"{where}: the input has {c} channels in its last axis but the model metadata says "
                         f"{info.channels} (flexunet models take NHWC input)")
    if n is not None:
        if (min_batch, opt_batch, max_batch) != (n, n, n):
            log.warning(f"{where}: the ONNX fixes the batch size at {n}; building for batch {n} only "
                        "(export with a dynamic batch to use a range)")
        min_batch = opt_batch = max_batch = n
    return {"min": (min_batch, h, w, c), "opt": (opt_batch, h, w, c), "max": (max_batch, h, w, c)}


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


def _graph_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graph_nodes(attr.g)
            for g in attr.graphs:
                yield from _graph_nodes(g)


def has_qdq_nodes(model) -> bool:
    """True if an ``onnx.ModelProto`` holds QuantizeLinear/DequantizeLinear nodes (explicit INT8),
    in its graph, its subgraphs or its local functions."""
    nodes = list(_graph_nodes(model.graph))
    nodes += [n for f in model.functions for n in f.node]
    return any(n.op_type in QDQ_OPS for n in nodes)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_onnx(path: Path):
    import onnx

    try:
        return onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{path}: not a readable ONNX model ({' '.join(str(exc).split())})") from None


# ------------------------------------------------------------------------------------------------
# TensorRT pieces (only called once TensorRT and a GPU are known to be here)
# ------------------------------------------------------------------------------------------------
def _set_flag(trt, config, name: str) -> None:
    flag = getattr(trt.BuilderFlag, name, None)
    if flag is None:
        raise MissingDependencyError(
            f"TensorRT {trt.__version__} has no BuilderFlag.{name} (removed in TensorRT 11, which needs "
            "strongly typed or Q/DQ models); build with TensorRT 10.x")
    config.set_flag(flag)


def _configure_precision(trt, builder, config, precision: str, gpu: str) -> list[str]:
    """Set builder flags for ``precision``; returns their names (for the sidecar)."""
    flags: list[str] = []
    fast16 = getattr(builder, "platform_has_fast_fp16", None)  # deprecated in 10, gone in 11
    if precision == "fp32":
        tf32 = getattr(trt.BuilderFlag, "TF32", None)
        if tf32 is not None:  # TF32 is on by default; keep FP32 convolutions exact
            config.clear_flag(tf32)
        return flags
    if precision == "fp16":
        if fast16 is False:
            raise MissingDependencyError(f"{gpu} has no fast FP16; build the engine with precision fp32")
        _set_flag(trt, config, "FP16")
        return ["FP16"]
    fast8 = getattr(builder, "platform_has_fast_int8", None)
    if fast8 is False:
        raise MissingDependencyError(f"{gpu} has no fast INT8; build the engine with precision fp16 or fp32")
    _set_flag(trt, config, "INT8")
    flags.append("INT8")
    if fast16:  # layers left unquantised may run in FP16 rather than FP32
        _set_flag(trt, config, "FP16")
        flags.append("FP16")
    return flags


def _make_calibrator(trt, tiles: np.ndarray | None, batch_size: int, cache_path: Path | None,
                     use_cache: bool):
    """An IInt8EntropyCalibrator2 feeding ``tiles`` in batches through one device buffer; it offers
    TensorRT the cache file only when ``use_cache`` and writes the new cache there."""
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise MissingDependencyError(
            f"TensorRT {trt.__version__} has no INT8 calibrator (removed in TensorRT 11); build from a "
            "Q/DQ ONNX (explicit quantisation) or with TensorRT 10.x")
    rt = cudart()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)  # the binding's trampoline must be initialised
            self.batch_size = batch_size
            self.cache_path = cache_path
            self.batches = calibration_batches(tiles, batch_size) if tiles is not None else iter(())
            self.fed = 0
            self.cache_hit = False
            self.wrote_cache = False
            self.error: BaseException | None = None
            self.device_ptr = None
            if tiles is not None:
                nbytes = batch_size * math.prod(tiles.shape[1:]) * np.dtype(np.float32).itemsize
                self.device_ptr = cuda_call(rt.cudaMalloc(nbytes), "cudaMalloc (calibration batch)")

        def get_batch_size(self):
            return self.batch_size

        def get_batch(self, names):
            # never let an exception cross into TensorRT: remember it and end calibration
            try:
                batch = next(self.batches, None)
                if batch is None:
                    return None
                cuda_call(rt.cudaMemcpy(self.device_ptr, batch.ctypes.data, batch.nbytes,
                                        rt.cudaMemcpyKind.cudaMemcpyHostToDevice), "cudaMemcpy (calibration batch)")
                self.fed += 1
                return [int(self.device_ptr)]
            except BaseException as exc:
                self.error = exc
                return None

        def read_calibration_cache(self):
            p = self.cache_path
            if use_cache and p is not None and p.is_file() and p.stat().st_size > 0:
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
                rt.cudaFree(self.device_ptr)
                self.device_ptr = None

    return EntropyCalibrator()


def _use_timing_cache(config, path: Path | None) -> bool:
    """Attach a timing cache to ``config``: the file's when it is usable, else an empty one.
    Returns whether the file's cache was loaded."""
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
    loaded = False
    if data:
        try:
            cache = config.create_timing_cache(data)
            loaded = cache is not None and bool(config.set_timing_cache(cache, ignore_mismatch=False))
        except Exception:
            loaded = False
        if not loaded:
            log.warning(f"{path}: timing cache not usable with this TensorRT/GPU; starting a new one")
    if not loaded:
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return loaded


def _save_timing_cache(config, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is not None:
        write_bytes(path, bytes(memoryview(cache.serialize())))


def _parse_onnx(trt, builder, logger, onnx_path: Path):
    major = int(str(trt.__version__).split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves external weights beside the file
        errors = [" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors)]
        first = errors[0] if errors else logger.last_error()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ModelError(f"{onnx_path}: TensorRT cannot parse this ONNX: {first}{more}")
    return network, parser  # the parser owns weights the network refers to: keep it alive


# ------------------------------------------------------------------------------------------------
# the builder
# ------------------------------------------------------------------------------------------------
def build_engine(onnx_path: str | Path, engine_path: str | Path, precision: str = "fp16",
                 min_batch: int = 1, opt_batch: int = 4, max_batch: int = 8,
                 calibration_tiles: np.ndarray | None = None, calibration_cache: str | Path | None = None,
                 timing_cache: str | Path | None = None, workspace_gb: float = 4,
                 info: ModelInfo | None = None, device: int = 0) -> dict:
    """Build a serialised TensorRT engine and its sidecar from a flexunet ONNX model.

    Args:
        onnx_path: the model (NHWC float32 input; dynamic batch; fixed or dynamic spatial size).
        engine_path: where to write the engine; the sidecar goes to ``<engine_path>.json``.
        precision: ``"fp32"`` (TF32 off), ``"fp16"`` or ``"int8"`` (with FP16 for unquantised
            layers where the GPU has fast FP16).
        min_batch, opt_batch, max_batch: the optimisation profile's batch range (tiles per call).
        calibration_tiles: ``(N, H, W, C)`` float32 pre-processed model inputs for INT8 calibration
            (not needed for a Q/DQ model, or when ``calibration_cache`` exists).
        calibration_cache: INT8 calibration cache file, read if present, written after calibrating.
        timing_cache: tactic timing cache file, read if present and written after the build.
        workspace_gb: builder workspace memory limit.
        info: the model's metadata (default: read from the ONNX metadata).
        device: CUDA device to build on.

    Returns:
        A report: the sidecar's content plus ``engine``, ``sidecar`` (paths), ``bytes`` and
        ``seconds`` (build time).

    Raises:
        FlexunetError: bad settings or calibration data.  ModelError: unreadable/unparsable ONNX,
        unsupported input layout, or a failed build.  MissingDependencyError (exit 2): TensorRT, a
        GPU, or the precision's hardware support is missing.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    validate_settings(precision, min_batch, opt_batch, max_batch, workspace_gb)
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path}: no such ONNX file")
    calib_cache = Path(calibration_cache) if calibration_cache else None
    timing_path = Path(timing_cache) if timing_cache else None
    reason = check_available(device)
    if reason:
        raise MissingDependencyError(reason)

    model = _load_onnx(onnx_path)
    if info is None:
        info = ModelInfo.from_metadata({p.key: p.value for p in model.metadata_props}, str(onnx_path))
    info = dataclasses.replace(info, precision=precision)
    qdq = has_qdq_nodes(model)
    onnx_sha = file_sha256(onnx_path)
    del model
    calibrate = precision == "int8" and not qdq
    cache_meta = Path(str(calib_cache) + ".json") if calib_cache else None
    tiles_sha = tiles_sha256(calibration_tiles) if calibrate and calibration_tiles is not None else None
    use_cache = (calibrate and calib_cache is not None and calib_cache.is_file() and calib_cache.stat().st_size > 0
                 and calibration_cache_matches(_read_json(cache_meta), onnx_sha, tiles_sha))
    if calibrate and calib_cache is not None and calib_cache.is_file() and not use_cache:
        log.info(f"{calib_cache}: calibration cache made for another model or other tiles; not used")
    if calibrate and calibration_tiles is None and not use_cache:
        raise FlexunetError(f"{onnx_path}: an INT8 engine needs calibration tiles (calibration images), a "
                            "calibration cache made for this model, or a Q/DQ-quantised ONNX")

    trt = import_tensorrt()
    cuda_call(cudart().cudaSetDevice(device), "cudaSetDevice")
    platform = current_platform(device)
    logger = trt_logger(trt)
    logger.errors.clear()
    builder = trt.Builder(logger)
    network, parser = _parse_onnx(trt, builder, logger, onnx_path)
    if network.num_inputs != 1 or network.num_outputs < 1:
        raise ModelError(f"{onnx_path}: expected one input and at least one output, found "
                         f"{network.num_inputs} and {network.num_outputs}")
    inp = network.get_input(0)
    dims = [None if int(d) < 0 else int(d) for d in inp.shape]
    shapes = profile_shapes(dims, min_batch, opt_batch, max_batch, info, str(onnx_path))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    flags = _configure_precision(trt, builder, config, precision, platform["gpu_name"])
    timing_loaded = _use_timing_cache(config, timing_path)

    calibrator = None
    calibration = None
    tiles = None
    if calibrate:
        if calibration_tiles is not None:
            tiles = np.asarray(calibration_tiles)
            if tiles.ndim != 4 or tuple(tiles.shape[1:]) != tuple(shapes["opt"][1:]):
                h, w, c = shapes["opt"][1:]
                raise FlexunetError(f"calibration tiles have shape {tiles.shape}; the engine input is "
                                    f"(N, {h}, {w}, {c})")
        n_tiles = len(tiles) if tiles is not None else shapes["opt"][0]
        batch = calibration_batch_size(n_tiles, shapes["min"][0], shapes["opt"][0], shapes["max"][0])
        calib_shape = (batch,) + tuple(shapes["opt"][1:])
        calib_profile = builder.create_optimization_profile()
        calib_profile.set_shape(inp.name, calib_shape, calib_shape, calib_shape)
        calibrator = _make_calibrator(trt, tiles, batch, calib_cache, use_cache)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(calib_profile)  # TensorRT calibrates with one fixed shape

    try:
        t0 = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - t0
        if calibrator is not None:
            if calibrator.error is not None:
                raise FlexunetError(f"{onnx_path}: INT8 calibration failed ({calibrator.error})")
            if calibrator.wrote_cache:
                write_text(cache_meta, json.dumps({"onnx_sha256": onnx_sha, "tiles_sha256": tiles_sha}) + "\n")
            calibration = {"cache": str(calib_cache) if calib_cache else None, "cache_hit": calibrator.cache_hit,
                           "batches": calibrator.fed, "batch_size": calibrator.batch_size,
                           "tiles": int(len(tiles)) if tiles is not None else 0}
    finally:
        if calibrator is not None:
            calibrator.free()
    if serialized is None:
        raise ModelError(f"{onnx_path}: TensorRT could not build a {precision} engine ({logger.last_error()})")
    data = bytes(memoryview(serialized))
    del serialized, parser
    if timing_path is not None:
        _save_timing_cache(config, timing_path)

    sidecar = {
        "format": SIDECAR_FORMAT,
        "schema": SIDECAR_SCHEMA,
        "engine_file": engine_path.name,
        "engine_sha256": sha256_bytes(data),
        "platform": platform,
        "build": {
            "precision": precision,
            "flags": flags,
            "tf32": precision != "fp32",  # TF32 is TensorRT's default; fp32 engines turn it off
            "int8": (None if precision != "int8" else "explicit (Q/DQ)" if qdq else "calibrated (entropy 2)"),
            "profile": {"input": inp.name, **{k: list(v) for k, v in shapes.items()}},
            "workspace_gb": workspace_gb,
            "calibration": calibration,
            "timing_cache": {"path": str(timing_path), "loaded": timing_loaded} if timing_path else None,
            "seconds": round(seconds, 2),
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        "onnx": {"file": onnx_path.name, "sha256": onnx_sha, "qdq": qdq},
        "model_info": json.loads(info.to_json()),
    }
    write_bytes(engine_path, data)
    side = write_text(sidecar_path(engine_path), json.dumps(sidecar, indent=2) + "\n")
    log.info(f"{engine_path}: {precision} TensorRT engine, {len(data) / 1e6:.1f} MB, built in {seconds:.1f}s "
             f"on {platform['gpu_name']}")
    return {**sidecar, "engine": str(engine_path), "sidecar": str(side), "bytes": len(data),
            "seconds": round(seconds, 2)}
