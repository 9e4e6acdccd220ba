"""Export: binary and multiclass ONNX, metadata round trip, verification, INT8, Triton, atomic writes."""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
from click.testing import CliRunner

from flexunet.cli import cli
from flexunet.core.config import load_config
from flexunet.train.synth import CLASS_COLORS_RGB, make_dataset
from tiny_configs import splits

CONFIG = """
[model]
image_width    = 64
image_height   = 64
num_classes    = {classes}
base_filters   = 6
base_kernels   = (3,3)
num_layers     = 3
dropout_rate   = 0.0
learning_rate  = 0.005
loss           = "{loss}"
metrics        = ["{metric}"]
""" + splits(epochs=3, batch_size=8) + """
[segmentation]
white = "green"
{extra}
"""

pytestmark = pytest.mark.slow


def _project(root: Path, kind: str) -> Path:
    make_dataset(root / "data", kind=kind, size=64, n_train=32, n_valid=8, n_test=8, n_mini=1,
                 mini_size=(96, 80), seed=5)
    if kind == "multiclass":
        rgb = "{" + ", ".join(f"{k}:{v}" for k, v in CLASS_COLORS_RGB.items()) + "}"
        text = CONFIG.format(classes=4, loss="categorical_crossentropy", metric="dice_coef_multiclass",
                             extra=f'[mask]\nrgb_map = {rgb}\nclass_names = ["bg", "a", "b", "c"]\n')
    else:
        text = CONFIG.format(classes=1, loss="bce_dice_loss", metric="dice_coef", extra="")
    (root / "train_eval_infer.config").write_text(text)
    from flexunet.train.trainer import train

    return train(load_config(root / "train_eval_infer.config")).model_path


@pytest.fixture(scope="module")
def binary_model(tmp_path_factory):
    return _project(tmp_path_factory.mktemp("binary"), "tiles")


@pytest.fixture(scope="module")
def multiclass_model(tmp_path_factory):
    return _project(tmp_path_factory.mktemp("multi"), "multiclass")


def export(*args):
    return CliRunner().invoke(cli, ["export", *[str(a) for a in args]])


