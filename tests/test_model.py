"""Tests for flexunet.architectures.unet: architecture, parameter counts, schedules and serialisation."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from flexunet.architectures.unet import build_unet, count_parameters, required_multiple  # noqa: E402


def expected_params(channels, num_classes, base_filters, kernel, num_layers, normalization):
    """Closed-form parameter count of the seed UNet.

    Level ``i`` has ``n_i = base_filters * 2**i`` filters and square kernel
    ``k_i = max(kernel - 2 * i, 3)`` (the decoder level mirroring encoder level ``i`` uses the
    same kernel). A conv has ``k*k*c_in*c_out + c_out`` parameters, a BatchNormalization
    ``4 * c_out`` (gamma, beta, moving mean and variance). Dilation adds no parameters.
    """
    bn = 4 if normalization else 0
    total = 0
    for i in range(num_layers):
        n = base_filters * 2**i
        k = max(kernel - 2 * i, 3)
        c_in = channels if i == 0 else n // 2
        total += k * k * c_in * n + n + bn * n   # encoder conv1 (+ BN)
        total += k * k * n * n + n + bn * n      # encoder conv2 (+ BN)
        if i < num_layers - 1:
            total += 2 * 2 * (2 * n) * n + n     # decoder transpose conv from level i + 1
            total += k * k * (2 * n) * n + n + bn * n  # decoder conv1 on the concatenation
            total += k * k * n * n + n + bn * n        # decoder conv2
    total += base_filters * num_classes + num_classes  # 1x1 head
    return total


@pytest.mark.parametrize("num_layers", [2, 3, 4])
def test_required_multiple_is_what_the_builder_accepts(num_layers):
    """Inputs of ``required_multiple`` pixels pool down to 1x1 at the deepest level; half as much
    again is refused."""
    m = required_multiple(num_layers)
    model = build_unet(m, m, 1, base_filters=2, num_layers=num_layers)
    assert model.get_layer(f"enc{num_layers - 1}_conv2").output.shape[1:3] == (1, 1)
    with pytest.raises(ValueError, match="image_height"):
        build_unet(m + m // 2, m, 1, base_filters=2, num_layers=num_layers)


def test_binary_output_is_single_sigmoid_channel():
    model = build_unet(64, 64, 3, num_classes=1, base_filters=4, num_layers=4)
    assert model.input_shape == (None, 64, 64, 3)
    assert model.output_shape == (None, 64, 64, 1)
    head = model.get_layer("probabilities")
    assert head.activation is keras.activations.sigmoid
    assert model.inputs[0].name == "image"
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    y = model.predict(x, verbose=0)
    assert y.shape == (2, 64, 64, 1)
    assert np.all((y >= 0) & (y <= 1))


def test_multiclass_output_is_softmax():
    model = build_unet(64, 64, 3, num_classes=5, base_filters=4, num_layers=3)
    assert model.output_shape == (None, 64, 64, 5)
    assert model.get_layer("probabilities").activation is keras.activations.softmax
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    y = model.predict(x, verbose=0)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-5)


def test_final_activation_override():
    model = build_unet(32, 32, 1, num_classes=3, base_filters=4, num_layers=2,
                       final_activation="sigmoid")
    assert model.get_layer("probabilities").activation is keras.activations.sigmoid


@pytest.mark.parametrize("config", [
    dict(image_channels=3, num_classes=1, base_filters=4, base_kernels=(3, 3), num_layers=2,
         normalization=False),
    dict(image_channels=1, num_classes=1, base_filters=8, base_kernels=(7, 7), num_layers=4,
         normalization=False),
    dict(image_channels=3, num_classes=4, base_filters=6, base_kernels=(9, 9), num_layers=5,
         normalization=False),
    dict(image_channels=3, num_classes=1, base_filters=4, base_kernels=(5, 5), num_layers=4,
         normalization=True),
    dict(image_channels=2, num_classes=7, base_filters=5, base_kernels=(3, 3), num_layers=3,
         normalization=True),
])
def test_param_count_matches_closed_form(config):
    model = build_unet(64, 64, dilation=(2, 2), **config)
    expected = expected_params(config["image_channels"], config["num_classes"],
                               config["base_filters"], config["base_kernels"][0],
                               config["num_layers"], config["normalization"])
    assert model.count_params() == expected
    assert count_parameters(model) == expected


def test_seed_standard_config_param_count():
    """The seeds' standard 512x512x3, 8-level, (9,9)-kernel model: about 125 M parameters."""
    expected = expected_params(3, 1, 16, 9, 8, normalization=False)
    assert expected == 124_996_849
    model = build_unet(512, 512, 3, num_classes=1, base_filters=16, base_kernels=(9, 9),
                       num_layers=8, dilation=(1, 1), normalization=False)
    assert count_parameters(model) == expected


