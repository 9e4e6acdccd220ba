"""Every supported seed architecture in every layout the seed's ``ModelCheckpoint`` writes.

``tests/seed_models/`` keeps, per architecture, a tiny ``<arch>.config``, the seed model's output on a
fixed input (``<arch>.<keras>.npz``) and every layer of the model the seed's code built
(``<arch>.<keras>.spec.json``). The small architectures also keep the seed's real ``.h5`` files
(test_seed_h5.py loads those); for the fixed-width backbones (ResNet50, EfficientNetB0/B7) whose
files are too big to keep, the weights come from ``recipe.py`` and these tests write the seed's
layouts themselves (``h5_layouts.py``, checked here against the real files), then check what
flexunet makes of them: the seed's parameter count, its outputs within 1e-5, a one-line refusal of
a mismatched config, and no code run from the file.
"""
from __future__ import annotations

import base64
import importlib.util
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


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"seed_models_{name}", SEED / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


H5 = _module("h5_layouts")
#: The layouts each Keras writes (whole model, weights only).
MODE_LAYOUTS = {"keras3": ("keras3", "keras3-weights"), "tfkeras2": ("tfkeras2", "tfkeras2-weights")}
#: Real-file kind in the manifest -> layout, per Keras.
KIND_LAYOUT = {("keras3", "whole"): "keras3", ("keras3", "weights"): "keras3-weights",
               ("tfkeras2", "whole"): "tfkeras2", ("tfkeras2", "weights"): "tfkeras2-weights"}
BIG = {"TensorflowEfficientNetB7UNet"}      # 56.7M parameters: built once, its tests marked slow


def _entries(supported_only: bool = True):
    for key, entry in sorted(MANIFEST["models"].items()):
        files = entry.get("files", {})
        if "spec" not in files or not files.get("reference", {}).get("kept"):
            continue
        if supported_only and entry["arch"] not in ARCHITECTURES:
            continue
        yield key, entry


def _param(*values, arch: str, id: str):
    marks = [pytest.mark.slow] if arch in BIG else []
    return pytest.param(*values, marks=marks, id=id)


def _recipe_cases():
    """(arch, mode, layout) for the architectures without a kept file."""
    for key, entry in _entries():
        if "whole" not in entry["files"]:
            for layout in MODE_LAYOUTS[entry["mode"]]:
                yield _param(entry["arch"], entry["mode"], layout, arch=entry["arch"], id=f"{key}-{layout}")


def _archs():
    return sorted({entry["arch"] for _, entry in _entries()})


_MODELS: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _release_models():
    """The rebuilt models (EfficientNetB7UNet's 56.7M parameters among them) live for this module
    only."""
    yield
    _MODELS.clear()


@pytest.fixture(autouse=True)
def _drop_written_files(tmp_path):
    """Written seed files (up to 227 MB for EfficientNetB7UNet) are not left in pytest's kept
    temporary folders."""
    yield
    for path in tmp_path.glob("*.h5"):
        path.unlink()


def _model(arch: str):
    """flexunet's rebuild of ``<arch>.config``, built once per architecture (loads replace every
    weight)."""
    if arch not in _MODELS:
        from flexunet.architectures import build

        _MODELS[arch] = build(load_config(SEED / f"{arch}.config"))
    return _MODELS[arch]


def _spec(arch: str, mode: str) -> dict:
    return H5.load_spec(SEED / MANIFEST["models"][f"{arch}.{mode}"]["files"]["spec"]["file"])


def _written(tmp_path: Path, arch: str, mode: str, layout: str, payload: str | None = None) -> Path:
    spec = _spec(arch, mode)
    name = f"{arch}.{layout}.h5" if layout != "keras3-weights" else f"{arch}.weights.h5"
    return H5.write_layout(tmp_path / name, layout, spec, H5.recipe_arrays(spec), payload=payload)


def _max_diff(model, arch: str, mode: str) -> float:
    ref = np.load(SEED / MANIFEST["models"][f"{arch}.{mode}"]["files"]["reference"]["file"])
    y = np.asarray(model(ref["x"].astype(np.float32) / ref["input_divisor"], training=False))
    assert y.shape == ref["y"].shape
    return float(np.abs(y - ref["y"]).max())


