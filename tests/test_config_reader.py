"""Reading a config file as data (flexunet.core.config_reader through load_config): the INI structure,
comments, literals and allow-listed symbols; nothing is ever executed; an unparsable value warns
once with its file, line, section and key and takes the default; structural faults and unreadable
files are one-line ConfigErrors with their position."""
from __future__ import annotations

import re
import textwrap

import pytest

from flexunet.core.config import CONFIG_FILENAME, class_colors, class_names, load_config
from flexunet.core.errors import ConfigError
from seed_configs import (  # noqa: F401  (capture_flexunet_warnings: autouse fixture)
    SEED_CONFIG, SMALL_MODEL, capture_flexunet_warnings, flexunet_warnings, write,
)

# Appended to configs about other sections: a config must describe its network (line numbers kept).
A_MODEL = "[model]\nnum_layers = 3\n"


# ---------------------------------------------------------------------------------------------
# broken values: one warning (file, line, section, key), default used, listed in Config.warnings


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


# ---------------------------------------------------------------------------------------------
# structure: header spacing and case, comments, separators, encodings, multi-line values


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
    path = write(tmp_path, "[image]\ncolor_converter = cv2.COLOR_BGR2HSV  # hsv\n" + A_MODEL, dedent=False)
    assert load_config(path).image.color_converter == "COLOR_BGR2HSV"


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
# symbolic names through an allow-list; anything else is never executed


@pytest.mark.parametrize("value", ["cv2.COLOR_BGR2HSV_FULL", '"cv2.COLOR_BGR2HSV_FULL"',
                                   "'cv2.COLOR_BGR2HSV_FULL'", "cv2.COLOR_BGR2HSV_FULL ; comment",
                                   '"COLOR_BGR2HSV_FULL"'])
def test_color_converter_symbol(tmp_path, caplog, value):
    path = write(tmp_path, f"[image]\ncolor_converter = {value}\n" + A_MODEL, dedent=False)
    cfg = load_config(path)
    assert cfg.image.color_converter == "COLOR_BGR2HSV_FULL"
    assert flexunet_warnings(caplog) == []


@pytest.mark.parametrize("value, expected", [
    ('"cv2.INTER_CUBIC"', "INTER_CUBIC"), ("cv2.INTER_CUBIC", "INTER_CUBIC"),
    ("cv2.INTER_NEAREST", "INTER_NEAREST"), ('"cv2.INTER_AREA"', "INTER_AREA"),
])
def test_resize_interpolation_symbol(tmp_path, value, expected):
    path = write(tmp_path, f"[dataset]\nresize_interpolation = {value}\n" + A_MODEL, dedent=False)
    assert load_config(path).dataset.resize_interpolation == expected


def test_color_converter_none_and_default(tmp_path):
    assert load_config(write(tmp_path / "a", "[image]\ncolor_converter = None\n" + A_MODEL)).image.color_converter is None
    assert load_config(write(tmp_path / "b", "[image]\ngamma = 0\n" + A_MODEL)).image.color_converter is None


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
    path = write(tmp_path / "cfg", f"[{section}]\n{key} = {template.format(m=marker)}\n" + A_MODEL, dedent=False)
    cfg = load_config(path)
    assert not marker.exists()
    assert getattr(getattr(cfg, section), attr) == default
    (msg,) = flexunet_warnings(caplog)
    assert f"[{section}] {key}" in msg and f"{path}:2:" in msg


def test_unused_key_expression_is_never_executed(tmp_path, caplog):
    marker = tmp_path / "pwned"
    path = write(tmp_path / "cfg",
                 f"[generator]\nshears = __import__('pathlib').Path(r'{marker}').touch()\n"
                 f"[whatever]\nx = __import__('os').system('touch {marker}')\n" + A_MODEL, dedent=False)
    load_config(path)
    assert not marker.exists()


def test_power_expression_is_not_computed(tmp_path, caplog):
    path = write(tmp_path, "[train]\nepochs = 2**10\nbatch_size = 2*4\n" + A_MODEL, dedent=False)
    cfg = load_config(path)
    assert cfg.train.epochs == 100 and cfg.train.batch_size == 4
    msgs = flexunet_warnings(caplog)
    assert len(msgs) == 2
    assert any("[train] epochs" in m and "2**10" in m for m in msgs)


def test_pathological_literals_do_not_crash(tmp_path, caplog):
    path = write(tmp_path, "[train]\nepochs = " + "(" * 300 + "1" + ")" * 300 + "\n"
                 "batch_size = " + "9" * 5000 + "\n" + A_MODEL, dedent=False)
    cfg = load_config(path)
    assert cfg.train.epochs == 100 and cfg.train.batch_size == 4
    assert len(flexunet_warnings(caplog)) == 2


# ---------------------------------------------------------------------------------------------
# unreadable files and structural faults


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
