"""Seed API ``.h5`` models: read as data, loaded into flexunet's rebuild, used by every command.

The reference files in ``tests/seed_models/`` were written by the seed's own code (see its README);
every architecture flexunet builds that has a reference there is checked: the rebuilt model has the
seed's parameter count and, with the file's weights, reproduces the seed's output to 1e-5.
"""
from __future__ import annotations

import base64
import json
import marshal
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from flexunet.architectures import ARCHITECTURES
from flexunet.cli import cli
from flexunet.core.config import load_config
from flexunet.core.errors import EXIT_USAGE, ModelError

pytest.importorskip("h5py")
pytest.importorskip("tensorflow")

SEED = Path(__file__).resolve().parent / "seed_models"
MANIFEST = json.loads((SEED / "manifest.json").read_text())
pytestmark = pytest.mark.usefixtures("isolate_cli")


def _cases():
    """(architecture, .h5 file, reference .npz, seed parameter count) of every kept reference file
    of an architecture flexunet builds."""
    for entry in MANIFEST["models"].values():
        files = entry["files"]
        if entry["arch"] not in ARCHITECTURES or not files.get("reference", {}).get("kept"):
            continue
        for kind, f in sorted(files.items()):
            if kind in ("whole", "weights") and f["kept"]:
                yield pytest.param(entry["arch"], f["file"], files["reference"]["file"], entry["params"],
                                   id=f["file"])


CASES = list(_cases())


def _project(tmp_path: Path, arch: str = "TensorflowUNet", h5: str = "TensorflowUNet.keras3.h5") -> Path:
    """The seed layout: proj/train_eval_infer.config and proj/models/best_model.h5."""
    (tmp_path / "proj" / "models").mkdir(parents=True)
    shutil.copy(SEED / f"{arch}.config", tmp_path / "proj" / "train_eval_infer.config")
    return Path(shutil.copy(SEED / h5, tmp_path / "proj" / "models" / "best_model.h5"))


def _fed(ref, cfg) -> np.ndarray:
    """The reference input exactly as the seed model took it, ``x / input_divisor``: flexunet's rebuild
    is the same network (an x/255 inside only where the seed had one: the plain UNet with
    ``input_normalize``), so it takes the same input."""
    del cfg
    return ref["x"].astype(np.float32) / ref["input_divisor"]


def _run(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


def _one_line_error(result, *fragments):
    assert result.exit_code == EXIT_USAGE, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_every_layout_is_covered():
    names = {p.values[1] for p in CASES}
    assert {"TensorflowUNet.keras3.h5", "TensorflowUNet.keras3.weights.h5", "TensorflowUNet.tfkeras2.h5",
            "TensorflowUNet.tfkeras2-weights.h5", "TensorFlowFlexUNet.keras3.h5"} <= names


@pytest.mark.parametrize("arch, h5, npz, params", CASES)
def test_seed_file_loads_and_reproduces_the_seed_output(arch, h5, npz, params):
    from flexunet.architectures.seed_h5 import rebuild_seed_model

    cfg = load_config(SEED / f"{arch}.config")
    model, loaded = rebuild_seed_model(cfg, SEED / h5)
    assert model.count_params() == params == loaded.parameters
    ref = np.load(SEED / npz)
    y = np.asarray(model(_fed(ref, cfg), training=False))  # eager: no tf.function tracing
    assert y.shape == ref["y"].shape
    assert float(np.abs(y - ref["y"]).max()) <= 1e-5


def test_layout_is_detected_and_reported():
    from flexunet.architectures.seed_h5_format import read_seed_weights

    expect = {"TensorflowUNet.keras3.h5": "keras3", "TensorflowUNet.keras3.weights.h5": "keras3-weights",
              "TensorflowUNet.tfkeras2.h5": "tfkeras2", "TensorflowUNet.tfkeras2-weights.h5": "tfkeras2-weights"}
    for name, layout in expect.items():
        seed = read_seed_weights(SEED / name)
        assert seed.format == layout and len(seed.layers) == 23 and seed.weight_count == 66, name
        assert seed.entries == 34 and seed.parameters == 9005, name


BASE_FILTERS = (("base_filters   = 4", "base_filters   = 8"),
                ["layer 1 with weights", "'conv2d' (5x5x3x4, 4)", "(5x5x3x8, 8)"])


@pytest.mark.parametrize("h5, change, fragments", [
    ("TensorflowUNet.keras3.h5", *BASE_FILTERS),
    ("TensorflowUNet.tfkeras2-weights.h5", *BASE_FILTERS),
    ("TensorflowUNet.keras3.weights.h5", *BASE_FILTERS),
    ("TensorflowUNet.tfkeras2.h5", ("num_layers     = 3", "num_layers     = 4"),
     ["the file has 23 layers with weights, the model 32"]),
    ("TensorflowUNet.keras3.h5", ("normalization  = True", "normalization  = False"),
     ["layer 2 with weights", "'batch_normalization'"]),
])
def test_a_mismatched_config_is_refused_in_one_line(tmp_path, h5, change, fragments):
    from flexunet.architectures.seed_h5 import rebuild_seed_model

    text = (SEED / "TensorflowUNet.config").read_text()
    assert change[0] in text
    bad = tmp_path / "bad.config"
    bad.write_text(text.replace(*change))
    with pytest.raises(ModelError) as err:
        rebuild_seed_model(load_config(bad), SEED / h5)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(SEED / h5)) and str(bad) in message
    if h5.endswith(".weights.h5"):  # keyed by class: names the layer, not a position
        assert "does not fit the rebuilt model at layer" in message
    else:
        for fragment in fragments:
            assert fragment in message, (fragment, message)


