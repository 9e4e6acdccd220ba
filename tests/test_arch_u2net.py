"""TensorflowU2Net and TensorFlowFlexU2Net: the seed's parameter count on the ALL config, its layer
order and weight shapes, the outputs of the seed's own .h5 files (every layout kept), the heads, refused
settings and files, and (slow) one training step and an ONNX export at a dynamic size."""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
from click.testing import CliRunner

from flexunet.core.config import load_config
from flexunet.core.errors import EXIT_USAGE, ConfigError, ModelError
from seed_facts import SEED_MODELS, seed_layers

pytest.importorskip("h5py")
keras = pytest.importorskip("keras")

ARCHS = ["TensorflowU2Net", "TensorFlowFlexU2Net"]

# The [model] lines of the seed API's projects/TensorflowU2Net/Acute-Lymphoblastic-Leukemia/
# train_eval_infer.config (which names TensorflowUNet3Plus; the seed's TensorflowU2Net class built from
# it anyway) and the seed code's count on it (Keras 3.15.1): 189 Conv2D layers, all trainable.
ALL_MODEL = """
[model]
model          = "TensorflowU2Net"
image_width    = 256
image_height   = 256
image_channels = 3
num_classes    = 1
base_filters   = 16
num_layers     = 6
dropout_rate   = 0.08
learning_rate  = 0.001
loss           = "binary_crossentropy"
metrics        = ["binary_accuracy"]
"""
ALL_COUNT, ALL_CONV_LAYERS = 48_982_289, 189


def _seed_files():
    """(architecture, .h5 file, reference .npz) of every U2Net reference file the manifest lists:
    whole models and weights only, Keras 3 and tf.keras 2."""
    manifest = json.loads((SEED_MODELS / "manifest.json").read_text())
    for entry in manifest["models"].values():
        if entry["arch"] in ARCHS:
            files = entry["files"]
            for kind in ("whole", "weights"):
                if files.get(kind, {}).get("kept"):
                    yield pytest.param(entry["arch"], files[kind]["file"], files["reference"]["file"],
                                       id=files[kind]["file"])


SEED_FILES = list(_seed_files())


def _config(tmp_path: Path, text: str):
    path = tmp_path / "train_eval_infer.config"
    path.write_text(text)
    return load_config(path)


@pytest.fixture(scope="module")
def seed_built():
    """Each architecture's reference config and flexunet's network built from it (built once)."""
    from flexunet.architectures import build

    return {arch: build(load_config(SEED_MODELS / f"{arch}.config")) for arch in ARCHS}


def _seed_layers(name: str) -> list[tuple[str, list[tuple[int, ...]]]]:
    """(class, weight shapes) of each weight-owning layer listed in a seed layers.txt file."""
    return [(cls, shapes) for cls, _, shapes in seed_layers(name)]


def test_all_config_parameter_count_matches_the_seed(tmp_path):
    from flexunet.train.trainer import build_model  # what `flexunet summary` builds

    cfg = _config(tmp_path, ALL_MODEL)
    model = build_model(cfg, 128, 128)  # the smallest size it takes: all weights are convolutions
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert (model.count_params(), trainable) == (ALL_COUNT, ALL_COUNT)
    weighted = [layer for layer in model.layers if layer.weights]
    assert len(weighted) == ALL_CONV_LAYERS and {type(layer).__name__ for layer in weighted} == {"Conv2D"}
    # one output, the fused map: the seed builds it without deep supervision
    assert len(model.outputs) == 1 and model.output.shape == (None, 128, 128, 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_weight_owning_layers_follow_the_seed_order_and_shapes(arch, seed_built):
    model = seed_built[arch]
    ours = [(type(layer).__name__, [tuple(w.shape) for w in layer.weights]) for layer in model.layers if layer.weights]
    for keras_flavour in ("keras3", "tfkeras2"):
        assert ours == _seed_layers(f"{arch}.{keras_flavour}.layers.txt"), keras_flavour
    # the seed's network does not divide by 255 itself; no Lambda anywhere
    assert model.input.name == "image" and not any(layer.name == "rescale" for layer in model.layers)
    assert model.layers[-1].name == "probabilities"
    assert not [layer for layer in model.layers if type(layer).__name__ == "Lambda"]


def test_every_architecture_and_keras_has_a_reference_file():
    names = {p.values[1] for p in SEED_FILES}
    assert {f"{arch}.{flavour}.h5" for arch in ARCHS for flavour in ("keras3", "tfkeras2")} <= names


@pytest.mark.parametrize("arch, h5, npz", SEED_FILES)
def test_seed_files_load_and_reproduce_the_seed_outputs(arch, h5, npz, seed_built):
    from flexunet.architectures.seed_h5 import load_seed_weights

    model = seed_built[arch]
    for variable in model.weights:  # nothing left from another file
        variable.assign(np.zeros(variable.shape, variable.dtype))
    loaded = load_seed_weights(model, SEED_MODELS / h5)
    ref = np.load(SEED_MODELS / npz)
    assert loaded.parameters == model.count_params() == int(ref["params"])
    probs = np.asarray(model(ref["x"].astype(np.float32) / float(ref["input_divisor"]), training=False))
    assert probs.shape == ref["y"].shape
    assert np.abs(probs - ref["y"]).max() <= 1e-5


def test_flex_head_is_the_seeds_per_class_sigmoid_unless_the_config_says_softmax(tmp_path):
    from flexunet.architectures import build
    from flexunet.architectures.seed_h5 import load_seed_weights

    ref = np.load(SEED_MODELS / "TensorFlowFlexU2Net.keras3.npz")
    x = ref["x"].astype(np.float32) / float(ref["input_divisor"])
    assert ref["y"].shape[-1] > 1 and np.abs(ref["y"].sum(axis=-1) - 1).max() > 0.1  # the seed's sigmoids
    text = (SEED_MODELS / "TensorFlowFlexU2Net.config").read_text()
    cfg = _config(tmp_path, text.replace("[model]\n", '[model]\nfinal_activation = "softmax"\n', 1))
    softmax = build(cfg)
    load_seed_weights(softmax, SEED_MODELS / "TensorFlowFlexU2Net.keras3.h5")
    probs = np.asarray(softmax(x, training=False))
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)
    # the same logits: the classes rank as the seed's sigmoids do
    assert (probs.argmax(axis=-1) == ref["y"].argmax(axis=-1)).all()


