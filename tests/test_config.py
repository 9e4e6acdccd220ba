"""Tests for runtime.config: the seeds' ``train_eval_infer.config`` read safely into a typed Config.

Every config is written by the test itself (under ``tmp_path``) in the seeds' style: INI sections,
Python-literal values, ``;``/``#`` comments, trailing spaces after section headers, broken values.
The module remembers which (file, section, key, line) it already warned about, so every test that
checks warnings uses its own file.
"""
from __future__ import annotations

import logging
import re
import textwrap
from pathlib import Path

import pytest

from flexunet.core.config import (
    CONFIG_FILENAME,
    Config,
    ConfigError as ConfigErrorReexport,
    class_colors,
    class_names,
    load_config,
    reroot,
)
from flexunet.core.errors import EXIT_USAGE, ConfigError, FlexunetError

LOGGER = "flexunet"


# ---------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(autouse=True)
def _capture_flexunet_warnings(monkeypatch, caplog):
    """Make the "flexunet" logger reach caplog even if the CLI's setup_logging ran earlier in the
    session (it sets propagate=False and adds a stderr handler)."""
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


# ---------------------------------------------------------------------------------------------
# 1. broken values: one warning (file, line, section, key), default used, listed in Config.warnings


def test_unparsable_values_warn_once_and_take_defaults(tmp_path, caplog):
    path = write(tmp_path, """\
        ; seed config with the typos the seeds really ship
        [model]
        generator = Flase
        num_layers = 3
        image_width = 64
        image_height = 64

        [generator]
        augmentation = True
        angles   = [90. 180, 270,]
        """)
    cfg = load_config(path)

    assert cfg.model.generator is False          # default
    assert cfg.generator.angles == [90.0, 180.0, 270.0]   # default
    assert cfg.generator.augmentation is True    # neighbours unaffected
    assert cfg.model.num_layers == 3

    msgs = flexunet_warnings(caplog)
    assert len(msgs) == 2
    gen = next(m for m in msgs if "generator =" in m)
    ang = next(m for m in msgs if "angles" in m)
    assert str(path) in gen and f"{path}:3:" in gen and "[model]" in gen and "generator" in gen
    assert "Flase" in gen
    assert str(path) in ang and f"{path}:10:" in ang and "[generator]" in ang and "angles" in ang
    for m in msgs:
        assert "\n" not in m
        assert "default" in m

    assert len(cfg.warnings) == 2
    assert any("generator" in w and ":3:" in w for w in cfg.warnings)
    assert any("angles" in w and ":10:" in w for w in cfg.warnings)

    # Loading the same file again: no new log records, but the new Config still lists them.
    caplog.clear()
    cfg2 = load_config(path)
    assert flexunet_warnings(caplog) == []
    assert len(cfg2.warnings) == 2
    assert cfg2.model.generator is False


def test_warning_is_per_file(tmp_path, caplog):
    """The same broken line in two different files warns for each file."""
    text = SMALL_MODEL + "generator = Flase\n"
    a = write(tmp_path / "a", text)
    b = write(tmp_path / "b", text)
    load_config(a)
    load_config(b)
    msgs = flexunet_warnings(caplog)
    assert len(msgs) == 2
    assert any(str(a) in m for m in msgs) and any(str(b) in m for m in msgs)


@pytest.mark.parametrize("section, key, bad, attr, default", [
    ("model", "generator", "Flase", ("model", "generator"), False),
    ("generator", "angles", "[90. 180, 270,]", ("generator", "angles"), [90.0, 180.0, 270.0]),
    ("train", "epochs", "", ("train", "epochs"), 100),                      # empty value
    ("train", "epochs", "ten", ("train", "epochs"), 100),                   # unquoted word
    ("train", "batch_size", "[1, 2", ("train", "batch_size"), 4),           # unclosed bracket
    ("model", "base_kernels", "(7,7", ("model", "base_kernels"), (3, 3)),
    ("mask", "threshold", "8O", ("mask", "threshold"), 128),                # letter O
    ("image", "color_converter", "cv2.COLOR_NOPE", ("image", "color_converter"), None),
    ("segmentation", "white", "green", ("segmentation", "white"), (255, 255, 255)),  # unquoted
])
def test_each_unparsable_value_warns_and_defaults(tmp_path, caplog, section, key, bad, attr, default):
    path = write(tmp_path, SMALL_MODEL + f"\n[{section}]\n{key} = {bad}\n", dedent=False)
    cfg = load_config(path)
    assert getattr(getattr(cfg, attr[0]), attr[1]) == default
    msgs = flexunet_warnings(caplog)
    assert len(msgs) == 1, msgs
    line = SMALL_MODEL.count("\n") + 3
    assert f"{path}:{line}:" in msgs[0]
    assert f"[{section}] {key}" in msgs[0]
    assert cfg.warnings == msgs


def test_unparsable_value_in_valid_section_names_valid(tmp_path, caplog):
    path = write(tmp_path, SMALL_MODEL + "[valid]\nimages_dir = ./valid/images\n", dedent=False)
    cfg = load_config(path)
    assert cfg.eval.image_datapath is None
    (msg,) = flexunet_warnings(caplog)
    assert "[valid] images_dir" in msg and str(path) in msg