def test_import_writes_model_config_and_record(tmp_path):
    h5 = _project(tmp_path, h5="TensorflowUNet.tfkeras2-weights.h5")
    out = tmp_path / "converted" / "best_model.keras"
    result = _run("import", h5, "-o", out)
    assert result.exit_code == 0, result.output
    for fragment in ("weights only (legacy HDF5", "Keras 2.21.0", "23 layers with weights"):
        assert fragment in result.output
    assert "parameters: 9005" in result.output
    record = json.loads((out.parent / "training.json").read_text())
    assert record["config"] == str(h5.parent.parent / "train_eval_infer.config")
    assert record["imported_from"] == str(h5)
    assert (out.parent / "train_eval_infer.config").read_bytes() == \
        (h5.parent.parent / "train_eval_infer.config").read_bytes()
    from flexunet.runtime.backends.keras import load_keras_model

    ref = np.load(SEED / "TensorflowUNet.tfkeras2.npz")
    y = load_keras_model(out).predict_on_batch(ref["x"].astype(np.float32) / ref["input_divisor"])
    assert float(np.abs(np.asarray(y) - ref["y"]).max()) <= 1e-5


def test_import_of_a_mismatch_exits_2_and_writes_nothing(tmp_path):
    h5 = _project(tmp_path)
    bad = tmp_path / "bad.config"
    bad.write_text((SEED / "TensorflowUNet.config").read_text().replace("base_filters   = 4",
                                                                        "base_filters   = 6"))
    out = tmp_path / "out" / "best_model.keras"
    _one_line_error(_run("import", h5, "--config", bad, "-o", out), "best_model.h5", "'conv2d'", "5x5x3x6")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_no_config_is_one_line_saying_to_pass_it(tmp_path):
    h5 = Path(shutil.copy(SEED / "TensorflowUNet.keras3.h5", tmp_path / "best_model.h5"))
    _one_line_error(_run("import", h5, "-o", tmp_path / "m.keras"), "best_model.h5", "pass --config")
    not_h5 = tmp_path / "m.h5"
    not_h5.write_text("not hdf5")
    shutil.copy(SEED / "TensorflowUNet.config", tmp_path / "train_eval_infer.config")
    _one_line_error(_run("import", not_h5, "-o", tmp_path / "m.keras"), "m.h5", "not an HDF5 file")