def test_every_supported_architecture_has_a_reference():
    archs = set(_archs())
    assert {"TensorflowUNet", "TensorflowAttentionUNet", "TensorflowUNet3Plus", "TensorflowMultiResUNet",
            "TensorflowSharpUNet", "TensorFlowFlexUNet", "TensorflowDeepLabV3Plus",
            "TensorflowEfficientNetB7UNet", "TensorflowEfficientUNet"} <= archs
    for _, entry in _entries():    # outputs unsaturated: a 1e-5 comparison means something
        assert 1e-4 < entry["y_range"][0] and entry["y_range"][1] < 1 - 1e-4, entry["arch"]


@pytest.mark.parametrize("arch", [_param(a, arch=a, id=a) for a in _archs()])
def test_rebuild_has_the_seed_parameter_count(arch):
    counts = {entry["params"] for _, entry in _entries() if entry["arch"] == arch}
    assert len(counts) == 1 and _model(arch).count_params() == counts.pop()


@pytest.mark.parametrize("arch, mode, layout", list(_recipe_cases()))
def test_written_layout_reproduces_the_seed_output(tmp_path, arch, mode, layout):
    from flexunet.architectures.seed_h5 import load_seed_weights
    from flexunet.architectures.seed_h5_format import read_seed_weights

    seed = read_seed_weights(_written(tmp_path, arch, mode, layout))
    assert seed.format == layout
    loaded = load_seed_weights(_model(arch), seed)
    assert loaded.parameters == MANIFEST["models"][f"{arch}.{mode}"]["params"]
    assert _max_diff(_model(arch), arch, mode) <= 1e-5


def _real_cases():
    for key, entry in _entries(supported_only=False):
        for kind in ("whole", "weights"):
            if entry["files"].get(kind, {}).get("kept"):
                yield pytest.param(entry["arch"], entry["mode"], kind, id=f"{key}-{kind}")


@pytest.mark.parametrize("arch, mode, kind", list(_real_cases()))
def test_writer_makes_the_seed_layout(tmp_path, arch, mode, kind):
    """The test-side writer, given a real file's arrays, writes the same groups, datasets, attributes
    and values as the seed did (the config JSON texts aside, and the optimizer state of the files
    saved after training: the writer writes an untrained checkpoint's)."""
    import h5py

    entry = MANIFEST["models"][f"{arch}.{mode}"]
    files = entry["files"]
    spec = _spec(arch, mode)
    real = SEED / files[kind]["file"]
    arrays = H5.file_arrays(SEED / files["whole"]["file"], spec)
    written = H5.write_layout(tmp_path / real.name, KIND_LAYOUT[mode, kind], spec, arrays)
    trained = entry["trained"].startswith("one epoch")
    expected, got = H5.structure(real, skip_optimizer=trained), H5.structure(written, skip_optimizer=trained)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name] == expected[name], name
    with h5py.File(real, "r") as a, h5py.File(written, "r") as b:
        datasets = [n for n, v in expected.items() if v[0] == "dataset" and not n.startswith("optimizer")]
        for name in datasets:
            assert np.array_equal(a[name][()], b[name][()]), name


MISMATCH = {  # a config change that changes the weights; B7 has fixed widths: another architecture
    "TensorflowUNet": ("base_filters   = 4", "base_filters   = 8"),
    "TensorflowAttentionUNet": ("base_filters   = 4", "base_filters   = 8"),
    "TensorflowUNet3Plus": ("base_filters   = 2", "base_filters   = 4"),
    "TensorflowMultiResUNet": ("base_filters   = 8", "base_filters   = 16"),
    "TensorflowSharpUNet": ("max_filter     = 16", "max_filter     = 32"),
    "TensorFlowFlexUNet": ("base_filters   = 4", "base_filters   = 8"),
    "TensorflowU2Net": ("base_filters   = 4", "base_filters   = 8"),
    "TensorFlowFlexU2Net": ("base_filters   = 4", "base_filters   = 8"),
    "TensorflowDeepLabV3Plus": ("num_classes    = 1", "num_classes    = 2",
                                "[mask]\n", "[mask]\nrgb_map = {(0,0,0):0, (255,255,255):1}\n"),
    "TensorflowEfficientUNet": ('efficientnet   = "B0"', 'efficientnet   = "B1"'),
    "TensorflowEfficientNetB7UNet": ('model          = "TensorflowEfficientNetB7UNet"',
                                     'model          = "TensorflowDeepLabV3Plus"'),
}


