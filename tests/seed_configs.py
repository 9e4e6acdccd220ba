"""Helpers of the config tests (test_config_reader, test_config_schema, test_config_paths): seed-style
config files written under ``tmp_path``, the warnings loading them logs, and the seed configs and bad
values those tests and test_cli_errors share.

Every config is written by the test itself in the seeds' style: INI sections, Python-literal values,
``;``/``#`` comments, trailing spaces after section headers, broken values.  The loader remembers
which (file, section, key, line) it already warned about, so every test that checks warnings uses
its own file.
"""
from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from flexunet.core.config import CONFIG_FILENAME

LOGGER = "flexunet"


@pytest.fixture(autouse=True)
def capture_flexunet_warnings(monkeypatch, caplog):
    """Make the "flexunet" logger reach caplog even if the CLI's setup_logging ran earlier in the
    session (it sets propagate=False and adds a stderr handler).  Autouse in every test module that
    imports it."""
    log = logging.getLogger(LOGGER)
    monkeypatch.setattr(log, "propagate", True)
    monkeypatch.setattr(log, "handlers", [])
    monkeypatch.setattr(log, "disabled", False)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    yield


def write(folder: Path, text: str, name: str = CONFIG_FILENAME, dedent: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text) if dedent else text, encoding="utf-8")
    return path


def flexunet_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno == logging.WARNING]


# A small valid [model] section most tests start from (64 px, 3 levels: fast and consistent).
SMALL_MODEL = """\
[model]
image_width    = 64
image_height   = 64
num_layers     = 3
"""


# Values of the wrong type or range: each is a one-line ConfigError naming file, section and key.
BAD_VALUES = [
    # (id, config text appended to SMALL_MODEL, section named, key named)
    ("epochs-string", '[train]\nepochs = "ten"\n', "train", "epochs"),
    ("epochs-zero", "[train]\nepochs = 0\n", "train", "epochs"),
    ("epochs-float", "[train]\nepochs = 10.5\n", "train", "epochs"),
    ("epochs-bool", "[train]\nepochs = True\n", "train", "epochs"),
    ("batch-size-negative", "[train]\nbatch_size = -2\n", "train", "batch_size"),
    ("num-classes-zero", "[model]\nnum_classes = 0\n", "model", "num_classes"),
    ("base-kernels-even", "[model]\nbase_kernels = (4,4)\n", "model", "base_kernels"),
    ("base-kernels-unequal", "[model]\nbase_kernels = (3,5)\n", "model", "base_kernels"),
    ("base-kernels-triple", "[model]\nbase_kernels = (3,3,3)\n", "model", "base_kernels"),
    ("dilation-unequal", "[model]\ndilation = (2,3)\n", "model", "dilation"),
    ("dropout-too-big", "[model]\ndropout_rate = 1.5\n", "model", "dropout_rate"),
    ("dropout-negative", "[model]\ndropout_rate = -0.1\n", "model", "dropout_rate"),
    ("width-not-multiple", "[model]\nnum_layers = 8\nimage_width = 500\nimage_height = 512\n",
     "model", "image_width"),
    ("height-not-multiple", "[model]\nimage_height = 66\n", "model", "image_height"),
    ("num-layers-one", "[model]\nnum_layers = 1\n", "model", "num_layers"),
    ("learning-rate-negative", "[model]\nlearning_rate = -1\n", "model", "learning_rate"),
    ("learning-rate-zero", "[model]\nlearning_rate = 0\n", "model", "learning_rate"),
    ("image-channels-4", "[model]\nimage_channels = 4\n", "model", "image_channels"),
    ("activation-unknown", '[model]\nactivation = "nope"\n', "model", "activation"),
    ("generator-string", '[model]\ngenerator = "yes"\n', "model", "generator"),
    ("metrics-not-strings", "[model]\nmetrics = [1, 2]\n", "model", "metrics"),
    ("model-name-unknown", '[model]\nmodel = "ResNet"\n', "model", "model"),
    ("color-converter-unknown", '[image]\ncolor_converter = "cv2.COLOR_NOPE"\n', "image",
     "color_converter"),
    ("color-converter-is-interpolation", "[image]\ncolor_converter = cv2.INTER_CUBIC\n", "image",
     "color_converter"),
    ("color-converter-int", "[image]\ncolor_converter = 40\n", "image", "color_converter"),
    ("interpolation-unknown", '[dataset]\nresize_interpolation = "cv2.INTER_WHATEVER"\n',
     "dataset", "resize_interpolation"),
    ("multiclass-without-rgb-map", "[model]\nnum_classes = 6\n", "mask", "rgb_map"),
    ("rgb-map-indices-mismatch",
     "[model]\nnum_classes = 3\n[mask]\nrgb_map = {(0,0,0):0, (0,255,0):1, (255,0,0):5}\n",
     "mask", "rgb_map"),
    ("rgb-map-too-few-classes",
     "[model]\nnum_classes = 6\n[mask]\nrgb_map = {(0,0,0):0, (0,255,0):1}\n", "mask", "rgb_map"),
    ("rgb-map-bad-colour",
     "[model]\nnum_classes = 2\n[mask]\nrgb_map = {(0,0,0):0, (300,0,0):1}\n", "mask", "rgb_map"),
    ("rgb-map-not-dict", "[mask]\nrgb_map = [(0,0,0), (255,255,255)]\n", "mask", "rgb_map"),
    ("class-names-count",
     "[model]\nnum_classes = 2\n[mask]\nrgb_map = {(0,0,0):0, (255,255,255):1}\n"
     'class_names = ["a", "b", "c"]\n', "mask", "class_names"),
    ("threshold-300", "[mask]\nthreshold = 300\n", "mask", "threshold"),
    ("blur-size-even", "[mask]\nblur_size = (4,4)\n", "mask", "blur_size"),
    ("segmentation-colour-unknown", '[segmentation]\nwhite = "chartreuse-ish"\n', "segmentation",
     "white"),
    ("model-dir-not-string", "[train]\nmodel_dir = 5\n", "train", "model_dir"),
    ("reducer-factor-one", "[train]\nreducer_factor = 1.0\n", "train", "reducer_factor"),
    ("angles-strings", '[generator]\nangles = ["ninety"]\n', "generator", "angles"),
    ("blend-unknown", '[tiledinfer]\nblend = "median"\n', "tiledinfer", "blend"),
    ("overlapping-negative", "[tiledinfer]\noverlapping = -1\n", "tiledinfer", "overlapping"),
    ("valid-path-int", "[valid]\nimage_datapath = 42\n", "valid", "image_datapath"),
    ("test-alias-path-empty", '[test]\nimages_dir = ""\n', "test", "images_dir"),
]