def test_unparsable_unused_key_is_kept_without_warning(tmp_path, caplog):
    """Keys the project does not use (the seeds' [generator] shrinks/shears/sigmoids ...) are only
    kept in Config.raw."""
    path = write(tmp_path, SMALL_MODEL + "[generator]\nshrinks = [0.8\nsigmoids = [(1.1, 8), (3.0, 4)]\n",
                 dedent=False)
    cfg = load_config(path)
    assert flexunet_warnings(caplog) == []
    assert cfg.warnings == []
    assert cfg.raw["generator"]["sigmoids"] == [(1.1, 8), (3.0, 4)]
    assert "shrinks" in cfg.raw["generator"]


def test_same_file_through_other_spelling_warns_once(tmp_path, caplog):
    path = write(tmp_path / "proj", SMALL_MODEL + "generator = Flase\n", dedent=False)
    (tmp_path / "proj" / "sub").mkdir()
    load_config(path)
    load_config(tmp_path / "proj" / "sub" / ".." / CONFIG_FILENAME)
    assert len(flexunet_warnings(caplog)) == 1


# ---------------------------------------------------------------------------------------------
# 2. a wrong type or range is a one-line ConfigError naming file, section and key


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


@pytest.mark.parametrize("text, section, key", [c[1:] for c in BAD_VALUES],
                         ids=[c[0] for c in BAD_VALUES])
def test_wrong_type_or_range_is_one_line_config_error(tmp_path, text, section, key):
    path = write(tmp_path, SMALL_MODEL + text, dedent=False)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(str(path))
    assert f"[{section}] {key}:" in msg
    assert info.value.exit_code == EXIT_USAGE == 2
    assert isinstance(info.value, FlexunetError)


def test_config_error_is_the_errors_module_class():
    assert ConfigErrorReexport is ConfigError


def test_multiclass_without_rgb_map_message_mentions_num_classes(tmp_path):
    path = write(tmp_path, SMALL_MODEL + "num_classes = 6\n", dedent=False)
    with pytest.raises(ConfigError, match=r"num_classes = 6"):
        load_config(path)


def test_width_error_explains_the_multiple(tmp_path):
    path = write(tmp_path, "[model]\nnum_layers = 8\nimage_width = 500\nimage_height = 512\n", dedent=False)
    with pytest.raises(ConfigError, match=r"500 is not a multiple of .*128"):
        load_config(path)


# ---------------------------------------------------------------------------------------------
# 3. both spellings, header spacing, comments


def test_valid_section_is_accepted_for_eval(tmp_path):
    path = write(tmp_path, SMALL_MODEL + textwrap.dedent("""\
        [valid]
        image_datapath = "./data/valid/images"
        mask_datapath  = "./data/valid/masks"
        """), dedent=False)
    cfg = load_config(path)
    assert cfg.eval.image_datapath == tmp_path / "data" / "valid" / "images"
    assert cfg.eval.mask_datapath == tmp_path / "data" / "valid" / "masks"


def test_eval_section_is_accepted(tmp_path):
    path = write(tmp_path, SMALL_MODEL + textwrap.dedent("""\
        [eval]
        image_datapath = "./data/valid/images"
        mask_datapath  = "./data/valid/masks"
        """), dedent=False)
    cfg = load_config(path)
    assert cfg.eval.image_datapath == tmp_path / "data" / "valid" / "images"


def test_eval_wins_over_valid_with_a_warning(tmp_path, caplog):
    path = write(tmp_path, SMALL_MODEL + textwrap.dedent("""\
        [valid]
        image_datapath = "./v/images"
        mask_datapath  = "./v/masks"
        [eval]
        image_datapath = "./e/images"
        mask_datapath  = "./e/masks"
        """), dedent=False)
    cfg = load_config(path)
    assert cfg.eval.image_datapath == tmp_path / "e" / "images"
    assert any("[eval]" in m and "[valid]" in m for m in flexunet_warnings(caplog))


@pytest.mark.parametrize("section", ["train", "eval", "valid", "test"])
def test_images_dir_masks_dir_aliases(tmp_path, section):
    path = write(tmp_path, SMALL_MODEL + f'[{section}]\nimages_dir = "./x/images"\nmasks_dir = "./x/masks"\n',
                 dedent=False)
    cfg = load_config(path)
    split = getattr(cfg, "eval" if section == "valid" else section)
    assert split.image_datapath == tmp_path / "x" / "images"
    assert split.mask_datapath == tmp_path / "x" / "masks"


def test_datapath_spelling_wins_over_alias(tmp_path):
    path = write(tmp_path, SMALL_MODEL + '[test]\nimages_dir = "./alias"\nimage_datapath = "./main"\n',
                 dedent=False)
    assert load_config(path).test.image_datapath == tmp_path / "main"