def _snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder`` (hidden ones too), files with their bytes' hash and
    modification time."""
    import hashlib

    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            if p.is_file() else None for p in sorted(folder.rglob("*"))}


def test_binary_export_verified_with_metadata(binary_model, tmp_path):
    import onnx

    from flexunet.export.onnx import read_info

    out = tmp_path / "out"
    r = export(binary_model, "-o", out, "--optimize", "--triton-repo", tmp_path / "triton")
    assert r.exit_code == 0, r.output + r.stderr
    report = json.loads((out / "export_report.json").read_text())
    a = report["artifacts"]["model.onnx"]["vs_keras"]
    assert a["max_abs_diff"] <= 1e-4 and a["dice"] >= 0.9999
    assert report["verification_tiles"]["source"].endswith("test/images")  # real tiles, not synthetic
    assert report["artifacts"]["model.opt.onnx"]["vs_keras"]["max_abs_diff"] <= 1e-4

    proto = onnx.load(str(out / "model.onnx"))
    assert proto.opset_import[0].version >= 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].dim_value and [d.dim_value for d in dims[1:]] == [64, 64, 3]  # dynamic batch, NHWC
    info = read_info(out / "model.onnx")
    cfg = load_config(binary_model.parent.parent / "train_eval_infer.config")
    assert (info.height, info.width, info.channels, info.num_classes) == (64, 64, 3, 1)
    assert info.tile_size == (64, 64) and info.overlap == 16 and info.multiple == 4
    assert info.class_colors[1] == (0, 255, 0) and info.threshold == 0.5
    assert info.source_config == cfg.path.read_text()
    assert len(info.keras_weights_sha256) == 64 and info.versions["tf2onnx"]
    assert info.preprocess.channels == 3 and info.preprocess.scale == 1.0

    tri = tmp_path / "triton" / "flexunet_unet"
    assert (tri / "1" / "model.onnx").is_file()
    pbtxt = (tri / "config.pbtxt").read_text()
    for fragment in ('platform: "onnxruntime_onnx"', "max_batch_size: 8", "dynamic_batching",
                     'name: "image"', 'name: "probabilities"', "dims: [ 64, 64, 3 ]", "dims: [ 64, 64, 1 ]",
                     "TYPE_FP32"):
        assert fragment in pbtxt, fragment


def test_multiclass_export_and_dynamic_size(multiclass_model, tmp_path):
    import onnxruntime as ort

    from flexunet.export.onnx import read_info

    out = tmp_path / "out"
    r = export(multiclass_model, "-o", out, "--dynamic-size")
    assert r.exit_code == 0, r.output + r.stderr
    info = read_info(out / "model.onnx")
    assert info.num_classes == 4 and info.class_names == ["bg", "a", "b", "c"]
    assert info.class_colors == [(0, 0, 0)] + [rgb for rgb, _ in sorted(CLASS_COLORS_RGB.items(), key=lambda kv: kv[1])][1:]
    assert info.height is None and info.multiple == 4
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    probs = sess.run(None, {"image": np.random.default_rng(0).uniform(0, 255, (2, 96, 128, 3)).astype(np.float32)})[0]
    assert probs.shape == (2, 96, 128, 4)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_verification_catches_a_damaged_weight(binary_model, tmp_path, monkeypatch):
    import onnx
    from onnx import numpy_helper

    from flexunet.export import onnx as ox

    original = ox.convert

    def damaged(model, dest, info, opset=17):
        original(model, dest, info, opset)
        proto = onnx.load(str(dest))
        init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        w = numpy_helper.to_array(init).copy()
        w.flat[: w.size // 10] *= -3.0
        init.CopyFrom(numpy_helper.from_array(w, init.name))
        onnx.save(proto, str(dest))
        return dest

    out = tmp_path / "out"
    assert export(binary_model, "-o", out).exit_code == 0
    before = _snapshot(out)
    monkeypatch.setattr(ox, "convert", damaged)
    r = export(binary_model, "-o", out)
    assert r.exit_code == 1, r.output + r.stderr
    assert "does not reproduce the Keras model" in r.stderr and "Traceback" not in r.output
    assert _snapshot(out) == before  # the previous export as it was: nothing replaced, nothing half-written
    fresh = tmp_path / "new" / "out"
    assert export(binary_model, "-o", fresh).exit_code == 1
    assert not (tmp_path / "new").exists()  # the folders this export created are gone again


def test_triton_repo_at_a_file_is_refused_before_anything_is_written(binary_model, tmp_path):
    out = tmp_path / "out"
    assert export(binary_model, "-o", out, "--triton-repo", tmp_path / "triton").exit_code == 0
    before = _snapshot(tmp_path)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    for dest in (out, tmp_path / "fresh"):
        r = export(binary_model, "-o", dest, "--optimize", "--triton-repo", blocker)
        assert r.exit_code == 2 and "Triton repository is not writable" in r.stderr, r.stderr
        assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.output
    after = _snapshot(tmp_path)
    del after["not-a-folder"]
    assert after == before  # the previous export, its Triton repository, and no new folder


def test_tensorrt_step_builds_verifies_and_keeps_its_caches(binary_model, tmp_path, monkeypatch):
    """The TensorRT step with a stand-in builder and runner (no GPU needed): the engine, its sidecar
    and the caches appear with the other artifacts, the report names them where they end up, the
    engine is verified like every artifact, and one that disagrees is refused with nothing written."""
    from flexunet.export import steps, tensorrt
    from flexunet.export.verify import onnx_predict

    seen = {}

    def build(onnx_path, engine_path, precision, min_batch, opt_batch, max_batch, calibration_tiles,
              calibration_cache, timing_cache, info):
        seen.update(onnx=onnx_path, timing=timing_cache.read_text() if timing_cache.is_file() else None,
                    batches=(min_batch, opt_batch, max_batch))
        engine_path.write_bytes(onnx_path.read_bytes())  # this "engine" runs as the FP32 model does
        timing_cache.write_text("new timing")
        record = {"precision": precision, "timing_cache": {"path": str(timing_cache), "loaded": True}}
        sidecar = engine_path.with_name(engine_path.name + ".json")
        sidecar.write_text(json.dumps({"build": record}))
        return {"build": record, "engine": str(engine_path), "sidecar": str(sidecar),
                "bytes": engine_path.stat().st_size}

    monkeypatch.setattr(tensorrt, "check_available", lambda device=0: None)
    monkeypatch.setattr(tensorrt, "build_engine", build)
    monkeypatch.setattr(steps, "engine_predict", lambda path, tiles: onnx_predict(seen["onnx"], tiles))
    out, triton = tmp_path / "out", tmp_path / "triton"
    out.mkdir()
    (out / "timing.cache").write_text("old timing")
    r = export(binary_model, "-o", out, "--trt", "fp16", "--max-batch", "4", "--triton-repo", triton)
    assert r.exit_code == 0, r.output + r.stderr
    assert seen["timing"] == "old timing" and (out / "timing.cache").read_text() == "new timing"
    assert seen["batches"] == (1, 4, 4)
    report = json.loads((out / "export_report.json").read_text())
    e = report["artifacts"]["model.fp16.engine"]
    assert (e["engine"], e["sidecar"]) == (str(out / "model.fp16.engine"), str(out / "model.fp16.engine.json"))
    assert e["build"]["timing_cache"]["path"] == str(out / "timing.cache")
    sidecar = json.loads((out / "model.fp16.engine.json").read_text())
    assert sidecar["build"]["timing_cache"]["path"] == str(out / "timing.cache")
    assert e["vs_keras"]["dice"] == 1.0 and e["vs_keras"]["tiles"] == report["verification_tiles"]["count"]
    assert str(out / "model.fp16.engine") in report["written"]
    tri = triton / "flexunet_unet"
    assert (tri / "1" / "model.plan").read_bytes() == (out / "model.fp16.engine").read_bytes()
    assert 'platform: "tensorrt_plan"' in (tri / "config.pbtxt").read_text() and not (tri / "1" / "model.onnx").exists()
    assert not list(out.glob(".export-*")) and not list(triton.glob(".*"))

    before = _snapshot(tmp_path)
    monkeypatch.setattr(steps, "engine_predict", lambda path, tiles: 1.0 - onnx_predict(seen["onnx"], tiles))
    r = export(binary_model, "-o", out, "--trt", "fp16", "--max-batch", "4", "--triton-repo", triton)
    assert r.exit_code == 1 and "model.fp16.engine does not reproduce the Keras model" in r.stderr, r.stderr
    assert _snapshot(tmp_path) == before


def test_int8_export_reports_dice_and_refuses_below_limit(binary_model, tmp_path):
    calib = binary_model.parent.parent / "data" / "train" / "images"
    out = tmp_path / "out"
    r = export(binary_model, "-o", out, "--int8", "--calibration-images", calib, "--calibration-count", "16",
               "--int8-min-dice", "0")
    assert r.exit_code == 0, r.output + r.stderr
    a = json.loads((out / "export_report.json").read_text())["artifacts"]["model.int8.onnx"]
    assert a["calibration"]["tiles"] == 16 and 0.0 <= a["vs_fp32"]["dice"] <= 1.0
    assert a["tuning"]["check_tiles"] == 16 and a["tuning"]["target_dice"] == 0.99
    assert a["float_convolutions"] == a["tuning"]["float_nodes"]
    # a search that ends below its target says so, naming the artifact (and only then)
    missed = a["tuning"]["dice"] < a["tuning"]["target_dice"]
    assert ("warning: model.int8.onnx: the INT8 search reached" in r.stderr) == missed, r.stderr
    assert "vs_fp32" in a and a["bytes"] < json.loads((out / "export_report.json").read_text())["artifacts"]["model.onnx"]["bytes"]
    from flexunet.export.onnx import read_info

    assert read_info(out / "model.int8.onnx").precision == "int8"
    # the INT8 model is a QDQ graph
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops

    out2 = tmp_path / "out2"
    r = export(binary_model, "-o", out2, "--int8", "--calibration-images", calib, "--calibration-count", "4",
               "--int8-min-dice", "1.0")
    if r.exit_code != 0:  # dice below 1.0: refused, nothing written, not even the folder
        assert r.exit_code == 1 and "model.int8.onnx" in r.stderr and "the FP32 model" in r.stderr
        assert not out2.exists()


def test_int8_shortfall_line_only_below_the_target():
    from flexunet.export.cli import int8_shortfall

    tuning = {"dice": 0.9445, "target_dice": 0.99, "check_tiles": 16, "max_float_share": 0.1}
    line = int8_shortfall("model.int8.onnx", tuning)
    assert line.startswith("model.int8.onnx: the INT8 search reached mask dice 0.9445") and "10%" in line
    assert "\n" not in line
    assert int8_shortfall("model.int8.onnx", dict(tuning, dice=0.991)) is None
    assert int8_shortfall("model.int8.onnx", None) is None


def test_int8_mixed_precision_search_keeps_sensitive_convolutions_in_fp32(binary_model, tmp_path):
    import onnx

    from flexunet.core.compare import compare
    from flexunet.export import int8_search as search
    from flexunet.export.onnx import read_info
    from flexunet.export.tiles import calibration_tiles, hold_out
    from flexunet.export.verify import onnx_predict

    out = tmp_path / "out"
    assert export(binary_model, "-o", out).exit_code == 0
    info = read_info(out / "model.onnx")
    tiles = calibration_tiles(binary_model.parent.parent / "data" / "train" / "images", info, 32)
    calib, check = hold_out(tiles, 12, keep=20)
    assert (len(calib), len(check)) == (20, 12)
    dest = tmp_path / "model.int8.onnx"
    # an unreachable target makes the search measure every convolution and keep up to max_float
    t = search.tune_int8(out / "model.onnx", dest, calib, check, info.input_name, info.threshold,
                      target_dice=1.01, weight_bits=8, max_float=2)
    assert t.candidates > 0 and len(t.sensitivity) == t.candidates
    assert len(t.float_nodes) <= 2 and all(t.sensitivity[n] > 0 for n in t.float_nodes)
    assert 0 <= t.float_share <= t.max_float_share == search.MAX_FLOAT_SHARE
    costs = search.conv_costs(onnx.load(str(out / "model.onnx")), (64, 64, 3), convert_cost=0)
    assert sum(costs.values()) == pytest.approx(1.0) and all(c > 0 for c in costs.values())
    # a level down, twice the channels on a quarter of the area: the same multiply-adds
    enc0, enc1 = (next(c for k, c in costs.items() if k.startswith(name)) for name in ("enc0_conv2", "enc1_conv2"))
    assert enc0 == pytest.approx(enc1)
    head = list(costs.values())[-1]  # 1x1, one output channel
    assert head == pytest.approx(enc0 / 9 / 6)
    # conversions add to the cost: 6 + 1 channels at 64x64 for the head
    with_conv = search.conv_costs(onnx.load(str(out / "model.onnx")), (64, 64, 3), convert_cost=32)
    macs_total = 6 * 6 * 9 * 64 * 64 / enc0
    assert with_conv[list(costs)[-1]] == pytest.approx(head + 32 * 7 * 64 * 64 / macs_total)
    assert t.dice >= t.dice_all_int8 and t.variants_tried >= 1 + t.candidates
    # the file written is the variant reported: same dice on the check tiles
    written = compare(onnx_predict(out / "model.onnx", check), onnx_predict(dest, check), info.threshold)
    assert written.dice == pytest.approx(t.dice, abs=1e-6)
    # float convolutions read FP32 weights (1x1 ones as MatMul), the others dequantised ones
    graph = onnx.load(str(dest)).graph
    inits = {i.name for i in graph.initializer}
    nodes = {n.name: n for n in graph.node if n.op_type in ("Conv", "MatMul")}
    for name in t.float_nodes:
        assert nodes[name].input[1] in inits
    assert any(c.input[1] not in inits for c in nodes.values() if c.op_type == "Conv")
    assert read_info(dest).precision == "int8"
    assert not list(tmp_path.glob("*.prep.onnx")) and not list(tmp_path.glob("*.calib.json"))

    # a reachable target stops at once: no sensitivity pass
    t0 = search.tune_int8(out / "model.onnx", dest, calib, check, info.input_name, info.threshold, target_dice=0.0)
    assert t0.variants_tried == 1 and t0.float_nodes == [] and t0.sensitivity == {}


def test_bad_inputs_give_one_line_errors(binary_model, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "broken.png").write_bytes(b"not an image")
    cases = [
        ([tmp_path / "missing.keras", "-o", tmp_path / "o1"], "no such model file"),
        ([binary_model, "-o", tmp_path / "o2", "--int8"], "--calibration-images"),
        ([binary_model, "-o", tmp_path / "o3", "--int8", "--calibration-images", empty], "no readable images"),
        ([binary_model, "-o", tmp_path / "o4", "--int8", "--calibration-images", tmp_path / "nope"],
         "does not exist"),
        ([binary_model, "-o", tmp_path / "o6", "--min-batch", "4", "--opt-batch", "2"], "--min-batch"),
        ([binary_model, "-o", tmp_path / "o7", "--triton-repo", binary_model], "Triton repository is not writable"),
    ]
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"PK\x03\x04garbage")
    cases.append(([corrupt, "-o", tmp_path / "o5", "--config", binary_model.parent / "train_eval_infer.config"],
                  "cannot load model"))
    for args, fragment in cases:
        r = export(*args)
        assert r.exit_code == 2, (args, r.output, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and fragment in lines[-1], (args, r.stderr)
        assert "Traceback" not in r.output
        assert not Path(args[2]).exists(), args  # refused before anything was written


def test_unwritable_output_folder(binary_model, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root): permission bits are not enforced")
        r = export(binary_model, "-o", ro / "out")
        assert r.exit_code == 2 and "not writable" in r.stderr
    finally:
        ro.chmod(0o700)


def test_output_path_that_is_a_file(binary_model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = export(binary_model, "-o", blocker / "out")
    assert r.exit_code == 2 and "not writable" in r.stderr and "Traceback" not in r.output
    assert blocker.read_text() == "x"


def test_trt_without_gpu_says_why(binary_model, tmp_path):
    from flexunet.export.tensorrt import check_available

    reason = check_available()
    if reason is None:
        pytest.skip("TensorRT and a GPU are available here: the GPU tests in test_tensorrt.py cover --trt")
    r = export(binary_model, "-o", tmp_path / "out", "--trt", "fp16")
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [f"error: --trt fp16: {reason}"]
    assert not (tmp_path / "out").exists()


def test_check_folder_refuses_without_creating_anything(tmp_path):
    from flexunet.core.errors import FlexunetError
    from flexunet.export.staging import check_folder

    check_folder(tmp_path / "a" / "b")  # can be made: accepted, not made
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "file", tmp_path / "file" / "sub" / "out"):
        with pytest.raises(FlexunetError, match=f"{bad}: output folder is not writable .*file is not a folder"):
            check_folder(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_staging_commits_together_or_leaves_no_trace(tmp_path):
    from flexunet.export.staging import Staging

    out, repo = tmp_path / "new" / "out", tmp_path / "repo"
    with pytest.raises(RuntimeError):
        with Staging(out, repo) as staging:
            assert staging.tmp.parent == out and repo.is_dir()
            (staging.tmp / "a.onnx").write_text("a")
            (staging.replacing(repo / "model") / "config.pbtxt").write_text("c")
            raise RuntimeError("a step failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the folders it made are gone again

    out.mkdir(parents=True)
    (out / "a.onnx").write_text("old a")
    (out / "keep.txt").write_text("k")
    (repo / "model").mkdir(parents=True)
    (repo / "model" / "old.plan").write_text("old")
    with pytest.raises(RuntimeError):
        with Staging(out, repo) as staging:
            (staging.tmp / "a.onnx").write_text("new a")
            raise RuntimeError("a step failed")
    assert (out / "a.onnx").read_text() == "old a" and sorted(p.name for p in out.iterdir()) == ["a.onnx", "keep.txt"]

    with Staging(out, repo) as staging:
        (staging.tmp / "a.onnx").write_text("new a")
        (staging.tmp / "b.onnx").write_text("b")
        (staging.replacing(repo / "model") / "config.pbtxt").write_text("c")
        moved = staging.commit(["a.onnx", "b.onnx", "absent.onnx"])
    assert moved == [out / "a.onnx", out / "b.onnx"]
    assert sorted(p.name for p in out.iterdir()) == ["a.onnx", "b.onnx", "keep.txt"]
    assert (out / "a.onnx").read_text() == "new a"
    assert sorted(p.name for p in repo.iterdir()) == ["model"] and [p.name for p in (repo / "model").iterdir()] == [
        "config.pbtxt"]


def test_int8_weight_bits_follow_the_cpu(monkeypatch):
    from flexunet.core.errors import FlexunetError
    from flexunet.export import int8_quantize as q

    monkeypatch.setattr(q, "cpu_has_vnni", lambda: True)
    assert q.int8_weight_bits("auto") == 8
    monkeypatch.setattr(q, "cpu_has_vnni", lambda: False)
    assert q.int8_weight_bits("auto") == 7
    assert q.int8_weight_bits("8") == 8 and q.int8_weight_bits("7") == 7
    with pytest.raises(FlexunetError, match="weight bits"):
        q.int8_weight_bits("6")


def test_calibration_views_make_up_a_short_tile_count():
    from flexunet.export.tiles import hold_out
    from flexunet.runtime.tiles import with_symmetries

    tiles = np.random.default_rng(0).random((2, 4, 4, 3)).astype(np.float32)
    six = with_symmetries(tiles, 6)
    assert len(six) == 6 and np.array_equal(six[:2], tiles)
    assert np.array_equal(six[2:4], tiles[:, :, ::-1]) and np.array_equal(six[4:], tiles[:, ::-1])
    all_views = with_symmetries(tiles, 100)  # the 8 symmetries of a square, no more
    assert len(all_views) == 16 and len({v.tobytes() for v in all_views}) == 16
    assert len(with_symmetries(tiles[:, :, :3], 100)) == 6  # not square: flips only
    kept, held = hold_out(all_views, 4, keep=12)
    assert (len(kept), len(held)) == (12, 4)
    assert not {v.tobytes() for v in kept} & {v.tobytes() for v in held}
    kept, held = hold_out(all_views, 8, keep=14)  # fewer held out to keep 14, but a quarter at least
    assert (len(kept), len(held)) == (12, 4)


def test_pointwise_convolution_as_matmul_is_exact():
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from flexunet.export.int8_rewrites import pointwise_as_matmul

    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((2, 5, 1, 1)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], "head", kernel_shape=[1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 5, 6, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2, 6, 7])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    rewritten, added = pointwise_as_matmul(model, {"head"})
    assert [n.op_type for n in rewritten.graph.node] == ["Transpose", "MatMul", "Add", "Transpose"]
    assert len(added) == 3 and [n.op_type for n in model.graph.node] == ["Conv"]  # the original is untouched
    onnx.checker.check_model(rewritten)
    x = rng.standard_normal((3, 5, 6, 7)).astype(np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    np.testing.assert_allclose(run(rewritten), run(model), rtol=1e-5, atol=1e-5)
    assert pointwise_as_matmul(model, {"other"})[1] == []  # only the convolutions named


def _first_layers_model(channels=3, offset=0.0):
    """input (N, 8, 8, C) -> x/255 + offset -> NCHW -> 3x3 Conv (5 filters) -> Relu -> 1x1 Conv -> Sigmoid."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(np.array([1 / 255], np.float32), "scale"),
             numpy_helper.from_array(np.array([offset], np.float32), "offset"),
             numpy_helper.from_array(rng.standard_normal((5, channels, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((1, 5, 1, 1)).astype(np.float32), "hw"),
             numpy_helper.from_array(rng.standard_normal(1).astype(np.float32), "hb")]
    nodes = [helper.make_node("Mul", ["x", "scale"], ["s"], "rescale"),
             helper.make_node("Add", ["s", "offset"], ["a"], "shift"),
             helper.make_node("Transpose", ["a"], ["t"], "to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w", "b"], ["c"], "first", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], "relu"),
             helper.make_node("Conv", ["r", "hw", "hb"], ["h"], "head", kernel_shape=[1, 1]),
             helper.make_node("Sigmoid", ["h"], ["y"], "sigmoid")]
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8, 8, channels])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _run(model, x):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_input_scaling_as_channel_padding_matmul_is_exact():
    import copy

    import onnx
    from onnx import numpy_helper

    from flexunet.export.int8_rewrites import input_as_matmul, output_convs

    x = np.random.default_rng(5).integers(0, 256, (2, 8, 8, 3)).astype(np.float32)
    model = _first_layers_model()
    rewritten, exact = input_as_matmul(copy.deepcopy(model))
    onnx.checker.check_model(rewritten)
    assert [n.op_type for n in rewritten.graph.node][:3] == ["MatMul", "Transpose", "Conv"]  # Mul, Add(0) folded
    w = {i.name: numpy_helper.to_array(i) for i in rewritten.graph.initializer}["w"]
    assert w.shape == (5, 4, 3, 3) and not w[:, 3].any()  # a 4th input channel, read with zero weights
    np.testing.assert_allclose(_run(rewritten, x), _run(model, x), rtol=1e-6, atol=1e-6)
    # where the uint8 grid can be kept: the tensors into the convolution, times 1/255 on the way
    assert exact.gain == pytest.approx(1 / 255) and exact.tensors[-1] == "t"
    assert output_convs(rewritten) == ["head"]

    shifted = _first_layers_model(offset=-0.5)  # an offset stays (as an Add) and is exact too
    rewritten, exact = input_as_matmul(copy.deepcopy(shifted))
    assert exact is None and [n.op_type for n in rewritten.graph.node][:2] == ["MatMul", "Add"]
    np.testing.assert_allclose(_run(rewritten, x), _run(shifted, x), rtol=1e-6, atol=1e-6)

    four = _first_layers_model(channels=4)  # already a multiple of 4: unchanged
    assert input_as_matmul(copy.deepcopy(four))[1] is None