def _conv_layers(model, prefix):
    return [layer for layer in model.layers
            if isinstance(layer, keras.layers.Conv2D)
            and not isinstance(layer, keras.layers.Conv2DTranspose)
            and layer.name.startswith(prefix)]


def test_kernel_and_dilation_schedules():
    model = build_unet(128, 128, 3, base_filters=4, base_kernels=(9, 9), num_layers=8,
                       dilation=(3, 3))
    kernels = [9, 7, 5, 3, 3, 3, 3, 3]
    dilations = [3, 2, 1, 1, 1, 1, 1, 1]

    encoder = _conv_layers(model, "enc")
    assert len(encoder) == 16
    assert [layer.kernel_size for layer in encoder] == [(k, k) for k in kernels for _ in "12"]
    assert [layer.dilation_rate for layer in encoder] == [(d, d) for d in dilations for _ in "12"]

    decoder = _conv_layers(model, "dec")
    dec_kernels = kernels[::-1][1:]
    dec_dilations = dilations[::-1][1:]
    assert len(decoder) == 14
    assert [layer.kernel_size for layer in decoder] == [(k, k) for k in dec_kernels for _ in "12"]
    assert [layer.dilation_rate for layer in decoder] == [
        (d, d) for d in dec_dilations for _ in "12"]

    filters = [layer.filters for layer in encoder[::2]] + [layer.filters for layer in decoder[::2]]
    assert filters == [4 * 2**i for i in range(8)] + [4 * 2**f for f in range(6, -1, -1)]

    transposes = [layer for layer in model.layers
                  if isinstance(layer, keras.layers.Conv2DTranspose)]
    assert [(t.kernel_size, t.strides) for t in transposes] == [((2, 2), (2, 2))] * 7


def test_dropout_rates_follow_level():
    model = build_unet(64, 64, 3, base_filters=4, num_layers=4, dropout_rate=0.1, seed=7)
    rates = {layer.name: layer.rate for layer in model.layers
             if isinstance(layer, keras.layers.Dropout)}
    expected = {f"enc{i}_dropout": 0.1 * i for i in range(4)}
    expected.update({f"dec{f}_dropout": 0.1 * f for f in range(3)})
    assert rates.keys() == expected.keys()
    for key, rate in expected.items():
        assert rates[key] == pytest.approx(rate)


def test_batch_normalization_layers():
    def count_bn(model):
        return sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)

    assert count_bn(build_unet(64, 64, base_filters=4, num_layers=4)) == 0
    # Two per encoder level and two per decoder level.
    assert count_bn(build_unet(64, 64, base_filters=4, num_layers=4, normalization=True)) == 14


def test_no_lambda_layers_and_rescaling():
    model = build_unet(64, 64, base_filters=4, num_layers=3)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)
    rescaling = [layer for layer in model.layers if isinstance(layer, keras.layers.Rescaling)]
    assert len(rescaling) == 1
    assert rescaling[0].scale == pytest.approx(1 / 255)

    raw = build_unet(64, 64, base_filters=4, num_layers=3, input_normalize=False)
    assert not any(isinstance(layer, keras.layers.Rescaling) for layer in raw.layers)


def test_fully_convolutional_model_accepts_any_valid_size():
    model = build_unet(None, None, 3, base_filters=4, num_layers=4)
    assert model.input_shape == (None, None, None, 3)
    rng = np.random.default_rng(2)
    for height, width in ((64, 64), (128, 96)):
        x = rng.uniform(0, 255, (1, height, width, 3)).astype("float32")
        assert model.predict(x, verbose=0).shape == (1, height, width, 1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_layers=1), "num_layers"),
    (dict(base_filters=0), "base_filters"),
    (dict(base_kernels=(4, 4)), "base_kernels"),
    (dict(base_kernels=(-1, -1)), "base_kernels"),
    (dict(base_kernels=(5, 3)), "base_kernels"),
    (dict(dilation=(0, 0)), "dilation"),
    (dict(dropout_rate=1.0), "dropout_rate"),
    (dict(dropout_rate=-0.1), "dropout_rate"),
    (dict(dropout_rate=0.3, num_layers=5), "dropout_rate"),
    (dict(image_height=100), "image_height"),
    (dict(image_width=72, num_layers=5), "image_width"),
    (dict(num_classes=0), "num_classes"),
    (dict(image_channels=0), "image_channels"),
])
def test_invalid_arguments_raise_value_error(kwargs, message):
    args = dict(image_height=64, image_width=64, base_filters=4, num_layers=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        build_unet(**args)


def test_save_and_reload_gives_identical_predictions(tmp_path):
    model = build_unet(64, 64, 3, num_classes=2, base_filters=4, num_layers=3,
                       normalization=True, seed=3)
    x = np.random.default_rng(3).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    before = model.predict(x, verbose=0)
    path = tmp_path / "unet.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert reloaded.name == model.name
    assert count_parameters(reloaded) == count_parameters(model)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), before)