def test_header_with_trailing_space_and_case(tmp_path):
    text = (SMALL_MODEL + "[test] \nimage_datapath = \"./t/images\"\n"
            "[ Infer ]   \nImages_Dir = \"./mini\"\n[TiledInfer]\t\nOVERLAPPING = 16\n")
    path = write(tmp_path, text, dedent=False)
    assert "[test] \n" in path.read_text()
    cfg = load_config(path)
    assert cfg.test.image_datapath == tmp_path / "t" / "images"
    assert cfg.infer.images_dir == tmp_path / "mini"
    assert cfg.tiledinfer.overlapping == 16


def test_comments_full_line_and_inline(tmp_path, caplog):
    path = write(tmp_path, textwrap.dedent("""\
        ; train_eval_infer.config
        # 2024/08/16 (C) antillia.com
        [model]
        ;num_layers = 12
        # num_layers = 11
          ; an indented comment line
        num_layers     = 3      ; three levels
        image_width    = 64 ; inline comment
        image_height   = 64\t; after a tab
        loss           = "bce_iou_loss" ; was bce_dice_loss
        metrics        = ["dice_coef"]   # a Python comment works too
        [train]
        model_dir      = "./models;v2"          ; ';' inside quotes is kept
        eval_dir       = './eval ; old'         ; even after a space
        epochs         = 7;not a comment: no space before ';'
        """))
    cfg = load_config(path)
    assert cfg.model.num_layers == 3
    assert cfg.model.image_width == 64 and cfg.model.image_height == 64
    assert cfg.model.loss == "bce_iou_loss"
    assert cfg.model.metrics == ["dice_coef"]
    assert cfg.train.model_dir == tmp_path / "models;v2"
    assert cfg.train.eval_dir == tmp_path / "eval ; old"
    # '7;not ...' is not a literal: warning + default
    assert cfg.train.epochs == 100
    (msg,) = flexunet_warnings(caplog)
    assert "[train] epochs" in msg and f"{path}:15:" in msg


def test_colon_separator(tmp_path):
    path = write(tmp_path, "[model]\nnum_layers: 3\nimage_width: 64\nimage_height: 64\n", dedent=False)
    cfg = load_config(path)
    assert (cfg.model.num_layers, cfg.model.image_width) == (3, 64)


def test_bom_and_crlf(tmp_path):
    path = tmp_path / CONFIG_FILENAME
    path.write_bytes("\ufeff[model]\r\nnum_layers = 3\r\nimage_width = 64\r\nimage_height = 64\r\n"
                     .encode("utf-8"))
    cfg = load_config(path)
    assert cfg.model.num_layers == 3


def test_inline_comment_stripper_respects_escaped_quotes(tmp_path):
    path = write(tmp_path, SMALL_MODEL + 'loss = "a \\" ; b"\n', dedent=False)
    assert load_config(path).model.loss == 'a " ; b'


def test_hash_comment_after_symbolic_name(tmp_path):
    path = write(tmp_path, "[image]\ncolor_converter = cv2.COLOR_BGR2HSV  # hsv\n", dedent=False)
    assert load_config(path).image.color_converter == "COLOR_BGR2HSV"


# ---------------------------------------------------------------------------------------------
# 4. symbolic names through an allow-list; anything else is never executed


@pytest.mark.parametrize("value", ["cv2.COLOR_BGR2HSV_FULL", '"cv2.COLOR_BGR2HSV_FULL"',
                                   "'cv2.COLOR_BGR2HSV_FULL'", "cv2.COLOR_BGR2HSV_FULL ; comment",
                                   '"COLOR_BGR2HSV_FULL"'])
def test_color_converter_symbol(tmp_path, caplog, value):
    path = write(tmp_path, f"[image]\ncolor_converter = {value}\n", dedent=False)
    cfg = load_config(path)
    assert cfg.image.color_converter == "COLOR_BGR2HSV_FULL"
    assert flexunet_warnings(caplog) == []


@pytest.mark.parametrize("value, expected", [
    ('"cv2.INTER_CUBIC"', "INTER_CUBIC"), ("cv2.INTER_CUBIC", "INTER_CUBIC"),
    ("cv2.INTER_NEAREST", "INTER_NEAREST"), ('"cv2.INTER_AREA"', "INTER_AREA"),
])
def test_resize_interpolation_symbol(tmp_path, value, expected):
    path = write(tmp_path, f"[dataset]\nresize_interpolation = {value}\n", dedent=False)
    assert load_config(path).dataset.resize_interpolation == expected


def test_color_converter_none_and_default(tmp_path):
    assert load_config(write(tmp_path / "a", "[image]\ncolor_converter = None\n")).image.color_converter is None
    assert load_config(write(tmp_path / "b", "[image]\ngamma = 0\n")).image.color_converter is None


