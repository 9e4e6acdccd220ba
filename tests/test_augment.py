"""Training augmentation: the [augmentor] keys, each transform on image and mask together, the grid."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from flexunet.cli import cli
from flexunet.core.config import load_config
from flexunet.core.errors import ConfigError
from flexunet.core.imageio import read_image
from flexunet.train.augment import AugmentSettings, Augmenter, make_augmenter
from flexunet.train.synth import make_dataset

tf = pytest.importorskip("tensorflow")

SIZE = 96
CENTERS = ((0.3, 0.3), (0.5, 0.5), (0.7, 0.6))
#: each transform on its own, with the seed's MultipleMyeloma augmentor parameters
ONE = {
    "angles": (30.0, 60.0, 90.0, 120.0, 180.0, 210.0), "shrinks": (0.8,), "shears": (0.2,),
    "deformation": (1300.0, (8.0,)), "distortion": (40.0, 0.5, (0.02,)),
    "barrdistortion": (0.3, 0.3, CENTERS), "pincdistortion": (0.3, -0.3, CENTERS),
    "sharpening": (1.0,), "brightening": (1.2, 10.0),
}
GEOMETRIC = ["angles", "shrinks", "shears", "deformation", "distortion", "barrdistortion", "pincdistortion"]

CONFIG = """
[model]
model          = "TensorflowUNet"
generator      = True
image_width    = 64
image_height   = 64
image_channels = 3
num_classes    = 1
base_filters   = 4
num_layers     = 3
learning_rate  = 0.005
loss           = "bce_dice_loss"
metrics        = ["dice_coef"]

[train]
epochs         = 1
batch_size     = 4
steps_per_epoch = 3
patience       = 0
model_dir      = "./models"
eval_dir       = "./eval"
image_datapath = "./data/train/images"
mask_datapath  = "./data/train/masks"
learning_rate_reducer = False

[valid]
images_dir = "./data/valid/images"
masks_dir  = "./data/valid/masks"
{extra}
"""

ALL_SECTIONS = """
[augmentor]
rotation = True
angles   = [30, 60, 90, 120, 180, 210]
shrinks  = [0.8]
shears   = [0.2]
deformation    = True
distortion     = True
barrdistortion = True
pincdistortion = True
sharpening     = True
brightening    = True

[deformation]
alpah    = 1300
sigmoids = [8.0,]

[distortion]
gaussian_filter_rsigma = 40
gaussian_filter_sigma  = 0.5
distortions = [0.02, ]

[barrdistortion]
radius = 0.3
amount = 0.3
centers = [(0.3, 0.3), (0.7, 0.3), (0.5, 0.5), (0.3, 0.7), (0.7, 0.7)]

[pincdistortion]
radius = 0.3
amount = -0.3
centers = [(0.3, 0.3), (0.7, 0.3), (0.5, 0.5), (0.3, 0.7), (0.7, 0.7)]

[sharpening]
k = 1.0

[brightening]
alpha = 1.2
beta  = 10
"""


def write_config(folder: Path, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train_eval_infer.config"
    path.write_text(CONFIG.format(extra=extra))
    return path


def blobs(seed: int = 1, size: int = SIZE) -> np.ndarray:
    """Bright discs on a dark background (float32 0-255): a mask is the image above 128."""
    img = np.full((size, size, 3), 30, np.float32)
    rng = np.random.default_rng(seed)
    for _ in range(10):
        c = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        cv2.circle(img, c, int(rng.integers(6, 16)), (230, 210, 190), -1)
    return img


def binary_target(img: np.ndarray) -> np.ndarray:
    return (img[..., :1] > 128).astype(np.float32)


def classes_target(img: np.ndarray, k: int = 4) -> np.ndarray:
    """One-hot classes by intensity band of channel 0 (0: background)."""
    labels = np.digitize(img[..., 0], [60, 130, 200])
    return np.eye(k, dtype=np.float32)[labels]


def off_edge_mismatch(derived: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of pixels, away from the label edges (where interpolation blends the image), whose
    label derived from the augmented image differs from the augmented mask's."""
    lab = labels.astype(np.uint8)
    kernel = np.ones((5, 5), np.uint8)
    away = cv2.dilate(lab, kernel) == cv2.erode(lab, kernel)
    return float(np.mean((derived != labels) & away))