def test_int8_first_layer_is_quantised_on_the_input_grid_with_corrected_bias(tmp_path):
    import onnx
    from onnx import numpy_helper

    from flexunet.export.int8_bias import int8_rounded
    from flexunet.export.int8_quantize import quantize_int8

    src = tmp_path / "model.onnx"
    model = _first_layers_model()
    from flexunet.core.modelinfo import METADATA_KEY, ModelInfo

    info = ModelInfo(height=8, width=8, channels=3, num_classes=1, input_name="x", output_name="y")
    model.metadata_props.add(key=METADATA_KEY, value=info.to_json())
    onnx.save_model(model, str(src))
    rng = np.random.default_rng(6)
    tiles = np.clip(rng.normal(200, 30, (16, 8, 8, 3)), 0, 230).round().astype(np.float32)  # bright, < 255
    dest = quantize_int8(src, tmp_path / "model.int8.onnx", tiles, "x", weight_bits=8)
    q = onnx.load(str(dest))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    nodes = list(q.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    conv = next(n for n in nodes if n.op_type == "Conv")
    x_dq = producer[conv.input[0]]
    assert x_dq.op_type == "DequantizeLinear"
    # the input's own grid: 1/255 per step from 0, whatever the calibration tiles' brightest pixel
    assert float(inits[x_dq.input[1]]) == pytest.approx(1 / 255, rel=1e-6) and int(inits[x_dq.input[2]]) == 0
    # weights rounded as int8_rounded says, bias moved by their mean error on the calibration tiles
    w_dq = producer[conv.input[1]]
    weights = inits[w_dq.input[0]].astype(np.float64) * inits[w_dq.input[1]].reshape(-1, 1, 1, 1)
    original = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    w = np.pad(original["w"], [(0, 0), (0, 1), (0, 0), (0, 0)])
    np.testing.assert_allclose(weights, int8_rounded(w.astype(np.float64), 8), rtol=1e-6, atol=1e-9)
    b_dq = producer[conv.input[2]]
    bias = inits[b_dq.input[0]] * inits[b_dq.input[1]]
    mean = np.append(tiles.reshape(-1, 3).mean(0) / 255, 0)
    shift = ((weights - w).sum(axis=(2, 3)) * mean).sum(1)
    assert np.abs(shift).max() > 1e-4
    np.testing.assert_allclose(bias, original["b"] - shift, atol=2 * float(inits[b_dq.input[1]].max()))
    # the output layer reads uint8 and writes float logits: no QuantizeLinear between it and the sigmoid
    head = next(n for n in nodes if n.op_type == "MatMul" and n.input[1] not in inits)
    assert producer[head.input[0]].op_type == "DequantizeLinear"
    consumers = [n.op_type for n in nodes if head.output[0] in n.input]
    assert "QuantizeLinear" not in consumers
    x = tiles[:4]
    assert np.abs(_run(q, x) - _run(model, x)).max() < 0.1


def test_weight_headroom_perturbs_output_channels_of_conv_and_convtranspose():
    """The headroom benchmark rounds weights per output channel: axis 0 of a Conv's weights,
    axis 1 of a ConvTranspose's."""
    from onnx import TensorProto, helper, numpy_helper

    from benchmarks.weight_headroom import perturbed

    conv_w = np.ones((4, 3, 3, 3), np.float32)
    up_w = np.ones((4, 2, 2, 2), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "cw"], ["y"], "conv", pads=[1, 1, 1, 1]),
         helper.make_node("ConvTranspose", ["y", "uw"], ["z"], "up", strides=[2, 2])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(conv_w, "cw"), numpy_helper.from_array(up_w, "uw")])
    model = helper.make_model(graph)

    def by_channel(w):
        return w * np.arange(1, len(w) + 1).reshape((-1,) + (1,) * (w.ndim - 1))

    out = {i.name: numpy_helper.to_array(i) for i in perturbed(model, by_channel).graph.initializer}
    assert [float(out["cw"][o].max()) for o in range(4)] == [1, 2, 3, 4]
    assert [float(out["uw"][:, o].max()) for o in range(2)] == [1, 2]
    assert float(out["uw"][:, 0].min()) == 1  # the input axis of the ConvTranspose is untouched
    only = {i.name: numpy_helper.to_array(i) for i in perturbed(model, by_channel, only="up").graph.initializer}
    assert np.array_equal(only["cw"], conv_w)
    assert np.array_equal(numpy_helper.to_array(model.graph.initializer[0]), conv_w)  # a copy changed