@pytest.mark.parametrize("section, key, template, attr, default", [
    ("image", "color_converter", "__import__('pathlib').Path(r'{m}').touch()", "color_converter", None),
    ("image", "color_converter", "__import__('os').system('touch {m}')", "color_converter", None),
    ("image", "color_converter",
     "cv2.COLOR_BGR2HSV if __import__('pathlib').Path(r'{m}').touch() else 0", "color_converter", None),
    ("train", "epochs", "__import__('pathlib').Path(r'{m}').touch() or 5", "epochs", 100),
    ("model", "num_classes", "(lambda: __import__('pathlib').Path(r'{m}').touch())()", "num_classes", 1),
    ("model", "loss", "f\"{{__import__('pathlib').Path(r'{m}').touch()}}\"", "loss", "bce_dice_loss"),
    ("model", "metrics", "[__import__('pathlib').Path(r'{m}').touch()]", "metrics", ["dice_coef"]),
    ("dataset", "resize_interpolation", "cv2.__dict__['INTER_CUBIC'] or open(r'{m}', 'w')",
     "resize_interpolation", "INTER_LINEAR"),
])
def test_expressions_are_never_executed(tmp_path, caplog, section, key, template, attr, default):
    marker = tmp_path / "pwned"
    path = write(tmp_path / "cfg", f"[{section}]\n{key} = {template.format(m=marker)}\n", dedent=False)
    cfg = load_config(path)
    assert not marker.exists()
    assert getattr(getattr(cfg, section), attr) == default
    (msg,) = flexunet_warnings(caplog)
    assert f"[{section}] {key}" in msg and f"{path}:2:" in msg


def test_unused_key_expression_is_never_executed(tmp_path, caplog):
    marker = tmp_path / "pwned"
    path = write(tmp_path / "cfg",
                 f"[generator]\nshears = __import__('pathlib').Path(r'{marker}').touch()\n"
                 f"[whatever]\nx = __import__('os').system('touch {marker}')\n", dedent=False)
    load_config(path)
    assert not marker.exists()


def test_power_expression_is_not_computed(tmp_path, caplog):
    path = write(tmp_path, "[train]\nepochs = 2**10\nbatch_size = 2*4\n", dedent=False)
    cfg = load_config(path)
    assert cfg.train.epochs == 100 and cfg.train.batch_size == 4
    msgs = flexunet_warnings(caplog)
    assert len(msgs) == 2
    assert any("[train] epochs" in m and "2**10" in m for m in msgs)


def test_pathological_literals_do_not_crash(tmp_path, caplog):
    path = write(tmp_path, "[train]\nepochs = " + "(" * 300 + "1" + ")" * 300 + "\n"
                 "batch_size = " + "9" * 5000 + "\n", dedent=False)
    cfg = load_config(path)
    assert cfg.train.epochs == 100 and cfg.train.batch_size == 4
    assert len(flexunet_warnings(caplog)) == 2


# ---------------------------------------------------------------------------------------------
# 5. paths: relative to the config's folder; data_root re-roots dataset inputs only


PATHS_CONFIG = SMALL_MODEL + textwrap.dedent("""\
    [train]
    model_dir      = "./models"
    eval_dir       = "./eval"
    image_datapath = "../../../dataset/Tiled-MultipleMyeloma/train/images/"
    mask_datapath  = "../../../dataset/Tiled-MultipleMyeloma/train/masks/"
    epoch_change_infer_dir = "./epoch_change_infer"
    [eval]
    image_datapath = "../../../dataset/Tiled-MultipleMyeloma/valid/images/"
    mask_datapath  = "{absolute}"
    [test]
    images_dir = "./dataset/test/images"
    [infer]
    output_dir = "./mini_test_output"
    """)


def test_relative_paths_resolve_against_config_folder_not_cwd(tmp_path, monkeypatch):
    project = tmp_path / "projects" / "TensorflowUNet" / "Tiled-MultipleMyeloma"
    absolute = tmp_path / "elsewhere" / "masks"
    path = write(project, PATHS_CONFIG.format(absolute=absolute), dedent=False)
    other = tmp_path / "cwd"
    other.mkdir()
    monkeypatch.chdir(other)

    for arg in (path, str(path), Path("..") / "projects" / "TensorflowUNet" / "Tiled-MultipleMyeloma"
                / CONFIG_FILENAME):
        cfg = load_config(arg)
        assert cfg.path.is_absolute()
        assert cfg.folder.resolve() == project.resolve()
        assert cfg.train.image_datapath.resolve() == tmp_path / "dataset" / "Tiled-MultipleMyeloma" / "train" / "images"
        assert cfg.train.mask_datapath.resolve() == tmp_path / "dataset" / "Tiled-MultipleMyeloma" / "train" / "masks"
        assert cfg.eval.image_datapath.resolve() == tmp_path / "dataset" / "Tiled-MultipleMyeloma" / "valid" / "images"
        assert cfg.eval.mask_datapath == absolute
        assert cfg.test.image_datapath.resolve() == project / "dataset" / "test" / "images"
        assert cfg.train.model_dir.resolve() == project / "models"
        assert cfg.infer.output_dir.resolve() == project / "mini_test_output"
        assert ".." not in cfg.train.image_datapath.parts   # normalised
        assert cfg.data_root is None


