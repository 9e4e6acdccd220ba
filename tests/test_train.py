"""Datasets, a short training of a tiny UNet, evaluation output, Ctrl-C handling."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

from flexunet.core.config import load_config
from flexunet.core.errors import ConfigError
from flexunet.core.imageio import write_image
from flexunet.core.metrics import dice
from flexunet.train import dataset as ds
from flexunet.train.synth import CLASS_COLORS_RGB, make_dataset

TINY = """
[model]
model          = "TensorflowUNet"
generator      = {generator}
image_width    = {size}
image_height   = {size}
image_channels = 3
normalization  = False
num_classes    = {classes}
base_filters   = 8
base_kernels   = (3,3)
num_layers     = 3
dropout_rate   = 0.0
learning_rate  = 0.005
clipvalue      = 0.5
loss           = "{loss}"
metrics        = ["{metric}"]

[train]
epochs        = {epochs}
batch_size    = 8
patience      = 0
model_dir     = "./models"
eval_dir      = "./eval"
image_datapath = "./data/train/images"
mask_datapath  = "./data/train/masks"
learning_rate_reducer = False
epoch_change_infer = True
epoch_change_tiledinfer = True
num_infer_images = 1

[valid]
images_dir = "./data/valid/images"
masks_dir  = "./data/valid/masks"

[test]
image_datapath = "./data/test/images"
mask_datapath  = "./data/test/masks"

[infer]
images_dir = "./data/mini_test/images"

