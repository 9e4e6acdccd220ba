"""TensorflowAttentionUNet and TensorflowUNet3Plus (and their Flex names): the seed's layer order,
weight shapes and parameter counts, outputs of the seed's own .h5 files, the dynamic-size bilinear
upsampling, refused settings, and (slow) training, ONNX/INT8 export and inference."""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
from click.testing import CliRunner

from flexunet.core.config import load_config
from flexunet.core.errors import ConfigError
from flexunet.core.imageio import read_mask
from seed_facts import SEED_MODELS, seed_layers
from tiny_configs import splits

ARCHS = ["TensorflowAttentionUNet", "TensorflowUNet3Plus"]

# The [model] lines of the seed API's projects/<arch>/Acute-Lymphoblastic-Leukemia/train_eval_infer.config
# and the seed code's parameter counts on them (total, trainable, non-trainable; Keras 3.15.1).
ALL_MODEL = """
[model]
model          = "{arch}"
image_width    = 256
image_height   = 256
image_channels = 3
num_classes    = {classes}
base_filters   = 16
num_layers     = 6
dropout_rate   = 0.08
learning_rate  = 0.0001
"""
ALL_COUNTS = {"TensorflowAttentionUNet": (8_229_073, 8_221_073, 8_000),
              "TensorflowUNet3Plus": (1_753_905, 1_750_513, 3_392)}


def _config(tmp_path: Path, text: str):
    path = tmp_path / "train_eval_infer.config"
    path.write_text(text)
    return load_config(path)


def _build(cfg, *size):
    from flexunet.architectures import build

    return build(cfg, *size)


def _seed_layers(name: str) -> list[tuple[str, list[tuple[int, ...]]]]:
    """(class, weight shapes) of each weight-owning layer listed in a seed layers.txt file."""
    return [(cls, shapes) for cls, _, shapes in seed_layers(name)]


@pytest.mark.parametrize("arch", ARCHS)
def test_weight_owning_layers_follow_the_seed_order_and_shapes(arch):
    model = _build(load_config(SEED_MODELS / f"{arch}.config"))
    ours = [(type(layer).__name__, [tuple(w.shape) for w in layer.weights]) for layer in model.layers if layer.weights]
    for keras_flavour in ("keras3", "tfkeras2"):
        assert ours == _seed_layers(f"{arch}.{keras_flavour}.layers.txt"), keras_flavour
    # the seed's network does not divide by 255 itself: no Rescaling (the pipeline scales if the config says)
    assert model.input.name == "image" and not any(layer.name == "rescale" for layer in model.layers)
    assert model.layers[-1].name == "probabilities" and model.output.shape == (None, 64, 64, 1)
    assert not [layer for layer in model.layers if type(layer).__name__ == "Lambda"]


@pytest.mark.parametrize("arch", ARCHS)
def test_seed_h5_loads_and_reproduces_the_seed_outputs(arch):
    from flexunet.architectures.seed_h5 import rebuild_seed_model

    cfg = load_config(SEED_MODELS / f"{arch}.config")
    model, loaded = rebuild_seed_model(cfg, SEED_MODELS / f"{arch}.keras3.h5")
    ref = np.load(SEED_MODELS / f"{arch}.keras3.npz")
    assert loaded.parameters == model.count_params() == int(ref["params"])
    probs = np.asarray(model(ref["x"].astype(np.float32) / float(ref["input_divisor"]), training=False))
    assert np.abs(probs - ref["y"]).max() <= 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_all_config_parameter_counts_match_the_seed(arch, tmp_path):
    model = _build(_config(tmp_path, ALL_MODEL.format(arch=arch, classes=1)))
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert (model.count_params(), trainable, model.count_params() - trainable) == ALL_COUNTS[arch]


@pytest.mark.parametrize("arch", ["TensorFlowFlexAttentionUNet", "TensorflowFlexUNet3Plus"])
def test_flex_variants_are_multiclass_softmax_networks(arch, tmp_path):
    text = ALL_MODEL.format(arch=arch, classes=3).replace("256", "64").replace("= 16", "= 2")
    text = text.replace("num_layers     = 6", "num_layers     = 5") + "[mask]\nrgb_map = {(0,0,0): 0, (255,0,0): 1, (0,255,0): 2}\n"
    model = _build(_config(tmp_path, text))
    x = np.random.default_rng(0).random((2, 64, 64, 3)).astype(np.float32)
    probs = np.asarray(model(x, training=False))
    assert probs.shape == (2, 64, 64, 3)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)
    assert probs.std(axis=(1, 2)).min() > 0  # not a constant (the seed's one-filter softmax head is)