def test_default_output_dirs_resolve_against_config_folder(tmp_path, monkeypatch):
    path = write(tmp_path / "proj", SMALL_MODEL, dedent=False)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path)
    assert cfg.train.model_dir == tmp_path / "proj" / "models"
    assert cfg.train.eval_dir == tmp_path / "proj" / "eval"
    assert cfg.train.epoch_change_tiledinfer_dir == tmp_path / "proj" / "epoch_change_tiledinfer"
    assert cfg.train.image_datapath is None and cfg.infer.output_dir is None


def test_data_root_reroots_dataset_paths_only(tmp_path, monkeypatch):
    project = tmp_path / "projects" / "TensorflowUNet" / "Tiled-MultipleMyeloma"
    absolute = tmp_path / "elsewhere" / "masks"
    path = write(project, PATHS_CONFIG.format(absolute=absolute), dedent=False)
    root = tmp_path / "shared" / "data"
    root.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)

    for data_root in (root, str(root), Path("shared") / "data"):
        cfg = load_config(path, data_root=data_root)
        assert cfg.data_root == root
        assert cfg.train.image_datapath == root / "Tiled-MultipleMyeloma" / "train" / "images"
        assert cfg.train.mask_datapath == root / "Tiled-MultipleMyeloma" / "train" / "masks"
        assert cfg.eval.image_datapath == root / "Tiled-MultipleMyeloma" / "valid" / "images"
        assert cfg.eval.mask_datapath == absolute                      # absolute: untouched
        assert cfg.test.image_datapath == root / "test" / "images"     # './dataset/' dropped
        # outputs stay beside the config
        assert cfg.train.model_dir == project / "models"
        assert cfg.train.eval_dir == project / "eval"
        assert cfg.train.epoch_change_infer_dir == project / "epoch_change_infer"
        assert cfg.infer.output_dir == project / "mini_test_output"


@pytest.mark.parametrize("data_root", ["missing", "a_file"])
def test_data_root_must_be_an_existing_folder(tmp_path, data_root):
    path = write(tmp_path, SMALL_MODEL, dedent=False)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError) as info:
        load_config(path, data_root=tmp_path / data_root)
    assert str(tmp_path / data_root) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("given, expected", [
    ("../../../dataset/Tiled-MultipleMyeloma/train/images/", "Tiled-MultipleMyeloma/train/images"),
    ("../../dataset/Lizard/images/", "Lizard/images"),
    ("./dataset/train/images", "train/images"),
    ("./mini_test/images", "mini_test/images"),
    ("train/images", "train/images"),
    ("..\\..\\dataset\\IHC\\train\\images", "IHC/train/images"),
    ("../../dataset/dataset/x", "dataset/x"),   # only one leading 'dataset' folder is dropped
])
def test_reroot(tmp_path, given, expected):
    assert reroot(given, tmp_path) == tmp_path / expected


def test_reroot_keeps_absolute_paths(tmp_path):
    assert reroot("/data/Lizard/images", tmp_path) == Path("/data/Lizard/images")


# ---------------------------------------------------------------------------------------------
# 6. the typed object, defaults, and unreadable files


def test_types_of_parsed_values(tmp_path):
    path = write(tmp_path, """\
        [model]
        num_classes  = 3
        base_kernels = [5, 5]
        dilation     = 2
        num_layers   = 3
        image_width  = 64
        image_height = 32
        dropout_rate = 0
        learning_rate = 1
        clipvalue    = None
        metrics      = "dice_coef_multiclass"
        normalization = 1
        activation   = "ELU"
        [train]
        metrics      = ("a", "b")
        steps_per_epoch = None
        [mask]
        rgb_map = {"black": 0, "#00ff00": 1, (255, 0, 0): 2}
        [segmentation]
        blursize = 3
        """)
    cfg = load_config(path)
    m = cfg.model
    assert m.base_kernels == (5, 5) and type(m.base_kernels) is tuple
    assert m.dilation == (2, 2) and type(m.dilation) is tuple
    assert m.metrics == ["dice_coef_multiclass"] and type(m.metrics) is list
    assert cfg.train.metrics == ["a", "b"] and type(cfg.train.metrics) is list
    assert m.dropout_rate == 0.0 and type(m.dropout_rate) is float
    assert m.learning_rate == 1.0 and type(m.learning_rate) is float
    assert m.clipvalue is None
    assert m.normalization is True
    assert m.activation == "elu"
    assert cfg.train.steps_per_epoch is None
    assert cfg.mask.rgb_map == {(0, 0, 0): 0, (0, 255, 0): 1, (255, 0, 0): 2}
    assert all(type(k) is tuple for k in cfg.mask.rgb_map)
    assert cfg.segmentation.blursize == (3, 3)
    assert cfg.multiclass is True
    assert isinstance(cfg, Config)