def run(aug: Augmenter, x: np.ndarray, y: np.ndarray, i: int):
    xo, yo = aug(tf.constant(i, tf.int64), tf.constant(x), tf.constant(y))
    return xo.numpy(), yo.numpy()


def draws(settings: AugmentSettings, x, y, n: int = 8, seed: int = 7):
    aug = Augmenter(settings, x.shape[0], x.shape[1], x.shape[2], seed)
    return [run(aug, x, y, i) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# the transforms


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_transform_moves_image_and_mask_together(name):
    x = blobs()
    y = binary_target(x)
    out = draws(AugmentSettings(**{name: ONE[name]}), x, y)
    applied = [(xo, yo) for xo, yo in out if not np.array_equal(xo, x)]
    assert 0 < len(applied) < len(out)  # the transform or nothing, drawn per sample
    for xo, yo in out:
        assert xo.shape == x.shape and yo.shape == y.shape and xo.dtype == yo.dtype == np.float32
        assert set(np.unique(yo)) <= {0.0, 1.0}  # nearest neighbour: still a binary mask
        # the mask is the augmented image's threshold except where interpolation blends an edge
        assert np.mean(binary_target(xo) != yo) < 0.02
        assert off_edge_mismatch(binary_target(xo)[..., 0], yo[..., 0]) < 0.002
    assert any(not np.array_equal(yo, y) for _, yo in applied)


@pytest.mark.parametrize("name", GEOMETRIC)
def test_multiclass_masks_keep_their_class_indices(name):
    x = blobs(2)
    x[: SIZE // 2, :, 0] = np.where(x[: SIZE // 2, :, 0] > 128, 170, 30)  # classes 2 and 3
    x[SIZE // 2:, :, 0] = np.where(x[SIZE // 2:, :, 0] > 128, 240, 30)
    y = classes_target(x)
    for xo, yo in draws(AugmentSettings(**{name: ONE[name]}), x, y):
        assert yo.shape == y.shape
        np.testing.assert_array_equal(yo.sum(-1), 1.0)  # still one-hot
        assert set(np.unique(yo.argmax(-1))) <= set(np.unique(y.argmax(-1)))
        assert off_edge_mismatch(classes_target(xo).argmax(-1), yo.argmax(-1)) < 0.002


@pytest.mark.parametrize("name", ["sharpening", "brightening"])
def test_photometric_transform_changes_the_image_only(name):
    x = blobs() * 0.8 + 20
    y = binary_target(x)
    out = draws(AugmentSettings(**{name: ONE[name]}), x, y)
    assert any(not np.array_equal(xo, x) for xo, _ in out)
    for xo, yo in out:
        np.testing.assert_array_equal(yo, y)
        assert xo.min() >= 0 and xo.max() <= 255
    xo = next(xo for xo, _ in out if not np.array_equal(xo, x))
    if name == "brightening":
        np.testing.assert_allclose(xo, np.clip(x * 1.2 + 10, 0, 255), rtol=1e-5)
    else:  # edges get steeper
        assert np.abs(np.diff(xo[..., 0], axis=1)).max() > np.abs(np.diff(x[..., 0], axis=1)).max()


def test_rotation_uses_only_the_listed_angles():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (SIZE, SIZE, 3)).astype(np.float32)
    y = binary_target(x)
    for angle, k in ((90.0, 1), (180.0, 2)):
        seen = set()
        for xo, yo in draws(AugmentSettings(angles=(angle,)), x, y, n=10):
            match = [j for j in range(4) if np.allclose(xo, np.rot90(x, j), atol=0.05)]
            assert match and match[0] in (0, k, 4 - k), (angle, match)
            np.testing.assert_array_equal(yo, np.rot90(y, match[0]))
            seen.add(match[0])
        assert seen > {0}


def orientation(mask: np.ndarray) -> float:
    """Direction (degrees in [0, 180)) of the principal axis of a mask's foreground."""
    ys, xs = np.nonzero(mask[..., 0] > 0.5)
    vals, vecs = np.linalg.eigh(np.cov(np.stack([xs, ys])))
    vx, vy = vecs[:, -1]
    return float(np.degrees(np.arctan2(vy, vx)) % 180)


@pytest.mark.parametrize("angle", [30.0, 60.0])
def test_rotation_by_other_angles_turns_the_mask_by_that_angle(angle):
    x = np.full((SIZE, SIZE, 3), 30, np.float32)
    x[SIZE // 2 - 2:SIZE // 2 + 2, 20:-20] = 230  # a horizontal bar through the centre
    y = binary_target(x)
    turned = [orientation(yo) for _, yo in draws(AugmentSettings(angles=(angle,)), x, y, n=10)
              if not np.array_equal(yo, y)]
    assert turned and all(min(abs(o - angle), abs(o - (180 - angle))) < 2 for o in turned), turned


def test_grayscale_and_unit_scaled_inputs():
    x = blobs()[..., :1] / 255.0  # input_normalize = False: pixels in [0, 1]
    y = binary_target(x * 255.0)
    s = AugmentSettings(**{k: ONE[k] for k in ("angles", "deformation", "sharpening", "brightening")})
    aug = Augmenter(s, SIZE, SIZE, 1, 3, value_max=1.0)
    for i in range(12):
        xo, yo = run(aug, x, y, i)
        assert xo.shape == x.shape and yo.shape == y.shape and 0 <= xo.min() and xo.max() <= 1.0
    bright = Augmenter(AugmentSettings(brightening=(1.2, 10.0)), SIZE, SIZE, 1, 3, value_max=1.0)
    xo = next(xo for xo, _ in (run(bright, x, y, i) for i in range(8)) if not np.array_equal(xo, x))
    np.testing.assert_allclose(xo, np.clip(x * 1.2 + 10 / 255, 0, 1), rtol=1e-5)


def test_shrink_scales_about_the_centre():
    x = np.full((SIZE, SIZE, 3), 30, np.float32)
    cv2.circle(x, (SIZE // 2, SIZE // 2), 30, (230, 230, 230), -1)
    y = binary_target(x)
    q = SIZE // 4  # the shrunk image fills the centre half; reflections of it lie around
    area = [yo[q:-q, q:-q].sum() for xo, yo in draws(AugmentSettings(shrinks=(0.5,)), x, y, n=10)
            if not np.array_equal(yo, y)]
    assert area and all(abs(a / y.sum() - 0.25) < 0.02 for a in area), area


def test_flips_only_when_enabled():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (SIZE, SIZE, 1)).astype(np.float32)
    y = binary_target(x)
    kinds = []
    for xo, yo in draws(AugmentSettings(hflip=True), x, y, n=16):
        kind = "same" if np.array_equal(xo, x) else "h" if np.array_equal(xo, x[:, ::-1]) else "other"
        kinds.append(kind)
        np.testing.assert_array_equal(yo, y if kind == "same" else y[:, ::-1])
    assert set(kinds) == {"same", "h"}


def test_nothing_enabled_leaves_pixels_unchanged(tmp_path):
    x = blobs()
    y = binary_target(x)
    for xo, yo in draws(AugmentSettings(), x, y, n=4):
        np.testing.assert_array_equal(xo, x)
        np.testing.assert_array_equal(yo, y)
    off = "[augmentor]\nhflip = False\nvflip = False\nrotation = False\nshrinks = []\n"
    assert make_augmenter(load_config(write_config(tmp_path / "a", off)), 3, 255.0) is None
    cfg = load_config(write_config(tmp_path / "b", ALL_SECTIONS))
    cfg.model.generator = False  # [model] generator off: no augmentation at all
    assert make_augmenter(cfg, 3, 255.0) is None


def test_reproducible_with_the_seed():
    x = blobs()
    y = binary_target(x)
    s = AugmentSettings(hflip=True, vflip=True, **ONE)
    a, b, c = draws(s, x, y, 12, seed=5), draws(s, x, y, 12, seed=5), draws(s, x, y, 12, seed=6)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


# ---------------------------------------------------------------------------------------------
# config


def test_config_keys_defaults_and_generator_fallback(tmp_path):
    cfg = load_config(write_config(tmp_path / "all", ALL_SECTIONS))
    s = AugmentSettings.from_config(cfg)
    assert s.angles == (30.0, 60.0, 90.0, 120.0, 180.0, 210.0) and s.shrinks == (0.8,) and s.shears == (0.2,)
    assert s.deformation == (1300.0, (8.0,)) and s.distortion == (40.0, 0.5, (0.02,))
    assert s.barrdistortion[:2] == (0.3, 0.3) and len(s.barrdistortion[2]) == 5
    assert s.pincdistortion[:2] == (0.3, -0.3) and s.sharpening == (1.0,) and s.brightening == (1.2, 10.0)
    assert s.hflip and s.vflip  # seed defaults
    # only [generator]: its flips and rotation, no shrink
    old = load_config(write_config(tmp_path / "old", "[generator]\nhflip = False\nangles = [180]\n"))
    s = AugmentSettings.from_config(old)
    assert (s.hflip, s.vflip, s.angles, s.shrinks, s.transforms) == (False, True, (180.0,), (), ["rotation"])
    # [augmentor] present: the seed's defaults ([0.8] shrink, no elastic unless asked)
    mixed = load_config(write_config(tmp_path / "mixed", "[generator]\nhflip = False\n[augmentor]\nvflip = False\n"))
    s = AugmentSettings.from_config(mixed)
    assert (s.hflip, s.vflip, s.angles, s.shrinks) == (False, False, (90.0, 180.0, 270.0), (0.8,))
    d = load_config(write_config(tmp_path / "sig", "[augmentor]\ndeformation = True\n[deformation]\nsigmoid = 5\n"))
    assert AugmentSettings.from_config(d).deformation == (1300.0, (5.0,))
    e = load_config(write_config(tmp_path / "empty", "[augmentor]\ndistortion = True\nshrinks = []\n"
                                                     "[distortion]\ndistortions = []\n"))
    assert AugmentSettings.from_config(e).transforms == ["rotation"]  # empty lists: nothing to draw


@pytest.mark.parametrize("section,line,key", [
    ("augmentor", "shrinks = [1.5]", "shrinks"),
    ("augmentor", "angles = 90", "angles"),
    ("augmentor", "deformation = 'yes'", "deformation"),
    ("deformation", "alpah = -3", "alpah"),
    ("distortion", "distortions = [0.9]", "distortions"),
    ("barrdistortion", "centers = [(1.5, 0.5)]", "centers"),
    ("pincdistortion", "centers = (0.5, 0.5)", "centers"),
    ("brightening", "alpha = 0", "alpha"),
])
def test_bad_values_are_one_line_errors(tmp_path, section, line, key):
    path = write_config(tmp_path, f"[{section}]\n{line}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and f"[{section}] {key}" in msg
    result = CliRunner().invoke(cli, ["augment", str(path)])
    assert result.exit_code == 2 and f"[{section}] {key}" in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------
# the pipeline, the grid, training


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("augment")
    make_dataset(root / "data", kind="tiles", size=64, n_train=12, n_valid=4, n_test=1, seed=4, n_mini=1)
    return write_config(root, ALL_SECTIONS)


def test_dataset_applies_the_augmenter_reproducibly(project):
    from flexunet.train import dataset as ds

    cfg = load_config(project)
    maker = ds.SampleMaker(cfg)
    pairs = ds.split_pairs(cfg, "train")

    def batches(augmenter):
        data, _ = ds.make_tf_dataset(maker, pairs, 4, training=True, seed=3, augmenter=augmenter)
        return [(x.numpy(), y.numpy()) for x, y in data.take(3)]

    plain = batches(None)
    first = batches(make_augmenter(cfg, 3, 255.0))
    again = batches(make_augmenter(cfg, 3, 255.0))
    for (xa, ya), (xb, yb), (xp, _) in zip(first, again, plain):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert xa.shape == xp.shape and set(np.unique(ya)) <= {0.0, 1.0}
    assert any(not np.array_equal(a[0], p[0]) for a, p in zip(first, plain))


def test_augment_command_writes_the_grid(project, tmp_path):
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(cli, ["augment", str(project), "-n", "6", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: 6 samples" in result.output and "deformation" in result.output
    grid = read_image(out)
    assert grid.shape[0] > 2 * 64 and grid.shape[1] > 4 * 2 * 64  # 2 rows of 4 image|mask pairs
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary file left
    again = tmp_path / "again.png"
    CliRunner().invoke(cli, ["augment", str(project), "-n", "6", "-o", str(again)])
    assert again.read_bytes() == out.read_bytes()  # the same draws for the same config seed


@pytest.mark.slow
def test_training_with_every_transform_runs(project):
    from flexunet.train.trainer import train

    cfg = load_config(project)
    result = train(cfg)
    assert result.model_path.is_file() and result.epochs_run == 1
    assert (cfg.train.eval_dir / "augmentation_grid.png").stat().st_size > 0