def test_weight_headroom_bias_correction_cancels_the_mean_error_of_changed_weights():
    """With per-channel constant inputs, a bias-corrected Conv with changed weights gives the
    original outputs away from the borders; a stride-2 ConvTranspose the original mean."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from benchmarks.weight_headroom import input_means, perturbed

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "cw", "cb"], ["y"], "conv", pads=[1, 1, 1, 1]),
         helper.make_node("ConvTranspose", ["y", "uw"], ["z"], "up", strides=[2, 2])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 16, 16])],
        [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "cw"),
         numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "cb"),
         numpy_helper.from_array(rng.normal(size=(4, 2, 2, 2)).astype(np.float32), "uw")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.broadcast_to(np.array([0.8, 0.5, 0.3], np.float32)[None, :, None, None], (1, 3, 8, 8)).copy()

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})

    def change(w):
        return w + 0.05 * np.random.default_rng(1).normal(size=w.shape)

    y0, z0 = run(model)
    y1, _ = run(perturbed(model, change, only="conv"))
    y2, _ = run(perturbed(model, change, only="conv", input_means=input_means(model, x, batch=1)))
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert np.abs(y1[inner] - y0[inner]).max() > 1e-3  # the change alone moves the outputs
    np.testing.assert_allclose(y2[inner], y0[inner], atol=1e-5)
    _, z1 = run(perturbed(model, change, only="up"))
    _, z2 = run(perturbed(model, change, only="up", input_means=input_means(model, x, batch=1)))
    assert np.abs(z1.mean(axis=(2, 3)) - z0.mean(axis=(2, 3))).max() > 1e-3
    np.testing.assert_allclose(z2.mean(axis=(2, 3)), z0.mean(axis=(2, 3)), atol=1e-5)