def _poisoned(tmp_path: Path, marker: Path, h5: str = "TensorflowUNet.keras3.h5") -> Path:
    """A copy of a seed whole-model file whose Lambda (the seed's x/255 one, or for an architecture
    without one a Lambda added to its model_config) would create ``marker`` if it ever ran."""
    import h5py

    ns: dict = {}
    exec(f"f = lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x / 255.0)[1]", ns)
    code = base64.encodebytes(marshal.dumps(ns["f"].__code__)).decode("ascii")
    path = Path(shutil.copy(SEED / h5, tmp_path / "best_model.h5"))
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        tf2 = str(f.attrs["keras_version"]).startswith("2")
        layers = config["config"]["layers"]
        lambdas = [layer for layer in layers if layer["class_name"] == "Lambda"]
        if not lambdas:
            lambdas = [{"class_name": "Lambda", "name": "payload", "config": {"name": "payload"},
                        "inbound_nodes": []}]
            layers.insert(1, lambdas[0])
        if tf2:  # [code, defaults, closure]
            lambdas[0]["config"].update(function=[code, None, None], function_type="lambda")
        elif isinstance(lambdas[0]["config"].get("function"), dict):
            lambdas[0]["config"]["function"]["config"]["code"] = code
        else:
            lambdas[0]["config"]["function"] = {"class_name": "__lambda__",
                                                "config": {"code": code, "defaults": None, "closure": None}}
        f.attrs["model_config"] = json.dumps(config)
    return path


# every architecture's Keras 3 whole model; tf.keras 2 ones where the seed's Lambda is in the file
WHOLE = [p for p in CASES if p.values[1].endswith(".keras3.h5") or p.values[1] in (
    "TensorflowUNet.tfkeras2.h5", "TensorflowMultiResUNet.tfkeras2.h5")]


@pytest.mark.parametrize("arch, h5, npz, params", WHOLE)
def test_no_code_from_the_file_runs(tmp_path, arch, h5, npz, params):
    from flexunet.architectures.seed_h5 import rebuild_seed_model

    marker = tmp_path / "code_ran.txt"
    path = _poisoned(tmp_path, marker, h5)
    shutil.copy(SEED / f"{arch}.config", tmp_path / "train_eval_infer.config")
    cfg = load_config(tmp_path / "train_eval_infer.config")
    model, _ = rebuild_seed_model(cfg, path)
    ref = np.load(SEED / npz)
    y = np.asarray(model.predict_on_batch(_fed(ref, cfg)))
    assert float(np.abs(y - ref["y"]).max()) <= 1e-5
    if arch == "TensorflowUNet":  # the command goes the same way (both Lambda formats)
        assert _run("import", path, "-o", tmp_path / "m.keras").exit_code == 0
    assert not marker.exists()
    if h5 != "TensorflowUNet.keras3.h5":
        return
    # the file is a real trap: deserialising it the usual way runs the code
    import keras

    try:
        keras.models.load_model(path, compile=False, safe_mode=False)
    except Exception:  # a Keras that refuses it outright ran nothing either
        pass
    else:
        assert marker.read_text() == "ran"


def test_infer_and_evaluate_take_the_h5(tmp_path, make_images):
    import cv2

    h5 = _project(tmp_path)
    images = make_images(tmp_path / "data" / "images", [(64, 64), (64, 64)])
    (tmp_path / "data" / "masks").mkdir()
    for p in images:
        gray = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2GRAY)
        cv2.imwrite(str(tmp_path / "data" / "masks" / p.name), np.where(gray > 128, 255, 0).astype(np.uint8))
    result = _run("infer", h5, tmp_path / "data" / "images", "-o", tmp_path / "masks_out")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "masks_out").glob("*.png")) == ["img00.png", "img01.png"]
    cfg = tmp_path / "proj" / "train_eval_infer.config"
    cfg.write_text(cfg.read_text() + f'\n[test]\nimage_datapath = "{tmp_path / "data" / "images"}"\n'
                   f'mask_datapath = "{tmp_path / "data" / "masks"}"\n')
    result = _run("evaluate", cfg, "--model", h5)
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "proj" / "evaluation.csv").read_text().splitlines()
    assert lines[0].startswith("loss,") and any(line.startswith("mask_dice,") for line in lines)