def test_defaults_when_keys_are_absent(tmp_path):
    for text in ("", "; only a comment\n", "[model]\n", "[unknown]\nx = 1\n"):
        cfg = load_config(write(tmp_path / str(abs(hash(text))), text, dedent=False))
        m = cfg.model
        assert (m.model, m.generator, m.image_width, m.image_height, m.image_channels) == \
            ("TensorflowUNet", False, 512, 512, 3)
        assert (m.num_classes, m.base_filters, m.base_kernels, m.num_layers, m.dilation) == \
            (1, 16, (3, 3), 6, (1, 1))
        assert (m.dropout_rate, m.learning_rate, m.clipvalue, m.loss, m.metrics) == \
            (0.05, 0.0001, 0.2, "bce_dice_loss", ["dice_coef"])
        assert (m.activation, m.final_activation, m.seed) == ("relu", None, 137)
        t = cfg.train
        assert (t.epochs, t.batch_size, t.patience, t.metrics) == (100, 4, 10, ["dice_coef", "val_dice_coef"])
        assert t.image_datapath is None and t.mask_datapath is None
        assert cfg.eval.image_datapath is None and cfg.test.image_datapath is None
        assert cfg.image.color_converter is None and cfg.image.gamma == 0.0
        assert cfg.dataset.resize_interpolation == "INTER_LINEAR"
        assert (cfg.mask.threshold, cfg.mask.rgb_map, cfg.mask.blur_size) == (128, None, (3, 3))
        assert cfg.generator.angles == [90.0, 180.0, 270.0]
        assert cfg.tiledinfer.overlapping == 64 and cfg.tiledinfer.blend == "cosine"
        assert cfg.segmentation.black == (0, 0, 0) and cfg.segmentation.white == (255, 255, 255)
        assert cfg.seed == 137 and cfg.multiclass is False
        assert cfg.warnings == []


def test_default_lists_are_not_shared(tmp_path):
    a = load_config(write(tmp_path / "a", "[model]\n"))
    a.model.metrics.append("x")
    a.generator.angles.clear()
    b = load_config(write(tmp_path / "b", "[model]\n"))
    assert b.model.metrics == ["dice_coef"]
    assert b.generator.angles == [90.0, 180.0, 270.0]


def test_train_seed_overrides_model_seed(tmp_path):
    cfg = load_config(write(tmp_path, "[model]\nseed = 7\n[train]\nseed = 11\n"))
    assert cfg.seed == 11
    cfg = load_config(write(tmp_path / "b", "[model]\nseed = 7\n"))
    assert cfg.seed == 7


def test_class_colors_and_names_binary(tmp_path):
    cfg = load_config(write(tmp_path, '[segmentation]\nblack = "black"\nwhite = "green"\n'))
    assert class_colors(cfg) == [(0, 0, 0), (0, 255, 0)]
    assert class_names(cfg) == ["background", "foreground"]
    cfg = load_config(write(tmp_path / "b", '[segmentation]\nblack = (1, 2, 3)\nwhite = "#FF8000"\n'))
    assert class_colors(cfg) == [(1, 2, 3), (255, 128, 0)]


def test_binary_class_names_match_class_colors(tmp_path):
    cfg = load_config(write(tmp_path, '[mask]\nclass_names = ["background", "nucleus"]\n'))
    assert class_names(cfg) == ["background", "nucleus"]
    assert len(class_names(cfg)) == len(class_colors(cfg))


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope" / CONFIG_FILENAME
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(missing) in str(info.value) and "\n" not in str(info.value)
    assert info.value.exit_code == 2


def test_folder_argument_means_its_config_file(tmp_path):
    write(tmp_path / "proj", SMALL_MODEL, dedent=False)
    cfg = load_config(tmp_path / "proj")
    assert cfg.path == tmp_path / "proj" / CONFIG_FILENAME
    assert cfg.model.num_layers == 3
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "empty" / CONFIG_FILENAME))):
        (tmp_path / "empty").mkdir()
        load_config(tmp_path / "empty")


@pytest.mark.parametrize("data", [
    bytes(range(256)) * 4,
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200),
    b"[model]\nnum_layers = 3\n\xff\xfe garbage\n",
])
def test_binary_file_is_config_error(tmp_path, data):
    path = tmp_path / CONFIG_FILENAME
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_nul_bytes_file_is_config_error(tmp_path):
    """Valid UTF-8 but not a config (zeros): still a ConfigError, not a crash."""
    path = tmp_path / CONFIG_FILENAME
    path.write_bytes(bytes(64))
    with pytest.raises(ConfigError):
        load_config(path)


def test_line_outside_any_section(tmp_path):
    path = write(tmp_path, "; header\n\nepochs = 5\n[train]\nbatch_size = 2\n", dedent=False)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert f"{path}:3:" in msg and "epochs" in msg and "\n" not in msg


@pytest.mark.parametrize("text, line", [
    ("[model]\nnum_layers = 3\n[train\nepochs = 2\n", 3),    # unclosed header
    ("[model]\nnum_layers 3\n", 2),                         # no '='
])
def test_malformed_lines(tmp_path, text, line):
    path = write(tmp_path, text, dedent=False)
    with pytest.raises(ConfigError, match=re.escape(f"{path}:{line}:")):
        load_config(path)


