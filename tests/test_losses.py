"""Tests for flexunet.train.losses against independent numpy references, and the config names of each."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from flexunet.train import losses  # noqa: E402

EPS = 1e-7
RTOL = 1e-5


# --- numpy references (float64) -------------------------------------------------------------

def clip32(p):
    """Clip as the functions under test do: bounds rounded to float32 (1 - 1e-7 -> 1 - 2**-23)."""
    return np.clip(p, np.float32(EPS), np.float32(1 - EPS)).astype("float64")


def np_bce(t, p):
    p = clip32(p)
    return -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))


def np_dice(t, p, smooth=1.0):
    return (2 * np.sum(t * p) + smooth) / (np.sum(t) + np.sum(p) + smooth)


def np_iou(t, p, smooth=1.0):
    scores = []
    for ts, ps in zip(t, p):
        inter = np.sum(ts * ps)
        scores.append((inter + smooth) / (np.sum(ts) + np.sum(ps) - inter + smooth))
    return np.mean(scores)


def np_binary_accuracy(t, p, threshold=0.5):
    return np.mean((p > threshold) == (t > 0.5))


def np_cce(t, p):
    p = clip32(p)
    return np.mean(-np.sum(t * np.log(p), axis=-1))


def np_dice_multiclass(t, p, smooth=1.0):
    return np.mean([np_dice(t[..., c], p[..., c], smooth) for c in range(t.shape[-1])])


# --- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def binary():
    rng = np.random.default_rng(1234)
    t = (rng.random((3, 16, 12, 1)) > 0.6).astype("float32")
    p = rng.random((3, 16, 12, 1)).astype("float32")
    p[0, 0, 0, 0] = 0.0  # exercise clipping
    p[0, 0, 1, 0] = 1.0
    return t, p


@pytest.fixture(scope="module")
def multiclass():
    rng = np.random.default_rng(5678)
    labels = rng.integers(0, 4, size=(2, 16, 16))
    t = np.eye(4, dtype="float32")[labels]
    logits = rng.normal(size=(2, 16, 16, 4))
    p = (np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)).astype("float32")
    return t, p


def value(tensor):
    """Convert a scalar backend tensor to a Python float, checking it is a float32 scalar."""
    array = keras.ops.convert_to_numpy(tensor)
    assert array.shape == ()
    assert array.dtype == np.float32
    return float(array)


def f64(*arrays):
    return [a.astype("float64") for a in arrays]


# --- binary losses and metrics -------------------------------------------------------------

BINARY_CASES = {
    "binary_crossentropy": lambda t, p: np_bce(t, p),
    "dice_coef": lambda t, p: np_dice(t, p),
    "dice_loss": lambda t, p: 1 - np_dice(t, p),
    "bce_dice_loss": lambda t, p: np_bce(t, p) + 1 - np_dice(t, p),
    "iou_coef": lambda t, p: np_iou(t, p),
    "iou_loss": lambda t, p: 1 - np_iou(t, p),
    "bce_iou_loss": lambda t, p: np_bce(t, p) + 1 - np_iou(t, p),
    "binary_accuracy": lambda t, p: np_binary_accuracy(t, p),
}


@pytest.mark.parametrize("name", sorted(BINARY_CASES))
def test_binary_functions_match_numpy(binary, name):
    t, p = binary
    expected = BINARY_CASES[name](*f64(t, p))
    assert value(getattr(losses, name)(t, p)) == pytest.approx(expected, rel=RTOL)


def test_binary_accuracy_threshold(binary):
    t, p = binary
    expected = np_binary_accuracy(t, p, threshold=0.8)
    assert value(losses.binary_accuracy(t, p, threshold=0.8)) == pytest.approx(expected, rel=RTOL)


def test_smooth_argument(binary):
    t, p = binary
    tt, pp = f64(t, p)
    assert value(losses.dice_coef(t, p, smooth=0.0)) == pytest.approx(np_dice(tt, pp, 0.0),
                                                                       rel=RTOL)
    assert value(losses.iou_coef(t, p, smooth=5.0)) == pytest.approx(np_iou(tt, pp, 5.0),
                                                                     rel=RTOL)


def test_integer_and_float64_inputs_are_cast_to_float32(binary):
    t, p = binary
    expected = np_dice(*f64(t, p))
    assert value(losses.dice_coef(t.astype("uint8"), p.astype("float64"))) == pytest.approx(
        expected, rel=RTOL)


# --- multiclass ----------------------------------------------------------------------------

MULTICLASS_CASES = {
    "categorical_crossentropy": lambda t, p: np_cce(t, p),
    "dice_coef_multiclass": lambda t, p: np_dice_multiclass(t, p),
    "dice_coef_multiclass_loss": lambda t, p: 1 - np_dice_multiclass(t, p),
}


@pytest.mark.parametrize("name", sorted(MULTICLASS_CASES))
def test_multiclass_functions_match_numpy(multiclass, name):
    t, p = multiclass
    expected = MULTICLASS_CASES[name](*f64(t, p))
    assert value(getattr(losses, name)(t, p)) == pytest.approx(expected, rel=RTOL)


# --- edge cases ----------------------------------------------------------------------------

def test_all_zero_masks():
    zeros = np.zeros((2, 8, 8, 1), "float32")
    assert value(losses.dice_coef(zeros, zeros)) == 1.0
    assert value(losses.dice_loss(zeros, zeros)) == 0.0
    assert value(losses.iou_coef(zeros, zeros)) == 1.0
    assert value(losses.binary_accuracy(zeros, zeros)) == 1.0
    assert value(losses.binary_crossentropy(zeros, zeros)) == pytest.approx(0.0, abs=1e-6)


def test_perfect_prediction():
    rng = np.random.default_rng(9)
    t = (rng.random((2, 8, 8, 1)) > 0.5).astype("float32")
    assert value(losses.dice_coef(t, t)) == pytest.approx(1.0, rel=RTOL)
    assert value(losses.iou_coef(t, t)) == pytest.approx(1.0, rel=RTOL)
    assert value(losses.binary_accuracy(t, t)) == 1.0
    assert value(losses.bce_dice_loss(t, t)) == pytest.approx(0.0, abs=1e-5)
    onehot = np.eye(3, dtype="float32")[rng.integers(0, 3, size=(2, 8, 8))]
    assert value(losses.dice_coef_multiclass(onehot, onehot)) == pytest.approx(1.0, rel=RTOL)
    assert value(losses.categorical_crossentropy(onehot, onehot)) == pytest.approx(0.0, abs=1e-5)


# --- registries ----------------------------------------------------------------------------

# The names seed configs use for losses and metrics, and the reference each must compute.
REFERENCES = {**BINARY_CASES, **MULTICLASS_CASES}
CONFIG_LOSSES = ("bce_dice_loss", "dice_loss", "iou_loss", "bce_iou_loss", "binary_crossentropy",
                 "categorical_crossentropy", "dice_coef_multiclass_loss")
CONFIG_METRICS = {"dice_coef": "dice_coef", "iou_coef": "iou_coef", "binary_accuracy": "binary_accuracy",
                  "accuracy": "binary_accuracy", "dice_coef_multiclass": "dice_coef_multiclass",
                  "categorical_crossentropy": "categorical_crossentropy"}


def _data_for(name, binary, multiclass):
    return multiclass if name in MULTICLASS_CASES else binary


@pytest.mark.parametrize("name", CONFIG_LOSSES)
def test_config_loss_names_compute_that_loss(binary, multiclass, name):
    t, p = _data_for(name, binary, multiclass)
    fn = losses.get_loss(name)
    assert value(fn(t, p)) == pytest.approx(REFERENCES[name](*f64(t, p)), rel=RTOL)
    assert losses.CUSTOM_OBJECTS[name] is fn


@pytest.mark.parametrize("name", sorted(CONFIG_METRICS))
def test_config_metric_names_compute_that_metric(binary, multiclass, name):
    reference = CONFIG_METRICS[name]
    t, p = _data_for(reference, binary, multiclass)
    (fn,) = losses.get_metrics([name])
    assert value(fn(t, p)) == pytest.approx(REFERENCES[reference](*f64(t, p)), rel=RTOL)
    assert losses.CUSTOM_OBJECTS[name] is fn


def test_every_registered_name_is_checked_here():
    assert set(losses.LOSSES) <= set(CONFIG_LOSSES)
    assert set(losses.METRICS) <= set(CONFIG_METRICS)


def test_get_loss_and_metrics():
    assert losses.get_loss("bce_dice_loss") is losses.bce_dice_loss
    assert losses.get_metrics(["dice_coef", "accuracy"]) == [losses.dice_coef,
                                                             losses.binary_accuracy]
    assert losses.get_metrics("iou_coef") == [losses.iou_coef]
    assert losses.get_metrics([]) == []


def test_unknown_names_raise_value_error():
    with pytest.raises(ValueError, match=r"unknown loss 'focal_loss'; known: .*bce_dice_loss"):
        losses.get_loss("focal_loss")
    with pytest.raises(ValueError, match=r"unknown metric 'f1'; known: .*dice_coef"):
        losses.get_metrics(["dice_coef", "f1"])


def test_functions_are_registered():
    for fn in {**losses.LOSSES, **losses.METRICS}.values():
        assert keras.saving.get_registered_name(fn) == f"flexunet>{fn.__name__}"
        assert keras.saving.get_registered_object(f"flexunet>{fn.__name__}") is fn


# --- save / load ---------------------------------------------------------------------------

def test_compiled_model_round_trip_without_custom_objects(tmp_path, binary):
    t, p = binary
    inputs = keras.Input((16, 12, 1))
    outputs = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss=losses.bce_dice_loss, metrics=[losses.dice_coef])
    model.fit(p, t, epochs=1, batch_size=3, verbose=0)
    before = model.evaluate(p, t, verbose=0, return_dict=True)

    path = tmp_path / "tiny.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)

    after = reloaded.evaluate(p, t, verbose=0, return_dict=True)
    assert set(after) == {"loss", "dice_coef"}
    assert after["loss"] == pytest.approx(before["loss"], rel=RTOL)
    assert after["dice_coef"] == pytest.approx(before["dice_coef"], rel=RTOL)
    np.testing.assert_array_equal(reloaded.predict(p, verbose=0), model.predict(p, verbose=0))