[tiledinfer]
images_dir = "./data/mini_test/images"
overlapping = 16
{extra}
"""


def write_config(folder: Path, **kw) -> Path:
    values = dict(generator=False, size=64, classes=1, loss="bce_dice_loss", metric="dice_coef",
                  epochs=6, extra="")
    values.update(kw)
    path = folder / "train_eval_infer.config"
    path.write_text(TINY.format(**values))
    return path


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiles")
    make_dataset(root / "data", kind="tiles", size=64, n_train=64, n_valid=16, n_test=16, seed=3,
                 n_mini=1, mini_size=(96, 80))
    return root


# ---------------------------------------------------------------------------------------------
# datasets


def _pair_folder(tmp_path, names, mask_ext=".png"):
    (tmp_path / "im").mkdir()
    (tmp_path / "mk").mkdir()
    for n in names:
        write_image(tmp_path / "im" / f"{n}.jpg", np.full((8, 8, 3), 100, np.uint8))
        write_image(tmp_path / "mk" / f"{n}{mask_ext}", np.zeros((8, 8), np.uint8))


def test_find_pairs_matches_stems_and_filters(tmp_path):
    _pair_folder(tmp_path, ["a", "b", "c"])
    pairs = ds.find_pairs(tmp_path / "im", tmp_path / "mk")
    assert [p.image.stem for p in pairs] == ["a", "b", "c"]
    assert all(p.mask.suffix == ".png" for p in pairs)
    assert [p.image.name for p in ds.find_pairs(tmp_path / "im", tmp_path / "mk", files=["b.jpg"])] == ["b.jpg"]
    assert [p.image.stem for p in ds.find_pairs(tmp_path / "im", tmp_path / "mk", exclude=["a"])] == ["b", "c"]
    with pytest.raises(ConfigError, match="zzz"):
        ds.find_pairs(tmp_path / "im", tmp_path / "mk", files=["zzz.jpg"])


def test_missing_mask_is_named(tmp_path):
    _pair_folder(tmp_path, ["a"])
    write_image(tmp_path / "im" / "lonely.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ConfigError, match="lonely.png: no mask"):
        ds.find_pairs(tmp_path / "im", tmp_path / "mk")


def test_jpeg_masks_are_thresholded_and_slides_are_tiled(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (150, 230, 3), dtype=np.uint8)
    mask = np.zeros((150, 230), np.uint8)
    mask[20:90, 40:200] = 255
    for d in ("train/images", "train/masks"):
        (tmp_path / "data" / d).mkdir(parents=True)
    write_image(tmp_path / "data/train/images/s.png", img)
    write_image(tmp_path / "data/train/masks/s.jpg", mask)  # lossy: values near 0/255 only
    cfg = load_config(write_config(tmp_path, extra="[dataset]\ntiling = True\ntile_overlap = 8\n"))
    maker = ds.SampleMaker(cfg)
    pair = ds.find_pairs(tmp_path / "data/train/images", tmp_path / "data/train/masks")[0]
    samples = list(maker.samples(pair))
    # 150 rows -> starts 0,56,86; 230 cols -> 0,56,112,166 : 3 x 4 tiles of 64x64, never resized
    assert maker.count(pair) == len(samples) == 12
    for x, y in samples:
        assert x.shape == (64, 64, 3) and y.shape == (64, 64, 1)
        assert set(np.unique(y)) <= {0.0, 1.0}
    first_x, first_y = samples[0]
    np.testing.assert_array_equal(first_x, img[:64, :64].astype(np.float32))
    np.testing.assert_array_equal(first_y[..., 0], (mask[:64, :64] > 0).astype(np.float32))


def test_multiclass_targets_are_one_hot(tmp_path):
    make_dataset(tmp_path / "data", kind="multiclass", size=64, n_train=2, n_valid=1, n_test=1, n_mini=1)
    rgb_map = "{" + ", ".join(f"{k}:{v}" for k, v in CLASS_COLORS_RGB.items()) + "}"
    cfg = load_config(write_config(tmp_path, classes=4, loss="categorical_crossentropy",
                                   metric="dice_coef_multiclass", extra=f"[mask]\nrgb_map = {rgb_map}\n"))
    maker = ds.SampleMaker(cfg)
    x, y = next(maker.samples(ds.split_pairs(cfg, "train")[0]))
    assert y.shape == (64, 64, 4)
    np.testing.assert_array_equal(y.sum(axis=-1), 1.0)
    assert y[..., 1:].sum() > 0  # some cells present


def test_resize_mode_keeps_labels_binary(tmp_path):
    make_dataset(tmp_path / "data", kind="tiles", size=96, n_train=1, n_valid=1, n_test=1, n_mini=1)
    cfg = load_config(write_config(tmp_path))
    maker = ds.SampleMaker(cfg)
    x, y = next(maker.samples(ds.split_pairs(cfg, "train")[0]))
    assert x.shape == (64, 64, 3) and y.shape == (64, 64, 1)
    assert set(np.unique(y)) <= {0.0, 1.0}


# ---------------------------------------------------------------------------------------------
# training and evaluation


@pytest.mark.slow
def test_short_training_beats_chance_and_writes_outputs(tiles):
    from flexunet.train.evaluate import evaluate
    from flexunet.train.trainer import train

    cfg = load_config(write_config(tiles, generator=True, epochs=8))
    result = train(cfg)
    assert result.model_path.is_file() and not result.interrupted
    for name in ("train_metrics.csv", "train_losses.csv", "train_metrics.png", "train_losses.png"):
        assert (cfg.train.eval_dir / name).stat().st_size > 0
    header = (cfg.train.eval_dir / "train_metrics.csv").read_text().splitlines()
    assert header[0] == "epoch,dice_coef,val_dice_coef" and len(header) == 1 + result.epochs_run
    assert (cfg.train.eval_dir / "train_losses.csv").read_text().startswith("epoch,loss,val_loss")
    assert (cfg.train.model_dir / "train_eval_infer.config").is_file()
    assert any(cfg.train.epoch_change_infer_dir.glob("Epoch_1_*.png"))
    assert any(cfg.train.epoch_change_tiledinfer_dir.glob("Epoch_1_*.png"))

    ev = evaluate(cfg)
    lines = ev.csv_path.read_text().splitlines()
    assert ev.csv_path == tiles / "evaluation.csv"
    assert lines[0].startswith("loss,") and any(line.startswith("dice_coef,") for line in lines)
    for line in lines:
        name, value = line.split(",")
        assert float(value) == pytest.approx(ev.metrics.get(name, float(value)), abs=1e-4)

    # chance: the best constant prediction (all foreground) on the same test masks
    maker = ds.SampleMaker(cfg)
    _, y = ds.load_arrays(maker, ds.split_pairs(cfg, "test"))
    chance = dice(y > 0.5, np.ones_like(y, dtype=bool))
    assert ev.metrics["mask_dice"] > chance + 0.15, (ev.metrics, chance)
    assert ev.metrics["dice_coef"] > 0.5


@pytest.fixture
def run_folder(tiles, tmp_path) -> Path:
    """A fresh project folder whose ``data`` is the module's synthetic tiles."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "data").symlink_to(tiles / "data")
    return folder