def test_multiline_values(tmp_path, caplog):
    path = write(tmp_path, """\
        [model]
        num_classes = 4
        num_layers  = 3
        image_width = 64
        image_height = 64
        [mask]
        rgb_map = {(0, 0, 0): 0,        ; background
                   (0, 255, 0): 1,      ; class 1
        ; a full-line comment inside the value

                   (255, 0, 0): 2,
            (0, 0, 255): 3}
        class_names = ["background",
            "a", "b",
            "c"]
        threshold = 10
        [generator]
        angles = [
            90,
            270,
            ]
        """)
    cfg = load_config(path)
    assert cfg.mask.rgb_map == {(0, 0, 0): 0, (0, 255, 0): 1, (255, 0, 0): 2, (0, 0, 255): 3}
    assert cfg.mask.class_names == ["background", "a", "b", "c"]
    assert cfg.mask.threshold == 10
    assert cfg.generator.angles == [90.0, 270.0]
    assert class_colors(cfg) == [(0, 0, 0), (0, 255, 0), (255, 0, 0), (0, 0, 255)]
    assert class_names(cfg) == ["background", "a", "b", "c"]
    assert flexunet_warnings(caplog) == []


# ---------------------------------------------------------------------------------------------
# 7. realistic seed configs


SEED_CONFIG = """\
; train_eval_infer.config
; 2024/08/16 (C) antillia.com
[model]
model          = "TensorflowUNet"
generator      = True
image_width    = 512
image_height   = 512
image_channels = 3
input_normalize = False
normalization  = False
num_classes    = 1
base_filters   = 16
base_kernels   = (7,7)
num_layers     = 8
dropout_rate   = 0.05
learning_rate  = 0.0001
clipvalue      = 0.5
dilation       = (1,1)
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

[segmentation]
colorize      = True
black         = "black"
white         = "green"
blursize      = None

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


def test_realistic_seed_config(tmp_path, caplog, monkeypatch):
    project = tmp_path / "projects" / "TensorflowSlightlyFlexibleUNet" / "Tiled-Cell"
    path = write(project, SEED_CONFIG, dedent=False)
    text = path.read_text()
    assert "[test] \n" in text and "[infer] \n" in text and "[tiledinfer] \n" in text
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path)
    assert cfg.warnings == [] and flexunet_warnings(caplog) == []

    m = cfg.model
    assert m.model == "TensorflowUNet" and m.generator is True
    assert (m.image_width, m.image_height, m.image_channels, m.num_classes) == (512, 512, 3, 1)
    assert m.input_normalize is False and m.normalization is False
    assert (m.base_filters, m.base_kernels, m.num_layers, m.dilation) == (16, (7, 7), 8, (1, 1))
    assert (m.dropout_rate, m.learning_rate, m.clipvalue) == (0.05, 0.0001, 0.5)
    assert m.loss == "bce_dice_loss" and m.metrics == ["dice_coef"] and m.show_summary is False

    t = cfg.train
    assert (t.epochs, t.batch_size, t.steps_per_epoch, t.validation_steps, t.patience) == (100, 2, 240, 80, 10)
    assert t.metrics == ["dice_coef", "val_dice_coef"]
    assert t.model_dir == project / "models" and t.eval_dir == project / "eval"
    dataset = tmp_path / "dataset" / "Tiled-Cell"
    assert t.image_datapath == dataset / "train" / "images"
    assert t.mask_datapath == dataset / "train" / "masks"
    assert t.epoch_change_infer is True and t.epoch_change_tiledinfer is True
    assert t.epoch_change_infer_dir == project / "epoch_change_infer"
    assert t.epoch_change_tiledinfer_dir == project / "epoch_change_tiledinfer"
    assert (t.num_infer_images, t.create_backup, t.learning_rate_reducer) == (1, False, True)
    assert (t.reducer_factor, t.reducer_patience, t.save_weights_only) == (0.3, 4, True)

    assert cfg.eval.image_datapath == dataset / "valid" / "images"
    assert cfg.eval.mask_datapath == dataset / "valid" / "masks"
    assert cfg.test.image_datapath == dataset / "test" / "images"
    assert cfg.test.mask_datapath == dataset / "test" / "masks"
    assert cfg.infer.images_dir == project / "mini_test" / "images"
    assert cfg.infer.output_dir == project / "mini_test_output"
    assert cfg.tiledinfer.overlapping == 64
    assert cfg.tiledinfer.images_dir == project / "mini_test" / "images"
    assert cfg.tiledinfer.output_dir == project / "mini_test_output_tiled"

    s = cfg.segmentation
    assert s.colorize is True and s.black == (0, 0, 0) and s.white == (0, 255, 0) and s.blursize is None
    assert cfg.image.color_converter == "COLOR_BGR2HSV_FULL" and cfg.image.gamma == 0.0
    mk = cfg.mask
    assert (mk.blur, mk.blur_size, mk.binarize, mk.threshold, mk.rgb_map) == (False, (3, 3), False, 80, None)
    g = cfg.generator
    assert (g.augmentation, g.hflip, g.vflip, g.rotation, g.angles) == (True, True, True, True, [90.0, 180.0, 270.0])
    # keys the project does not use are kept raw
    assert cfg.raw["generator"]["sigmoids"] == [(1.1, 8), (3.0, 4)]
    assert cfg.raw["generator"]["shrinks"] == [0.8] and cfg.raw["generator"]["debug"] is True
    assert cfg.raw["train"]["save_weights_only"] is True
    assert class_colors(cfg) == [(0, 0, 0), (0, 255, 0)]
    assert class_names(cfg) == ["background", "foreground"]
    assert cfg.multiclass is False

    # the same seed with data_root: dataset inputs move, outputs stay
    root = tmp_path / "shared" / "data"
    root.mkdir(parents=True)
    cfg = load_config(path, data_root=root)
    assert cfg.train.image_datapath == root / "Tiled-Cell" / "train" / "images"
    assert cfg.eval.mask_datapath == root / "Tiled-Cell" / "valid" / "masks"
    assert cfg.test.image_datapath == root / "Tiled-Cell" / "test" / "images"
    assert cfg.train.model_dir == project / "models"
    assert cfg.train.eval_dir == project / "eval"
    assert cfg.tiledinfer.output_dir == project / "mini_test_output_tiled"


def test_realistic_seed_with_shipped_typos(tmp_path, caplog):
    text = SEED_CONFIG.replace("generator      = True", "generator      = Flase") \
                      .replace("angles   = [90, 180, 270]", "angles   = [90. 180, 270,]")
    path = write(tmp_path, text, dedent=False)
    cfg = load_config(path)
    lines = text.splitlines()
    gen_line = lines.index("generator      = Flase") + 1
    ang_line = lines.index("angles   = [90. 180, 270,]") + 1
    assert cfg.model.generator is False and cfg.generator.angles == [90.0, 180.0, 270.0]
    msgs = flexunet_warnings(caplog)
    assert len(msgs) == 2
    assert any(f"{path}:{gen_line}: [model] generator" in m for m in msgs)
    assert any(f"{path}:{ang_line}: [generator] angles" in m for m in msgs)
    assert cfg.model.num_layers == 8   # the rest of the file is read normally


LIZARD_CONFIG = """\
; train_eval_infer.config
; Lizard: 6 classes, categorised colour masks
[model]
model          = "TensorFlowFlexUNet"
generator      = True
image_width    = 512
image_height   = 512
image_channels = 3
input_normalize = True
normalization  = False
num_classes    = 6
base_filters   = 16
base_kernels   = (9,9)
num_layers     = 8
dropout_rate   = 0.05
learning_rate  = 0.0001
clipvalue      = 0.5
dilation       = (1,1)
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