def test_segmenter_api_takes_the_h5(tmp_path):
    from flexunet import Segmenter

    h5 = _project(tmp_path, h5="TensorflowUNet.keras3.weights.h5")
    ref = np.load(SEED / "TensorflowUNet.keras3.npz")
    with Segmenter(h5, batch_size=1) as seg:
        probs = seg.backend.predict(ref["x"].astype(np.float32))
    assert float(np.abs(probs - ref["y"]).max()) <= 1e-5


@pytest.mark.slow
def test_export_from_h5_passes_parity(tmp_path, make_images):
    h5 = _project(tmp_path)
    images = make_images(tmp_path / "images", [(64, 64), (96, 80)])
    out = tmp_path / "exported"
    result = _run("export", h5, "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "export_report.json").read_text())
    assert report["parameters"] == 9005 and report["config"].endswith("proj/train_eval_infer.config")
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert report["keras_weights_sha256"] in json.dumps(meta)
    # the same weights, under the same names, as the imported .keras an export from it would hash
    from flexunet.export.exporter import keras_weights_sha256
    from flexunet.runtime.backends.keras import load_keras_model

    assert _run("import", h5, "-o", tmp_path / "imported" / "best_model.keras").exit_code == 0
    imported = load_keras_model(tmp_path / "imported" / "best_model.keras")
    assert keras_weights_sha256(imported) == report["keras_weights_sha256"]
    result = _run("parity", "--reference", h5, "--candidate", out / "model.onnx", *images,
                  "-o", tmp_path / "parity")
    assert result.exit_code == 0, result.output


def _summary_cases():
    """A UNet (counted from the config) and a network counted once built, the one of them whose seed
    count is checked nowhere else (no reference .h5)."""
    for entry in MANIFEST["models"].values():
        if entry["mode"] == "keras3" and entry["arch"] in ("TensorflowUNet", "TensorflowDeepLabV3Plus") \
                and entry["arch"] in ARCHITECTURES:
            yield pytest.param(entry["arch"], entry["params"], id=entry["arch"])


@pytest.mark.parametrize("arch, params", list(_summary_cases()))
def test_summary_prints_the_seed_parameter_count(arch, params):
    result = _run("summary", SEED / f"{arch}.config")
    assert result.exit_code == 0, result.output
    assert f"parameters: {params}" in result.stdout.splitlines()


@pytest.mark.parametrize("name", ["TensorflowTransUNet", "TensorflowSwinUNet", "TensorFlowFlexTransUNet",
                                  "TensorflowFlexSwinUNet"])
def test_unsupported_architectures_are_refused_in_one_line(tmp_path, name):
    from flexunet.architectures import REFUSED

    cfg = tmp_path / "train_eval_infer.config"
    cfg.write_text((SEED / "TensorflowUNet.config").read_text().replace('"TensorflowUNet"', f'"{name}"'))
    _one_line_error(_run("summary", cfg), str(cfg), f"{name} is not supported: {REFUSED[name]}")
    h5 = Path(shutil.copy(SEED / "TensorflowUNet.keras3.h5", tmp_path / "best_model.h5"))
    _one_line_error(_run("import", h5, "-o", tmp_path / "m.keras"), f"{name} is not supported")
    assert not (tmp_path / "m.keras").exists()


def test_a_file_that_is_not_a_seed_model_is_refused_before_tensorflow(tmp_path, make_images):
    import subprocess
    import sys

    (tmp_path / "models").mkdir()
    shutil.copy(SEED / "TensorflowUNet.config", tmp_path / "train_eval_infer.config")
    (tmp_path / "models" / "best_model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"truncated" * 10)
    make_images(tmp_path / "in", [(64, 64)])
    code = ("import sys\nfrom flexunet.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
            "    print('tensorflow' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code, "infer", "models/best_model.h5", "in", "-o", "out"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == EXIT_USAGE and len(lines) == 1, proc.stderr
    assert "best_model.h5" in lines[0] and "not an HDF5 file" in lines[0]
    assert proc.stdout.strip() == "False" and not (tmp_path / "out").exists()
