"""MultiResUNet and Sharp U-Net (seed API and Lizard "Flex" names): the seed's layer order, weight
shapes and parameter counts, their heads, the frozen sharpening kernels, one-line refusals, and a
short train -> export -> infer run of each.

The seed's numerics (its ``.h5`` loaded into these builders reproduces its output) are checked by
tests/test_seed_h5.py for every registered architecture with a reference file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
from click.testing import CliRunner

from flexunet import architectures
from flexunet.cli import cli
from flexunet.core.config import load_config
from flexunet.core.errors import ConfigError
from seed_facts import SEED_MODELS as SEED, seed_layers

keras = pytest.importorskip("keras")

ARCHS = ("TensorflowMultiResUNet", "TensorflowSharpUNet")

# The [model] lines of the seed API's projects/<arch>/Acute-Lymphoblastic-Leukemia/train_eval_infer.config
# (SharpUNet's filters and max_filter are the seed's defaults there) and the seed's parameter counts
# (total, non-trainable) for them (tests/seed_models/manifest.json).
ALL_CONFIG = {
    "TensorflowMultiResUNet": ("base_filters = 16\nnum_layers = 6\ndropout_rate = 0.08\n", 8_174_749, 28_376),
    "TensorflowSharpUNet": ("base_ksize = (5, 5)\nbase_dilation = (2, 2)\nksize = (3, 3)\n"
                            "sharp_ksize = (3, 3)\nbase_filters = 16\nnum_layers = 6\ndropout_rate = 0.08\n",
                            14_036_033, 4_320),
}


def _config(tmp_path: Path, model: str, lines: str, size: int = 64, classes: int = 1):
    path = tmp_path / "train_eval_infer.config"
    rgb_map = "{" + ", ".join(f"({c}, {c}, {c}): {c}" for c in range(classes)) + "}"
    path.write_text(f'[model]\nmodel = "{model}"\nimage_width = {size}\nimage_height = {size}\n'
                    f'image_channels = 3\nnum_classes = {classes}\n{lines}learning_rate = 0.001\n'
                    'loss = "binary_crossentropy"\nmetrics = ["binary_accuracy"]\n'
                    + (f"[mask]\nrgb_map = {rgb_map}\n" if classes > 1 else ""))
    return load_config(path)


def _our_layers(model):
    return [(type(layer).__name__, layer.trainable, [tuple(w.shape) for w in layer.weights])
            for layer in model.layers if layer.weights]


def _seed_params(arch: str) -> tuple[int, int]:
    header = (SEED / f"{arch}.keras3.layers.txt").read_text().splitlines()[1]
    total = header.split("params ")[1].split(" ")[0]
    non_trainable = header.split("non-trainable ")[1].rstrip(")")
    return int(total.replace(",", "")), int(non_trainable.replace(",", ""))


@pytest.mark.parametrize("arch", ARCHS)
def test_weighted_layers_follow_the_seed_order_and_shapes(arch):
    model = architectures.build(load_config(SEED / f"{arch}.config"))
    ours = _our_layers(model)
    for keras_kind in ("keras3", "tfkeras2"):
        assert ours == seed_layers(f"{arch}.{keras_kind}.layers.txt"), keras_kind
    total, non_trainable = _seed_params(arch)
    assert model.count_params() == total
    assert sum(int(np.prod(w.shape)) for w in model.non_trainable_weights) == non_trainable
    assert model.input.name == "image" and model.layers[-1].name == "probabilities"
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)


@pytest.mark.parametrize("arch", ARCHS)
def test_summary_prints_the_seed_count_for_the_all_config(arch, tmp_path, isolate_cli):
    lines, total, non_trainable = ALL_CONFIG[arch]
    cfg = _config(tmp_path, arch, lines, size=256)
    result = CliRunner().invoke(cli, ["summary", str(cfg.path)])
    assert result.exit_code == 0, result.output
    assert f"parameters: {total}" in result.output
    assert f"Non-trainable params: {non_trainable:,}" in result.output


def test_multires_block_widths_are_the_seeds():
    from flexunet.architectures.multires_unet import multires_widths

    # W = F * 1.67, then int(W * 0.167), int(W * 0.333), int(W * 0.5), in that floating-point order
    assert multires_widths(8) == (2, 4, 6)
    assert multires_widths(16) == (4, 8, 13)
    assert multires_widths(512) == (142, 284, 427)


def test_heads_api_and_flex(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3)).astype(np.float32)
    api = architectures.build(_config(tmp_path, "TensorflowMultiResUNet", "base_filters = 4\nnum_layers = 2\n",
                                      size=32, classes=3))
    flex = architectures.build(_config(tmp_path, "TensorFlowFlexMultiResUNet",
                                       "base_filters = 4\nnum_layers = 2\n", size=32, classes=3))
    # the API seed's head is a sigmoid whatever the classes; the Flex one a softmax
    assert api.layers[-1].activation.__name__ == "sigmoid"
    assert flex.layers[-1].activation.__name__ == "softmax"
    assert _our_layers(api) == _our_layers(flex)
    np.testing.assert_allclose(flex.predict(x, verbose=0).sum(-1), 1.0, atol=1e-5)
    for name in ("TensorflowSharpUNet", "TensorFlowFlexSharpUNet", "TensorflowFlexSharpUNet"):
        sharp = architectures.build(_config(tmp_path, name, "filters = [4, 8]\nmax_filter = 8\n",
                                            size=32, classes=4))
        assert sharp.layers[-1].activation.__name__ == "softmax"
        assert sharp.output.shape[1:] == (32, 32, 4)


def test_sharpening_kernels_are_fixed_and_only_the_last_decoder_level_has_convs(tmp_path):
    cfg = _config(tmp_path, "TensorflowSharpUNet", "filters = [4, 8, 16]\nmax_filter = 16\n", size=32)
    model = architectures.build(cfg)
    sharp = [layer for layer in model.layers if isinstance(layer, keras.layers.DepthwiseConv2D)]
    assert [layer.kernel.shape for layer in sharp] == [(3, 3, 16, 1), (3, 3, 8, 1), (3, 3, 4, 1)]
    expected = [np.where(np.arange(9).reshape(3, 3)[:, :, None, None] == 4, 8.0, -1.0)
                * np.ones((1, 1, layer.kernel.shape[2], 1)) for layer in sharp]
    convs = [layer for layer in model.layers if type(layer) is keras.layers.Conv2D]
    assert len(convs) == 2 * 3 + 2 + 2 + 1  # encoder, bridge, last decoder level, head
    trained = {id(w) for w in model.trainable_weights}  # what an optimizer updates
    frozen = {id(w) for w in model.non_trainable_weights}
    for layer, kernel in zip(sharp, expected):
        assert not layer.trainable and id(layer.kernel) in frozen and id(layer.kernel) not in trained
        np.testing.assert_array_equal(layer.kernel.numpy(), kernel)
    # a sharpened constant map is zero away from the border (the kernel sums to 0; two 3x3 convs
    # and the 3x3 sharpening reach 3 pixels in)
    probe = keras.Model(model.input, sharp[-1].output)
    flat = probe.predict(np.full((1, 32, 32, 3), 128.0, np.float32), verbose=0)
    np.testing.assert_allclose(flat[0, 3:-3, 3:-3], 0.0, atol=1e-4)


@pytest.mark.parametrize("model, lines, size, fragment", [
    ("TensorflowMultiResUNet", "base_filters = 4\nnum_layers = 3\n", 34, "multiple of 2**(num_layers-1) = 4"),
    ("TensorflowMultiResUNet", "base_filters = 2\nnum_layers = 2\n", 32, "base_filters 2 is too small"),
    ("TensorFlowFlexSharpUNet", "filters = [4, 8, 16]\n", 36, "multiple of 2**len(filters) = 8"),
])
def test_inconsistent_settings_are_one_line_config_errors(tmp_path, model, lines, size, fragment):
    cfg = _config(tmp_path, model, lines, size=size)
    with pytest.raises(ConfigError) as info:
        architectures.build(cfg)
    message = str(info.value)
    assert "\n" not in message and str(cfg.path) in message and fragment in message, message


def test_required_multiple(tmp_path):
    multires = _config(tmp_path, "TensorflowMultiResUNet", "num_layers = 5\n", size=64)
    assert architectures.required_multiple(multires) == 16
    sharp = _config(tmp_path, "TensorflowSharpUNet", "", size=64)  # seed default filters: 4 entries
    assert architectures.required_multiple(sharp) == 16


# -------------------------------------------------------------------------------------------------
# train -> export (ONNX verified, INT8) -> infer, one short run per architecture

SMOKE = {
    "TensorflowMultiResUNet": "base_filters = 4\nnum_layers = 2\n",
    "TensorFlowFlexSharpUNet": "filters = [4, 8]\nmax_filter = 8\n",
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(SMOKE))
def test_trains_exports_and_infers(arch, tmp_path, isolate_cli):
    from flexunet.train.synth import make_dataset
    from flexunet.train.trainer import train

    make_dataset(tmp_path / "data", kind="tiles", size=64, n_train=16, n_valid=4, n_test=4, n_mini=1,
                 mini_size=(96, 80), seed=5)
    data = ('[train]\nepochs = 1\nbatch_size = 8\npatience = 0\nlearning_rate_reducer = False\n'
            'image_datapath = "./data/train/images"\nmask_datapath = "./data/train/masks"\n'
            '[eval]\nimage_datapath = "./data/valid/images"\nmask_datapath = "./data/valid/masks"\n'
            '[test]\nimage_datapath = "./data/test/images"\nmask_datapath = "./data/test/masks"\n'
            '[tiledinfer]\noverlapping = 16\n'
            '[dataset]\nimage_normalize = True\n')  # 0..1 inputs for the networks without an x/255
    cfg = _config(tmp_path, arch, SMOKE[arch] + "dropout_rate = 0.0\n")
    cfg.path.write_text(cfg.path.read_text().replace('"binary_crossentropy"', '"bce_dice_loss"')
                        .replace('"binary_accuracy"', '"dice_coef"') + data)
    result = train(load_config(cfg.path))
    assert result.model_path.is_file()

    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["export", str(result.model_path), "-o", str(out), "--int8",
                                 "--calibration-images", str(tmp_path / "data" / "train" / "images"),
                                 "--calibration-count", "8", "--int8-min-dice", "0",
                                 "--int8-target-dice", "0"])
    assert r.exit_code == 0, r.output + r.stderr
    report = json.loads((out / "export_report.json").read_text())["artifacts"]
    assert report["model.onnx"]["vs_keras"]["max_abs_diff"] <= 1e-4
    assert report["model.onnx"]["vs_keras"]["dice"] >= 0.9999
    assert 0.0 <= report["model.int8.onnx"]["vs_fp32"]["dice"] <= 1.0

    masks = tmp_path / "masks"
    r = CliRunner().invoke(cli, ["infer", str(out / "model.onnx"), str(tmp_path / "data" / "mini_test" / "images"),
                                 "-o", str(masks)])
    assert r.exit_code == 0, r.output + r.stderr
    from flexunet.core.imageio import read_image

    written = sorted(masks.glob("*.png"))
    assert len(written) == 1 and read_image(written[0]).shape[:2] == (80, 96)
