"""TensorRT engine building (export/tensorrt.py, export/tensorrt_calibration.py) and the TensorRT backend
(runtime/backends/tensorrt*.py).

Two kinds of tests:

* everywhere: the pure parts (settings, profile shapes, calibration batching, the calibration
  plan and the calibrator's cache handling, Q/DQ detection, sidecar checks with hand-written
  platform dicts), import hygiene, and that a machine without
  TensorRT or a GPU gets a one-line reason instead of a crash;
* ``gpu``: build real engines from a tiny ONNX UNet stand-in and compare them with ONNX Runtime on
  the CPU.  They are skipped, with the reason from ``check_available()``, where TensorRT and a CUDA
  GPU are not both usable.  Nothing here pretends to have a GPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flexunet.export.tensorrt import (
    build_engine,
    calibration_batch_size,
    calibration_batches,
    calibration_cache_matches,
    check_available,
    compatibility_problem,
    has_qdq_nodes,
    load_engine_checked,
    profile_shapes,
    sidecar_path,
    validate_settings,
)
from flexunet.runtime.backends.tensorrt import TensorRTBackend
from flexunet.runtime.backends.tensorrt_sidecar import model_info_from_sidecar, sha256_bytes
from flexunet.core.errors import EXIT_USAGE, FlexunetError, MissingDependencyError, ModelError
from flexunet.core.metrics import dice
from flexunet.core.modelinfo import ModelInfo

REPO = Path(__file__).resolve().parents[1]
TILE = 32

PLATFORM = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0",
            "cuda_driver_version": "12.4", "cuda_runtime_version": "12.4"}


# ------------------------------------------------------------------------------------------------
# a tiny NHWC model: Transpose -> [Q/DQ] -> Conv 3x3 -> Sigmoid -> Transpose, with flexunet metadata
# ------------------------------------------------------------------------------------------------
def tiny_model(channels: int = 3, classes: int = 1, dynamic_spatial: bool = False, qdq: bool = False,
               tile: int = TILE, seed: int = 0):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = rng.normal(0.0, 1.0, (classes, channels, 3, 3)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, (classes,)).astype(np.float32)
    h = "H" if dynamic_spatial else tile
    w = "W" if dynamic_spatial else tile
    inits = [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")]
    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2])]
    conv_in, conv_w = "nchw", "weight"
    if qdq:
        inits += [numpy_helper.from_array(np.array(1.0 / 127.0, np.float32), "x_scale"),
                  numpy_helper.from_array(np.array(0, np.int8), "x_zero"),
                  numpy_helper.from_array(np.array(np.abs(weight).max() / 127.0, np.float32), "w_scale"),
                  numpy_helper.from_array(np.array(0, np.int8), "w_zero")]
        nodes += [helper.make_node("QuantizeLinear", ["nchw", "x_scale", "x_zero"], ["nchw_q"]),
                  helper.make_node("DequantizeLinear", ["nchw_q", "x_scale", "x_zero"], ["nchw_dq"]),
                  helper.make_node("QuantizeLinear", ["weight", "w_scale", "w_zero"], ["weight_q"]),
                  helper.make_node("DequantizeLinear", ["weight_q", "w_scale", "w_zero"], ["weight_dq"])]
        conv_in, conv_w = "nchw_dq", "weight_dq"
    nodes += [helper.make_node("Conv", [conv_in, conv_w, "bias"], ["logits"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
              helper.make_node("Sigmoid", ["logits"], ["probs_nchw"]),
              helper.make_node("Transpose", ["probs_nchw"], ["probabilities"], perm=[0, 2, 3, 1])]
    graph = helper.make_graph(
        nodes, "tiny_unet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", h, w, channels])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", h, w, classes])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    info = ModelInfo(height=None if dynamic_spatial else tile, width=None if dynamic_spatial else tile,
                     channels=channels, num_classes=classes, tile=(tile, tile))
    for key, value in info.to_metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return model, info


def save_tiny_onnx(folder: Path, name: str = "tiny.onnx", **kwargs) -> tuple[Path, ModelInfo]:
    import onnx

    model, info = tiny_model(**kwargs)
    path = folder / name
    onnx.save(model, str(path))
    return path, info


def ort_predict(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"image": x})[0]


def tiles(n: int, seed: int = 1, size: int = TILE, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, channels), dtype=np.float32)


def fake_engine(folder: Path, platform: dict | None = None, data: bytes = b"not a real engine") -> Path:
    """An engine file and sidecar for the pure checks (load_engine_checked never deserialises)."""
    engine = folder / "model.fp16.engine"
    engine.write_bytes(data)
    _, info = tiny_model()
    sidecar = {"format": "flexunet.tensorrt-engine", "schema": 1, "engine_sha256": sha256_bytes(data),
               "platform": dict(platform or PLATFORM), "model_info": json.loads(info.to_json())}
    sidecar_path(engine).write_text(json.dumps(sidecar), encoding="utf-8")
    return engine


# ------------------------------------------------------------------------------------------------
# everywhere: import hygiene and a one-line reason without TensorRT / GPU
# ------------------------------------------------------------------------------------------------
def test_imports_load_neither_tensorrt_nor_cuda_nor_tensorflow():
    code = ("import sys, flexunet.runtime.backends.tensorrt, flexunet.export.tensorrt, "
            "flexunet.export.tensorrt_calibration; "
            "print(','.join(m for m in ('tensorrt', 'cuda', 'tensorflow', 'keras') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_check_available_gives_a_one_line_reason_here():
    reason = check_available()
    if reason is None:
        pytest.skip("TensorRT and a CUDA GPU are usable here; nothing to explain")
    assert reason.strip() and "\n" not in reason
    assert check_available() == reason  # stable, and never raises


def test_gpu_benchmark_says_why_it_cannot_run_here(tmp_path):
    reason = check_available()
    if reason is None:
        pytest.skip("TensorRT and a CUDA GPU are usable here: benchmarks/gpu_table.py would run for real")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_table.py"), "--keras",
                          tmp_path / "none.keras", "--data-root", tmp_path], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip() == (
        f"gpu_table: {reason}; this benchmark needs TensorRT and a CUDA GPU")
    assert not (REPO / "benchmarks" / "results" / "gpu_table.json").exists()


def test_check_available_names_a_missing_device():
    reason = check_available(device=1_000)
    assert reason and "\n" not in reason


def test_build_engine_without_tensorrt_says_why(tmp_path):
    reason = check_available()
    if reason is None:
        pytest.skip("TensorRT and a CUDA GPU are usable here")
    onnx_path, info = save_tiny_onnx(tmp_path)
    with pytest.raises(MissingDependencyError) as exc:
        build_engine(onnx_path, tmp_path / "model.fp16.engine", precision="fp16", info=info)
    assert str(exc.value) == reason and exc.value.exit_code == EXIT_USAGE
    assert not (tmp_path / "model.fp16.engine").exists()
    assert not sidecar_path(tmp_path / "model.fp16.engine").exists()


def test_backend_without_tensorrt_says_why(tmp_path):
    reason = check_available()
    if reason is None:
        pytest.skip("TensorRT and a CUDA GPU are usable here")
    engine = fake_engine(tmp_path)
    with pytest.raises(MissingDependencyError) as exc:
        TensorRTBackend(engine)
    assert str(exc.value) == reason


def test_load_backend_routes_engines_to_this_backend(tmp_path):
    from flexunet.runtime.backends import Backend, load_backend

    assert issubclass(TensorRTBackend, Backend) and TensorRTBackend.name == "tensorrt"
    reason = check_available()
    if reason is None:
        pytest.skip("TensorRT and a CUDA GPU are usable here")
    engine = fake_engine(tmp_path)
    with pytest.raises(MissingDependencyError, match="TensorRT|GPU|cuda"):
        load_backend(engine)


def test_build_engine_checks_settings_and_file_before_anything_else(tmp_path):
    with pytest.raises(FlexunetError, match="precision"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "e.engine", precision="int4")
    with pytest.raises(FlexunetError, match="batch"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "e.engine", min_batch=4, opt_batch=2, max_batch=8)
    with pytest.raises(ModelError, match="missing.onnx: no such ONNX file"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "e.engine", precision="fp32")


# ------------------------------------------------------------------------------------------------
# everywhere: pure helpers
# ------------------------------------------------------------------------------------------------
def test_validate_settings():
    validate_settings("fp16", 1, 4, 8, 4)
    validate_settings("int8", 2, 2, 2, 0.5)
    for bad in [("bf16", 1, 4, 8, 4), ("fp32", 0, 4, 8, 4), ("fp32", 1, 8, 4, 4), ("fp32", 1, 2.5, 4, 4),
                ("fp32", 1, 4, 8, 0)]:
        with pytest.raises(FlexunetError):
            validate_settings(*bad)


def test_profile_shapes_static_spatial():
    assert profile_shapes([None, 64, 48, 3], 1, 4, 8) == {
        "min": (1, 64, 48, 3), "opt": (4, 64, 48, 3), "max": (8, 64, 48, 3)}


def test_profile_shapes_dynamic_spatial_uses_the_tile():
    info = ModelInfo(height=None, width=None, channels=1, num_classes=1, tile=(96, 128))
    assert profile_shapes([None, None, None, 1], 2, 2, 4, info) == {
        "min": (2, 96, 128, 1), "opt": (2, 96, 128, 1), "max": (4, 96, 128, 1)}
    with pytest.raises(ModelError, match="dynamic"):
        profile_shapes([None, None, None, 1], 1, 4, 8, None, "m.onnx")


def test_profile_shapes_refuses_non_nhwc_input():
    info = ModelInfo(height=32, width=32, channels=3, num_classes=1)
    with pytest.raises(ModelError, match="NHWC"):
        profile_shapes([None, 3, 32], 1, 4, 8, info, "m.onnx")
    with pytest.raises(ModelError, match="channels"):
        profile_shapes([None, 3, 32, 32], 1, 4, 8, info, "m.onnx")  # NCHW


def test_profile_shapes_fixed_batch_in_onnx():
    assert profile_shapes([2, 32, 32, 3], 1, 4, 8)["max"] == (2, 32, 32, 3)
    assert profile_shapes([2, 32, 32, 3], 1, 4, 8)["min"] == (2, 32, 32, 3)


def test_calibration_batches_are_full_contiguous_float32():
    x = np.arange(10 * 2 * 2 * 1, dtype=np.float64).reshape(10, 2, 2, 1)
    batches = list(calibration_batches(x[:, ::-1], 4))  # a non-contiguous view
    assert len(batches) == 2  # the last 2 tiles do not fill a batch
    for i, b in enumerate(batches):
        assert b.shape == (4, 2, 2, 1) and b.dtype == np.float32 and b.flags.c_contiguous
        np.testing.assert_array_equal(b, x[4 * i:4 * i + 4, ::-1].astype(np.float32))
    assert len(list(calibration_batches(x, 10))) == 1
    assert list(calibration_batches(x, 11)) == []


def test_calibration_batches_check_arguments_at_once():
    with pytest.raises(ValueError):
        calibration_batches(np.zeros((4, 8, 8)), 2)
    with pytest.raises(ValueError):
        calibration_batches(np.zeros((0, 8, 8, 3)), 2)
    with pytest.raises(ValueError):
        calibration_batches(np.zeros((4, 8, 8, 3)), 0)


def test_calibration_batch_size():
    assert calibration_batch_size(100, 1, 4, 8) == 4
    assert calibration_batch_size(3, 1, 4, 8) == 3
    assert calibration_batch_size(3, 2, 4, 8) == 3
    with pytest.raises(FlexunetError, match="minimum batch"):
        calibration_batch_size(1, 2, 4, 8)


def test_calibration_cache_matches_only_its_model_and_tiles():
    meta = {"onnx_sha256": "a" * 64, "tiles_sha256": "b" * 64}
    assert calibration_cache_matches(meta, "a" * 64, "b" * 64)
    assert calibration_cache_matches(meta, "a" * 64)  # rebuilding from the cache alone
    assert not calibration_cache_matches(meta, "c" * 64, "b" * 64)  # another model
    assert not calibration_cache_matches(meta, "a" * 64, "c" * 64)  # other tiles
    assert not calibration_cache_matches(None, "a" * 64)  # no <cache>.json: unknown origin


def test_calibration_plan_uses_tiles_or_a_cache_made_for_this_model_and_tiles(tmp_path):
    from flexunet.export.tensorrt_calibration import CalibrationFeed, calibration_plan

    onnx_path, cache, x = tmp_path / "m.onnx", tmp_path / "calibration.cache", tiles(8)
    assert not calibration_plan(onnx_path, "fp16", False, "a" * 64, None, cache).calibrate
    assert not calibration_plan(onnx_path, "int8", True, "a" * 64, None, cache).calibrate  # Q/DQ: explicit
    with pytest.raises(FlexunetError, match="m.onnx: an INT8 engine needs calibration tiles"):
        calibration_plan(onnx_path, "int8", False, "a" * 64, None, cache)
    plan = calibration_plan(onnx_path, "int8", False, "a" * 64, x, cache)
    assert plan.calibrate and not plan.use_cache and plan.meta == tmp_path / "calibration.cache.json"

    feed = CalibrationFeed(None, 4, cache, use_cache=False)  # what TensorRT calls once it calibrated
    feed.write_calibration_cache(b"ranges")
    assert feed.record(plan, onnx_path) == {"cache": str(cache), "cache_hit": False, "batches": 0,
                                            "batch_size": 4, "tiles": 0}
    assert json.loads(plan.meta.read_text()) == {"onnx_sha256": "a" * 64, "tiles_sha256": plan.tiles_sha256}
    assert calibration_plan(onnx_path, "int8", False, "a" * 64, x, cache).use_cache
    assert calibration_plan(onnx_path, "int8", False, "a" * 64, None, cache).use_cache  # the cache alone
    assert not calibration_plan(onnx_path, "int8", False, "b" * 64, x, cache).use_cache  # another model
    assert not calibration_plan(onnx_path, "int8", False, "a" * 64, tiles(8, seed=9), cache).use_cache
    cache.write_bytes(b"")
    assert not calibration_plan(onnx_path, "int8", False, "a" * 64, x, cache).use_cache  # an empty cache


def test_calibration_feed_offers_the_cache_only_when_told_and_keeps_errors_from_tensorrt(tmp_path):
    from flexunet.export.tensorrt_calibration import CalibrationFeed, CalibrationPlan

    cache = tmp_path / "calibration.cache"
    cache.write_bytes(b"ranges")
    feed = CalibrationFeed(None, 2, cache, use_cache=True)
    assert feed.get_batch_size() == 2 and feed.get_batch(["image"]) is None  # no tiles: nothing to feed
    assert feed.read_calibration_cache() == b"ranges" and feed.cache_hit
    unused = CalibrationFeed(None, 2, cache, use_cache=False)
    assert unused.read_calibration_cache() is None and not unused.cache_hit
    (tmp_path / "file").write_text("x")
    blocked = CalibrationFeed(None, 2, tmp_path / "file" / "calibration.cache", use_cache=False)
    blocked.write_calibration_cache(b"new")  # an error is kept, never raised into TensorRT
    assert not blocked.wrote_cache and blocked.error is not None
    plan = CalibrationPlan(True, None, blocked.cache_path, False, "a" * 64, None)
    with pytest.raises(FlexunetError, match="m.onnx: INT8 calibration failed"):
        blocked.record(plan, tmp_path / "m.onnx")
    blocked.free()  # no device buffer: nothing to free, no CUDA needed


def test_has_qdq_nodes():
    plain, _ = tiny_model()
    quantised, _ = tiny_model(qdq=True)
    assert not has_qdq_nodes(plain)
    assert has_qdq_nodes(quantised)


def test_compatibility_problem_accepts_the_same_platform():
    assert compatibility_problem({"platform": PLATFORM}, dict(PLATFORM)) is None
    # CUDA versions are recorded, not compared
    assert compatibility_problem({"platform": PLATFORM}, {**PLATFORM, "cuda_driver_version": "12.6"}) is None
    assert compatibility_problem(PLATFORM, dict(PLATFORM)) is None  # a bare platform dict works too


@pytest.mark.parametrize("key, value, word", [
    ("tensorrt_version", "10.0.1", "TensorRT"),
    ("gpu_name", "Tesla T4", "GPU"),
    ("compute_capability", "7.5", "compute capability"),
])
def test_compatibility_problem_names_both_sides(key, value, word):
    here = {**PLATFORM, key: value}
    problem = compatibility_problem({"platform": PLATFORM}, here)
    assert problem and "\n" not in problem
    assert str(PLATFORM[key]) in problem and value in problem and word in problem
    assert "rebuild" in problem


def test_compatibility_problem_with_an_incomplete_sidecar():
    assert compatibility_problem({"platform": {"gpu_name": PLATFORM["gpu_name"]}}, PLATFORM)
    assert compatibility_problem({}, PLATFORM)


def test_load_engine_checked_accepts_a_matching_engine(tmp_path):
    engine = fake_engine(tmp_path)
    data, sidecar = load_engine_checked(engine, current=dict(PLATFORM))
    assert data == b"not a real engine"
    assert sidecar["platform"]["gpu_name"] == PLATFORM["gpu_name"]
    info = model_info_from_sidecar(sidecar)
    assert (info.channels, info.num_classes, info.tile_size) == (3, 1, (TILE, TILE))


def test_load_engine_checked_refuses_another_gpu(tmp_path):
    engine = fake_engine(tmp_path)
    here = {**PLATFORM, "gpu_name": "Tesla T4", "compute_capability": "7.5"}
    with pytest.raises(ModelError) as exc:
        load_engine_checked(engine, current=here)
    msg = str(exc.value)
    assert str(engine) in msg and "A100" in msg and "Tesla T4" in msg and "\n" not in msg


def test_load_engine_checked_refuses_another_tensorrt(tmp_path):
    engine = fake_engine(tmp_path)
    with pytest.raises(ModelError, match=r"TensorRT 10\.3\.0.*TensorRT 8\.6\.1"):
        load_engine_checked(engine, current={**PLATFORM, "tensorrt_version": "8.6.1"})


def test_load_engine_checked_refuses_a_missing_sidecar(tmp_path):
    engine = fake_engine(tmp_path)
    sidecar_path(engine).unlink()
    with pytest.raises(ModelError, match="no sidecar model.fp16.engine.json"):
        load_engine_checked(engine, current=dict(PLATFORM))


def test_load_engine_checked_refuses_a_corrupt_sidecar(tmp_path):
    engine = fake_engine(tmp_path)
    sidecar_path(engine).write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelError, match="unreadable engine sidecar"):
        load_engine_checked(engine, current=dict(PLATFORM))
    sidecar_path(engine).write_text("{}", encoding="utf-8")
    with pytest.raises(ModelError, match="not a flexunet engine sidecar"):
        load_engine_checked(engine, current=dict(PLATFORM))


def test_load_engine_checked_refuses_an_engine_replaced_under_its_sidecar(tmp_path):
    engine = fake_engine(tmp_path)
    engine.write_bytes(b"another engine")
    with pytest.raises(ModelError, match="does not match its sidecar"):
        load_engine_checked(engine, current=dict(PLATFORM))


def test_load_engine_checked_refuses_a_missing_engine(tmp_path):
    with pytest.raises(ModelError, match="no such engine file"):
        load_engine_checked(tmp_path / "nothing.engine", current=dict(PLATFORM))


# ------------------------------------------------------------------------------------------------
# gpu: real engines (skipped with check_available()'s reason where TensorRT / a GPU are missing)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trt_ready():
    reason = check_available()
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.gpu
def test_fp32_engine_matches_onnxruntime(tmp_path, trt_ready):
    onnx_path, info = save_tiny_onnx(tmp_path)
    engine = tmp_path / "model.fp32.engine"
    report = build_engine(onnx_path, engine, precision="fp32", min_batch=1, opt_batch=2, max_batch=4,
                          timing_cache=tmp_path / "timing.cache", workspace_gb=1)
    assert engine.is_file() and sidecar_path(engine).is_file()
    assert report["bytes"] == engine.stat().st_size
    side = json.loads(sidecar_path(engine).read_text())
    assert side["build"]["precision"] == "fp32" and side["build"]["profile"]["max"] == [4, TILE, TILE, 3]
    for key in ("tensorrt_version", "gpu_name", "compute_capability", "cuda_driver_version", "cuda_runtime_version"):
        assert side["platform"][key]
    assert len(side["onnx"]["sha256"]) == 64 and side["model_info"]["precision"] == "fp32"

    x = tiles(7)  # 4 + 3: two chunks through both buffer slots
    expected = ort_predict(onnx_path, x)
    from flexunet.runtime.backends import load_backend

    with load_backend(engine) as backend:  # .engine files go to this backend
        assert isinstance(backend, TensorRTBackend) and backend.accepts(TILE, TILE)
    with TensorRTBackend(engine) as backend:
        assert backend.name == "tensorrt" and backend.max_batch == 4 and backend.fixed_size == (TILE, TILE)
        assert backend.info.num_classes == 1 and backend.info.precision == "fp32"
        got = backend.predict(x)
        assert got.shape == (7, TILE, TILE, 1) and got.dtype == np.float32
        assert float(np.abs(got - expected).max()) <= 1e-4
        one = backend.predict(x[:1])
        assert float(np.abs(one - expected[:1]).max()) <= 1e-4
        many = backend.predict(np.concatenate([x, x, x]))  # 21 tiles: 6 chunks, slots reused
        assert float(np.abs(many - np.concatenate([expected] * 3)).max()) <= 1e-4
        with pytest.raises(ModelError, match="tiles"):
            backend.predict(tiles(1, size=16))


@pytest.mark.gpu
def test_fp16_engine_agrees_with_onnxruntime(tmp_path, trt_ready):
    onnx_path, info = save_tiny_onnx(tmp_path)
    engine = tmp_path / "model.fp16.engine"
    try:
        build_engine(onnx_path, engine, precision="fp16", max_batch=4, workspace_gb=1)
    except MissingDependencyError as exc:  # a GPU without fast FP16 is refused, by design
        pytest.skip(str(exc))
    x = tiles(6, seed=2)
    expected = ort_predict(onnx_path, x)
    with TensorRTBackend(engine) as backend:
        got = backend.predict(x)
    assert dice(got > 0.5, expected > 0.5) >= 0.995
    assert float(np.abs(got - expected).max()) <= 1e-2


@pytest.mark.gpu
def test_int8_calibration_cache_is_written_then_reused(tmp_path, trt_ready):
    onnx_path, info = save_tiny_onnx(tmp_path)
    cache = tmp_path / "calibration.cache"
    first = build_engine(onnx_path, tmp_path / "a.int8.engine", precision="int8", max_batch=4,
                         calibration_tiles=tiles(16, seed=3), calibration_cache=cache, workspace_gb=1)
    calib = first["build"]["calibration"]
    assert calib["cache_hit"] is False and calib["batches"] == 4 and calib["batch_size"] == 4
    assert cache.is_file() and cache.stat().st_size > 0
    second = build_engine(onnx_path, tmp_path / "b.int8.engine", precision="int8", max_batch=4,
                          calibration_tiles=tiles(16, seed=3), calibration_cache=cache, workspace_gb=1)
    assert second["build"]["calibration"]["cache_hit"] is True
    assert second["build"]["calibration"]["batches"] == 0
    # the cache alone is enough for a rebuild
    third = build_engine(onnx_path, tmp_path / "c.int8.engine", precision="int8", max_batch=4,
                         calibration_cache=cache, workspace_gb=1)
    assert third["build"]["calibration"]["cache_hit"] is True
    # a retrained model (other weights) is recalibrated rather than given this cache
    other, _ = save_tiny_onnx(tmp_path, name="other.onnx", seed=7)
    fourth = build_engine(other, tmp_path / "d.int8.engine", precision="int8", max_batch=4,
                          calibration_tiles=tiles(16, seed=3), calibration_cache=cache, workspace_gb=1)
    assert fourth["build"]["calibration"]["cache_hit"] is False and fourth["build"]["calibration"]["batches"] == 4
    x = tiles(4, seed=4)
    with TensorRTBackend(tmp_path / "b.int8.engine") as backend:
        got = backend.predict(x)
    assert float(np.abs(got - ort_predict(onnx_path, x)).mean()) <= 0.05  # loose: 8-bit activations


@pytest.mark.gpu
def test_int8_from_qdq_onnx_needs_no_calibrator(tmp_path, trt_ready):
    onnx_path, info = save_tiny_onnx(tmp_path, qdq=True)
    report = build_engine(onnx_path, tmp_path / "q.int8.engine", precision="int8", max_batch=4, workspace_gb=1)
    assert report["build"]["int8"] == "explicit (Q/DQ)" and report["build"]["calibration"] is None
    assert report["onnx"]["qdq"] is True
    x = tiles(3, seed=5)
    with TensorRTBackend(tmp_path / "q.int8.engine") as backend:
        got = backend.predict(x)
    assert float(np.abs(got - ort_predict(onnx_path, x)).mean()) <= 0.05


@pytest.mark.gpu
def test_int8_without_calibration_data_is_refused(tmp_path, trt_ready):
    onnx_path, info = save_tiny_onnx(tmp_path)
    with pytest.raises(FlexunetError, match="calibration"):
        build_engine(onnx_path, tmp_path / "x.int8.engine", precision="int8")


@pytest.mark.gpu
def test_timing_cache_is_reused(tmp_path, trt_ready):
    onnx_path, info = save_tiny_onnx(tmp_path)
    timing = tmp_path / "timing.cache"
    first = build_engine(onnx_path, tmp_path / "a.engine", precision="fp32", opt_batch=2, max_batch=2, timing_cache=timing,
                         workspace_gb=1)
    assert first["build"]["timing_cache"]["loaded"] is False and timing.stat().st_size > 0
    second = build_engine(onnx_path, tmp_path / "b.engine", precision="fp32", opt_batch=2, max_batch=2, timing_cache=timing,
                          workspace_gb=1)
    assert second["build"]["timing_cache"]["loaded"] is True


@pytest.mark.gpu
def test_dynamic_spatial_onnx_is_built_for_the_tile(tmp_path, trt_ready):
    onnx_path, info = save_tiny_onnx(tmp_path, dynamic_spatial=True, channels=1, classes=2)
    engine = tmp_path / "dyn.engine"
    build_engine(onnx_path, engine, precision="fp32", opt_batch=2, max_batch=2, workspace_gb=1)
    x = tiles(3, seed=6, channels=1)
    with TensorRTBackend(engine) as backend:
        assert backend.fixed_size == (TILE, TILE) and backend.max_batch == 2
        got = backend.predict(x)
    assert got.shape == (3, TILE, TILE, 2)
    assert float(np.abs(got - ort_predict(onnx_path, x)).max()) <= 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("key, value", [("gpu_name", "Some Other GPU"), ("compute_capability", "1.0"),
                                        ("tensorrt_version", "7.0.0")])
def test_engine_from_another_platform_is_refused(tmp_path, trt_ready, key, value):
    onnx_path, info = save_tiny_onnx(tmp_path)
    engine = tmp_path / "model.fp32.engine"
    build_engine(onnx_path, engine, precision="fp32", opt_batch=2, max_batch=2, workspace_gb=1)
    load_engine_checked(engine)  # accepted as built
    side = json.loads(sidecar_path(engine).read_text())
    here = side["platform"][key]
    side["platform"][key] = value
    sidecar_path(engine).write_text(json.dumps(side))
    with pytest.raises(ModelError) as exc:
        load_engine_checked(engine)
    assert value in str(exc.value) and str(here) in str(exc.value)
    with pytest.raises(ModelError):
        TensorRTBackend(engine)