def _a_file(tmp_path: Path, arch: str, payload: str | None = None) -> Path:
    """A whole-model file of ``arch``: the seed's real one when kept, else written from the recipe."""
    for mode in ("keras3", "tfkeras2"):
        entry = MANIFEST["models"].get(f"{arch}.{mode}")
        if entry and entry["files"].get("whole", {}).get("kept"):
            return Path(shutil.copy(SEED / entry["files"]["whole"]["file"], tmp_path / "best_model.h5"))
        if entry and "spec" in entry["files"]:
            return _written(tmp_path, arch, mode, mode, payload=payload)
    raise AssertionError(f"no file for {arch}")


@pytest.mark.parametrize("arch", [_param(a, arch=a, id=a) for a in _archs()])
def test_a_mismatched_config_is_refused_in_one_line(tmp_path, arch):
    text = (SEED / f"{arch}.config").read_text()
    changes = MISMATCH[arch]
    for old, new in zip(changes[::2], changes[1::2]):
        assert old in text
        text = text.replace(old, new)
    bad = tmp_path / "bad.config"
    bad.write_text(text)
    h5 = _a_file(tmp_path, arch)
    out = tmp_path / "out" / "m.keras"
    result = CliRunner().invoke(cli, ["import", str(h5), "--config", str(bad), "-o", str(out)])
    assert result.exit_code == EXIT_USAGE, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {h5}"), result.stderr
    assert "does not fit the rebuilt model" in lines[0] and str(bad) in lines[0]
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize("arch", [_param(a, arch=a, id=a) for a in _archs()])
def test_another_architecture_file_is_refused(tmp_path, arch):
    """The rebuilt model of ``arch`` refuses a file of another architecture (UNet's, or for UNet
    AttentionUNet's), naming the config: nothing is assigned."""
    from flexunet.architectures.seed_h5 import load_seed_weights

    other = "TensorflowAttentionUNet" if arch == "TensorflowUNet" else "TensorflowUNet"
    model = _model(arch)
    before = [v.numpy() for v in model.weights[:3]]
    with pytest.raises(ModelError) as err:
        load_seed_weights(model, SEED / f"{other}.keras3.h5", built_from=SEED / f"{arch}.config")
    message = str(err.value)
    assert "\n" not in message and f"{arch}.config" in message and "does not fit" in message
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.weights[:3]))


def _payload(marker: Path) -> str:
    ns: dict = {}
    exec(f"f = lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x)[1]", ns)
    return base64.encodebytes(marshal.dumps(ns["f"].__code__)).decode("ascii")


def _recipe_archs():
    return [_param(a, arch=a, id=a) for a in _archs()
            if not any(e["files"].get("whole") for _, e in _entries() if e["arch"] == a)]


@pytest.mark.parametrize("arch", _recipe_archs())
def test_no_code_from_a_written_file_runs(tmp_path, arch):
    """A Lambda payload in a written whole-model file's model_config is never run (the real files of
    the other architectures: test_seed_h5.py)."""
    from flexunet.architectures.seed_h5 import load_seed_weights

    marker = tmp_path / "code_ran.txt"
    h5 = _a_file(tmp_path, arch, payload=_payload(marker))
    import h5py

    with h5py.File(h5, "r") as f:
        assert "lambda_payload" in f.attrs["model_config"]
    load_seed_weights(_model(arch), h5)
    mode = "keras3" if f"{arch}.keras3" in MANIFEST["models"] else "tfkeras2"
    assert _max_diff(_model(arch), arch, mode) <= 1e-5
    assert not marker.exists()
