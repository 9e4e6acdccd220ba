"""Build a TensorRT engine from a flexunet ONNX model (TensorRT 10.x; 8.6 works too).

:func:`build_engine`, in the spirit of Polygraphy's
``EngineFromNetwork(NetworkFromOnnxPath(p), CreateConfig(...))``, runs in stages: read the ONNX
file's facts (model info, Q/DQ nodes, sha256) and decide how INT8 is calibrated; parse the network
(explicit batch) and fix the optimisation profile over batch sizes on the NHWC input; configure the
builder (precision flags, workspace, timing cache); attach the INT8 calibrator; build and
serialise; write the engine and its JSON sidecar ``<engine>.json`` (both atomically).  The sidecar
records the build settings, the TensorRT version, the GPU and its compute capability, the CUDA
driver/runtime versions, the model's :class:`ModelInfo` and the ONNX file's sha256; the runtime
(:mod:`flexunet.runtime.backends.tensorrt`) refuses an engine whose sidecar names another TensorRT
version or GPU.

INT8 comes two ways:

* the ONNX already holds QuantizeLinear/DequantizeLinear nodes (explicit quantisation, the way
  TensorRT 10 recommends): built with the INT8 flag and no calibrator;
* otherwise (implicit quantisation): calibrated on ``calibration_tiles``, or from a calibration
  cache made for this model (:mod:`flexunet.export.tensorrt_calibration`).

A tactic timing cache (``timing_cache``) is loaded when present and saved after each build, so
rebuilds of the same or similar networks on the same GPU are faster.

Importing this module imports neither TensorRT nor cuda-python; :func:`check_available` says in
one line why a build cannot happen here.  The pure parts (settings, profile shapes, calibration
batching, Q/DQ detection, sidecar comparison) are separate functions, tested without a GPU.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from flexunet.core.atomic import write_bytes, write_text
from flexunet.core.errors import FlexunetError, MissingDependencyError, ModelError
from flexunet.core.machine import sha256_file
from flexunet.core.modelinfo import ModelInfo
from flexunet.export.onnx import load_graph
from flexunet.export.tensorrt_calibration import (  # noqa: F401  (public here too)
    CalibrationPlan,
    attach_calibrator,
    calibration_batch_size,
    calibration_batches,
    calibration_cache_matches,
    calibration_plan,
)
from flexunet.runtime.backends.tensorrt_platform import (check_available, cuda_call, cudart, current_platform,
                                                         import_tensorrt, trt_logger)
from flexunet.runtime.backends.tensorrt_sidecar import (SIDECAR_FORMAT, compatibility_problem,  # noqa: F401
                                                        load_engine_checked, sha256_bytes, sidecar_path)

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


@dataclass
class OnnxFacts:
    """What a build needs to know of its ONNX file: the model info (at the engine's precision),
    whether it holds Q/DQ nodes, and its sha256."""

    path: Path
    info: ModelInfo
    qdq: bool
    sha256: str


def read_onnx_facts(onnx_path: Path, info: ModelInfo | None, precision: str) -> OnnxFacts:
    """Stage 1: the ONNX file's facts (``info`` default: its metadata)."""
    model = load_graph(onnx_path)
    if info is None:
        info = ModelInfo.from_metadata({p.key: p.value for p in model.metadata_props}, str(onnx_path))
    return OnnxFacts(onnx_path, dataclasses.replace(info, precision=precision), has_qdq_nodes(model),
                     sha256_file(onnx_path))


# ------------------------------------------------------------------------------------------------
# TensorRT stages (only called once TensorRT and a GPU are known to be here)
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


def parse_network(trt, builder, logger, facts: OnnxFacts, batches: tuple[int, int, int]):
    """Stage 2: the network, its parser (which owns weights the network refers to: keep it alive),
    its input and the optimisation profile's shapes."""
    network, parser = _parse_onnx(trt, builder, logger, facts.path)
    if network.num_inputs != 1 or network.num_outputs < 1:
        raise ModelError(f"{facts.path}: expected one input and at least one output, found "
                         f"{network.num_inputs} and {network.num_outputs}")
    inp = network.get_input(0)
    dims = [None if int(d) < 0 else int(d) for d in inp.shape]
    return network, parser, inp, profile_shapes(dims, *batches, facts.info, str(facts.path))


def builder_config(trt, builder, input_name: str, shapes: dict, precision: str, workspace_gb: float, gpu: str,
                   timing_path: Path | None):
    """Stage 3: the builder config with the workspace limit, the profile, the precision flags and
    the timing cache; returns it, the flags set and whether the timing cache file was loaded."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    flags = _configure_precision(trt, builder, config, precision, gpu)
    return config, flags, _use_timing_cache(config, timing_path)


def build_serialized(builder, network, config, calibrator, plan: CalibrationPlan, facts: OnnxFacts, precision: str,
                     logger) -> tuple[bytes, float, dict | None]:
    """Stage 5 (stage 4 is :func:`~flexunet.export.tensorrt_calibration.attach_calibrator`): build
    and serialise; returns the engine's bytes, the build seconds and the calibration record."""
    calibration = None
    try:
        t0 = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - t0
        if calibrator is not None:
            calibration = calibrator.record(plan, facts.path)
    finally:
        if calibrator is not None:
            calibrator.free()
    if serialized is None:
        raise ModelError(f"{facts.path}: TensorRT could not build a {precision} engine ({logger.last_error()})")
    return bytes(memoryview(serialized)), seconds, calibration


def write_engine(engine_path: Path, data: bytes, facts: OnnxFacts, platform: dict, build: dict) -> dict:
    """Stage 6: the engine and its sidecar, written atomically; returns the build report (the
    sidecar plus the paths, size and build seconds)."""
    sidecar = {
        "format": SIDECAR_FORMAT,
        "schema": SIDECAR_SCHEMA,
        "engine_file": engine_path.name,
        "engine_sha256": sha256_bytes(data),
        "platform": platform,
        "build": build,
        "onnx": {"file": facts.path.name, "sha256": facts.sha256, "qdq": facts.qdq},
        "model_info": json.loads(facts.info.to_json()),
    }
    write_bytes(engine_path, data)
    side = write_text(sidecar_path(engine_path), json.dumps(sidecar, indent=2) + "\n")
    log.info(f"{engine_path}: {build['precision']} TensorRT engine, {len(data) / 1e6:.1f} MB, built in "
             f"{build['seconds']:.1f}s on {platform['gpu_name']}")
    return {**sidecar, "engine": str(engine_path), "sidecar": str(side), "bytes": len(data),
            "seconds": build["seconds"]}


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
    timing_path = Path(timing_cache) if timing_cache else None
    reason = check_available(device)
    if reason:
        raise MissingDependencyError(reason)
    facts = read_onnx_facts(onnx_path, info, precision)
    plan = calibration_plan(onnx_path, precision, facts.qdq, facts.sha256, calibration_tiles, calibration_cache)

    trt = import_tensorrt()
    cuda_call(cudart().cudaSetDevice(device), "cudaSetDevice")
    platform = current_platform(device)
    logger = trt_logger(trt)
    logger.errors.clear()
    builder = trt.Builder(logger)
    network, parser, inp, shapes = parse_network(trt, builder, logger, facts, (min_batch, opt_batch, max_batch))
    config, flags, timing_loaded = builder_config(trt, builder, inp.name, shapes, precision, workspace_gb,
                                                  platform["gpu_name"], timing_path)
    calibrator = attach_calibrator(trt, builder, config, inp.name, shapes, plan)
    data, seconds, calibration = build_serialized(builder, network, config, calibrator, plan, facts, precision,
                                                  logger)
    del parser
    if timing_path is not None:
        _save_timing_cache(config, timing_path)
    return write_engine(engine_path, data, facts, platform, {
        "precision": precision,
        "flags": flags,
        "tf32": precision != "fp32",  # TF32 is TensorRT's default; fp32 engines turn it off
        "int8": (None if precision != "int8" else "explicit (Q/DQ)" if facts.qdq else "calibrated (entropy 2)"),
        "profile": {"input": inp.name, **{k: list(v) for k, v in shapes.items()}},
        "workspace_gb": workspace_gb,
        "calibration": calibration,
        "timing_cache": {"path": str(timing_path), "loaded": timing_loaded} if timing_path else None,
        "seconds": round(seconds, 2),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