def test_bilinear_upsampling_matches_keras_and_traces_with_a_dynamic_size():
    import keras
    import tensorflow as tf

    from flexunet.architectures.bilinear import upsample_bilinear

    rng = np.random.default_rng(1)
    for factor in (2, 4, 8, 16):
        inp = keras.Input((None, None, 3))
        model = keras.Model(inp, upsample_bilinear(inp, factor, f"up{factor}"))
        x = rng.normal(size=(2, 3, 5, 3)).astype(np.float32)
        ref = keras.layers.UpSampling2D((factor, factor), interpolation="bilinear")(x)
        assert np.abs(np.asarray(model(x)) - np.asarray(ref)).max() <= 2e-6
        traced = tf.function(model, input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
        assert traced.get_concrete_function().outputs[0].shape.as_list() == [None, None, None, 3]
    with pytest.raises(ValueError, match="integer factor"):
        upsample_bilinear(inp, 1.5, "bad")


@pytest.mark.parametrize("arch, lines, message", [
    ("TensorflowUNet3Plus", "num_layers = 4", "num_layers must be an int >= 5"),
    ("TensorflowUNet3Plus", "image_width = 72", "image_width must be a positive multiple of 16"),
    ("TensorflowUNet3Plus", "dropout_rate = 0.5", "dropout_rate 0.5 \\* 2 must be < 1"),
    ("TensorflowAttentionUNet", "image_height = 40", "image_height must be a positive multiple of 16"),
])
def test_bad_settings_are_refused_in_one_line(arch, lines, message, tmp_path):
    text = f'[model]\nmodel = "{arch}"\nimage_width = 64\nimage_height = 64\nnum_layers = 5\n{lines}\n'
    with pytest.raises(ConfigError, match=message) as info:
        _build(_config(tmp_path, text))
    assert "\n" not in str(info.value) and "train_eval_infer.config" in str(info.value)


SMOKE = """
[model]
model          = "{arch}"
image_width    = 64
image_height   = 64
num_classes    = 1
base_filters   = {filters}
num_layers     = {layers}
dropout_rate   = 0.05
learning_rate  = 0.005
loss           = "bce_dice_loss"
metrics        = ["dice_coef"]
""" + splits(epochs=1, batch_size=8)


@pytest.mark.slow
@pytest.mark.parametrize("arch, filters, layers", [("TensorflowAttentionUNet", 4, 3), ("TensorflowUNet3Plus", 2, 5)])
def test_trains_exports_verified_int8_and_infers(arch, filters, layers, tmp_path):
    from flexunet.cli import cli
    from flexunet.train.synth import make_dataset
    from flexunet.train.trainer import train

    make_dataset(tmp_path / "data", kind="tiles", size=64, n_train=8, n_valid=4, n_test=4, n_mini=1,
                 mini_size=(96, 80), seed=5)
    (tmp_path / "train_eval_infer.config").write_text(SMOKE.format(arch=arch, filters=filters, layers=layers))
    model_path = train(load_config(tmp_path / "train_eval_infer.config")).model_path
    assert model_path.is_file()

    out = tmp_path / "out"
    runner = CliRunner()
    r = runner.invoke(cli, ["export", str(model_path), "-o", str(out), "--int8", "--calibration-images",
                            str(tmp_path / "data" / "train" / "images"), "--calibration-count", "4",
                            "--int8-min-dice", "0", "--int8-target-dice", "0"])  # no mixed-precision search
    assert r.exit_code == 0, r.output + r.stderr
    artifacts = json.loads((out / "export_report.json").read_text())["artifacts"]
    assert artifacts["model.onnx"]["vs_keras"]["max_abs_diff"] <= 1e-4
    assert 0.0 <= artifacts["model.int8.onnx"]["vs_fp32"]["dice"] <= 1.0

    masks = tmp_path / "masks"
    r = runner.invoke(cli, ["infer", str(out / "model.onnx"), str(tmp_path / "data" / "mini_test" / "images"), "-o", str(masks)])
    assert r.exit_code == 0, r.output + r.stderr
    written = sorted(masks.glob("*.png"))
    assert written and set(np.unique(read_mask(written[0]))) <= {0, 255}