[segmentation]
colorize      = True
black         = "black"
white         = "green"
blursize      = None

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


def test_lizard_multiclass_seed_config(tmp_path, caplog):
    project = tmp_path / "projects" / "TensorflowFlexUNet" / "Lizard"
    path = write(project, LIZARD_CONFIG, dedent=False)
    cfg = load_config(path)
    assert cfg.warnings == [] and flexunet_warnings(caplog) == []
    assert cfg.model.num_classes == 6 and cfg.multiclass is True
    assert cfg.model.base_kernels == (9, 9) and cfg.model.model == "TensorFlowFlexUNet"
    assert cfg.model.loss == "categorical_crossentropy"
    colors = [(0, 0, 0), (0, 255, 0), (255, 255, 0), (0, 255, 255), (255, 0, 0), (0, 0, 255)]
    assert cfg.mask.rgb_map == {c: i for i, c in enumerate(colors)}
    assert class_colors(cfg) == colors
    assert class_names(cfg) == ["background", "class_1", "class_2", "class_3", "class_4", "class_5"]
    dataset = tmp_path / "dataset" / "Lizard"
    assert cfg.train.image_datapath == dataset / "train" / "images"
    assert cfg.train.exclude_files == ["glas_54.png", "crag_33"]
    assert cfg.eval.image_datapath == dataset / "valid" / "images"     # from [valid] images_dir
    assert cfg.eval.mask_datapath == dataset / "valid" / "masks"
    assert cfg.test.image_datapath == dataset / "test" / "images"
    assert cfg.test.files == ["glas_54.png"]
    assert cfg.image.color_converter is None
    assert cfg.dataset.resize_interpolation == "INTER_NEAREST"


def test_lizard_with_class_names_and_shuffled_rgb_map(tmp_path):
    text = LIZARD_CONFIG.replace(
        "rgb_map = {(0,0,0):0, (0,255,0):1, (255,255,0):2, (0,255,255):3, (255,0,0):4, (0,0,255):5}",
        "rgb_map = {(0,0,255):5, (0,0,0):0, (255,0,0):4, (0,255,0):1, (0,255,255):3, (255,255,0):2}\n"
        'class_names = ["background", "neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil"]')
    cfg = load_config(write(tmp_path, text, dedent=False))
    assert class_colors(cfg) == [(0, 0, 0), (0, 255, 0), (255, 255, 0), (0, 255, 255), (255, 0, 0), (0, 0, 255)]
    assert class_names(cfg)[1] == "neutrophil" and len(class_names(cfg)) == 6