def test_a_seed_file_with_a_mismatched_config_is_refused_in_one_line(tmp_path, isolate_cli):
    from flexunet.architectures.seed_h5 import rebuild_seed_model
    from flexunet.cli import cli

    text = (SEED_MODELS / "TensorflowU2Net.config").read_text().replace("base_filters   = 4", "base_filters   = 8")
    cfg = _config(tmp_path, text)
    h5 = SEED_MODELS / "TensorflowU2Net.keras3.h5"
    with pytest.raises(ModelError) as info:
        rebuild_seed_model(cfg, h5)
    message = str(info.value)
    assert "\n" not in message and "TensorflowU2Net.keras3.h5" in message and "layer 1 with weights" in message
    out = tmp_path / "m.keras"
    result = CliRunner().invoke(cli, ["import", str(h5), "--config", str(cfg.path), "-o", str(out)])
    assert result.exit_code == EXIT_USAGE and len(result.stderr.splitlines()) == 1, result.output
    assert "does not fit" in result.stderr and not out.exists()


@pytest.mark.parametrize("lines, message", [
    ("num_layers = 2\nimage_width = 68", "image_width must be a positive multiple of 8"),
    ("num_layers = 3\nimage_height = 72", "image_height must be a positive multiple of 16"),
    ("num_layers = 2\nbase_filters = 2", "base_filters must be an int >= 4"),
    ("num_layers = 7\nimage_width = 512\nimage_height = 512", "num_layers must be at most 6"),
])
def test_bad_settings_are_refused_in_one_line(lines, message, tmp_path):
    from flexunet.architectures import build

    cfg = _config(tmp_path, f'[model]\nmodel = "TensorflowU2Net"\nimage_width = 64\nimage_height = 64\n{lines}\n')
    with pytest.raises(ConfigError, match=message) as info:
        build(cfg)
    assert "\n" not in str(info.value) and "train_eval_infer.config" in str(info.value)


def test_required_multiple(tmp_path):
    from flexunet.architectures import required_multiple

    for layers, multiple in ((2, 8), (3, 16), (6, 128)):
        cfg = _config(tmp_path, f'[model]\nmodel = "TensorflowFlexU2Net"\nnum_layers = {layers}\n'
                                f'image_width = 512\nimage_height = 512\n')
        assert required_multiple(cfg) == multiple


TINY = """
[model]
model          = "TensorflowU2Net"
image_width    = 32
image_height   = 32
num_classes    = 1
base_filters   = 4
num_layers     = 2
learning_rate  = 0.01
loss           = "bce_dice_loss"
metrics        = ["dice_coef"]
"""


@pytest.mark.slow
def test_trains_one_step_and_exports_to_onnx_at_a_dynamic_size(tmp_path):
    from flexunet.architectures import build, required_multiple
    from flexunet.core.modelinfo import ModelInfo
    from flexunet.export.onnx import convert
    from flexunet.runtime.backends import load_backend
    from flexunet.train.trainer import compile_model

    cfg = _config(tmp_path, TINY)
    model = build(cfg)
    compile_model(cfg, model)
    model.run_eagerly = True  # one step of a tiny batch: tracing the train step would take far longer
    rng = np.random.default_rng(3)
    x = rng.random((2, 32, 32, 3)).astype(np.float32)
    y = (x[..., :1] > 0.5).astype(np.float32)
    before = np.asarray(model(x, training=False))
    head = model.get_layer("probabilities").kernel.numpy()
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)  # one step
    assert np.isfinite(history.history["loss"][0])
    assert np.abs(model.get_layer("probabilities").kernel.numpy() - head).max() > 0
    assert np.abs(np.asarray(model(x, training=False)) - before).max() > 0

    # the export's own conversion, at a dynamic size (as its tiling step converts a fixed-size model)
    info = ModelInfo.from_config(cfg, dynamic_size=True, multiple=required_multiple(cfg))
    onnx_path = convert(model, tmp_path / "model.onnx", info)
    session = load_backend(onnx_path, backend="onnxruntime")
    for h, w in ((32, 32), (48, 80)):
        tile = rng.random((1, h, w, 3)).astype(np.float32)
        expected = np.asarray(_same_weights(model, cfg, h, w)(tile, training=False))
        got = session.predict(tile)
        assert got.shape == (1, h, w, 1) and np.abs(got - expected).max() <= 1e-5


def _same_weights(model, cfg, height, width):
    """The network of ``cfg`` at another input size with ``model``'s weights."""
    from flexunet.architectures import build

    other = build(cfg, height, width)
    other.set_weights(model.get_weights())
    return other