@pytest.mark.slow
def test_ctrl_c_keeps_best_model(run_folder, monkeypatch):
    import keras

    from flexunet.train import trainer

    cfg = load_config(write_config(run_folder, epochs=20))
    original = trainer.make_callbacks

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    def with_interrupt(*a, **kw):
        callbacks, best, history = original(*a, **kw)
        return callbacks + [Interrupt()], best, history

    monkeypatch.setattr(trainer, "make_callbacks", with_interrupt)
    result = trainer.train(cfg)
    assert result.interrupted and result.epochs_run == 2
    assert result.model_path.is_file()
    keras.models.load_model(result.model_path)  # complete, loadable
    assert not list(cfg.train.model_dir.glob(".*part*")), "temporary files left behind"


@pytest.mark.slow
def test_time_budget_stops_training_and_keeps_the_best_model(run_folder, monkeypatch):
    from flexunet.train import callbacks, trainer

    # a clock on which every reading is an hour after the previous one: the first epoch already
    # overruns the 1-minute budget, so the run stops after it, model saved (no real time involved)
    hours = iter(range(0, 10**6, 3600))
    monkeypatch.setattr(callbacks.TimeBudget, "clock", staticmethod(lambda: float(next(hours))))
    cfg = load_config(write_config(run_folder, epochs=20))
    cfg.train.max_minutes = 1.0
    cfg.train.epoch_change_infer = cfg.train.epoch_change_tiledinfer = False
    result = trainer.train(cfg)
    assert result.epochs_run == 1 and not result.interrupted
    assert result.model_path.is_file()


@pytest.mark.parametrize("readings, stopped_after", [
    ([0.0, 20.0, 40.0, 70.0], 3),   # 20+20 <= 60, 40+20 <= 60, 70+23 > 60: stop after epoch 3
    ([0.0, 31.0], 1),               # 31+31 > 60: the next epoch would end past the budget
    ([0.0, 10.0, 20.0, 30.0, 40.0], None),
])
def test_time_budget_stops_before_an_epoch_that_would_end_past_it(monkeypatch, readings, stopped_after):
    from flexunet.train import callbacks

    clock = iter(readings)
    monkeypatch.setattr(callbacks.TimeBudget, "clock", staticmethod(lambda: next(clock)))

    class Model:
        stop_training = False

    budget = callbacks.TimeBudget(1.0)
    budget.set_model(Model())
    budget.on_train_begin()
    for epoch in range(len(readings) - 1):
        budget.on_epoch_end(epoch)
        if budget.model.stop_training:
            break
    assert budget.stopped_epoch == stopped_after
    assert budget.model.stop_training is (stopped_after is not None)


def test_large_datasets_stream_instead_of_caching(tiles, monkeypatch):
    """Over the cache limit the pipeline streams from disk; the batches are the same samples."""
    cfg = load_config(write_config(tiles))
    maker = ds.SampleMaker(cfg)
    pairs = ds.split_pairs(cfg, "test")[:5]

    def stages(data):
        names = []
        while data is not None:
            names.append(type(data).__name__)
            data = getattr(data, "_input_dataset", None)
        return names

    def collect(expect_cache):
        data, steps = ds.make_tf_dataset(maker, pairs, batch_size=2, training=False, seed=0)
        assert any("Cache" in n for n in stages(data)) == expect_cache, stages(data)
        return steps, [b[0].numpy() for b in data]

    steps_cached, cached = collect(expect_cache=True)
    monkeypatch.setattr(ds, "CACHE_LIMIT_BYTES", 0)
    steps_streamed, streamed = collect(expect_cache=False)
    assert steps_cached == steps_streamed == 3
    assert len(cached) == len(streamed) == 3
    for a, b in zip(cached, streamed):
        np.testing.assert_array_equal(a, b)