# The [model] section the seed configs below share; what differs between them are the fields.
SEED_MODEL = """\
[model]
model          = "{model}"
generator      = True
image_width    = 512
image_height   = 512
image_channels = 3
input_normalize = {input_normalize}
normalization  = False
num_classes    = {num_classes}
base_filters   = 16
base_kernels   = ({kernel},{kernel})
num_layers     = 8
dropout_rate   = 0.05
learning_rate  = 0.0001
clipvalue      = 0.5
dilation       = (1,1)
"""

# The [segmentation] section both seed configs below ship.
SEED_SEGMENTATION = """\
[segmentation]
colorize      = True
black         = "black"
white         = "green"
blursize      = None
"""

# A seed config as the seeds ship it (trailing spaces after some section headers included).
SEED_CONFIG = """\
; train_eval_infer.config
; 2024/08/16 (C) antillia.com
""" + SEED_MODEL.format(model="TensorflowUNet", input_normalize=False, num_classes=1, kernel=7) + """\
;loss           = "bce_iou_loss"
loss           = "bce_dice_loss"
metrics        = ["dice_coef"]
show_summary   = False

[train]
epochs        = 100
batch_size    = 2
steps_per_epoch  = 240
validation_steps = 80
patience      = 10
metrics       = ["dice_coef", "val_dice_coef"]
model_dir     = "./models"
eval_dir      = "./eval"
image_datapath = "../../../dataset/Tiled-Cell/train/images/"
mask_datapath  = "../../../dataset/Tiled-Cell/train/masks/"
epoch_change_infer     = True
epoch_change_infer_dir = "./epoch_change_infer"
epoch_change_tiledinfer     = True
epoch_change_tiledinfer_dir = "./epoch_change_tiledinfer"
num_infer_images       = 1
create_backup  = False
learning_rate_reducer = True
reducer_factor     = 0.3
reducer_patience   = 4
save_weights_only  = True

[eval]
image_datapath = "../../../dataset/Tiled-Cell/valid/images/"
mask_datapath  = "../../../dataset/Tiled-Cell/valid/masks/"

[test] 
image_datapath = "../../../dataset/Tiled-Cell/test/images/"
mask_datapath  = "../../../dataset/Tiled-Cell/test/masks/"

[infer] 
images_dir    = "./mini_test/images"
output_dir    = "./mini_test_output"

[tiledinfer] 
overlapping   = 64
images_dir    = "./mini_test/images"
output_dir    = "./mini_test_output_tiled"

""" + SEED_SEGMENTATION + """
[image]
color_converter = "cv2.COLOR_BGR2HSV_FULL"
gamma           = 0

[mask]
blur      = False
blur_size = (3,3)
binarize  = False
threshold = 80

[generator]
debug        = True
augmentation = True
hflip    = True
vflip    = True
rotation = True
angles   = [90, 180, 270]
shrinks  = [0.8]
shears   = [0.1]
deformation = True
distortion  = True
sigmoids = [(1.1, 8), (3.0, 4)]
"""


# The seeds' multiclass Lizard config: [valid] and images_dir spellings, categorised colour masks.
LIZARD_CONFIG = """\
; train_eval_infer.config
; Lizard: 6 classes, categorised colour masks
""" + SEED_MODEL.format(model="TensorFlowFlexUNet", input_normalize=True, num_classes=6, kernel=9) + """\
loss           = "categorical_crossentropy"
metrics        = ["dice_coef_multiclass"]
show_summary   = False

[train]
epochs        = 100
batch_size    = 2
patience      = 10
metrics       = ["dice_coef_multiclass", "val_dice_coef_multiclass"]
model_dir     = "./models"
eval_dir      = "./eval"
images_dir    = "../../../dataset/Lizard/train/images/"
masks_dir     = "../../../dataset/Lizard/train/masks/"
exclude_files = ["glas_54.png", "crag_33"]

[valid]
images_dir    = "../../../dataset/Lizard/valid/images/"
masks_dir     = "../../../dataset/Lizard/valid/masks/"

[test] 
images_dir    = "../../../dataset/Lizard/test/images/"
masks_dir     = "../../../dataset/Lizard/test/masks/"
files         = ["glas_54.png"]

[infer] 
images_dir    = "./mini_test/images"
output_dir    = "./mini_test_output"

""" + SEED_SEGMENTATION + """
[image]
color_converter = None

[mask]
blur      = False
binarize  = True
threshold = 128
rgb_map = {(0,0,0):0, (0,255,0):1, (255,255,0):2, (0,255,255):3, (255,0,0):4, (0,0,255):5}

[dataset]
resize_interpolation = "cv2.INTER_NEAREST"

[generator]
augmentation = True
angles   = [90, 180, 270]
"""
