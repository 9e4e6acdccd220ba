"""The config schema (flexunet.core.config_schema through load_config): typed values, ranges and
one-line errors, defaults, the seeds' two spellings of sections and keys, checks across keys, and the
class names and colours a config implies; realistic seed configs end to end."""
from __future__ import annotations

import textwrap

import pytest

import flexunet.core.config as config
from flexunet.core.config import Config, class_colors, class_names, load_config
from flexunet.core.errors import EXIT_USAGE, ConfigError, FlexunetError
from seed_configs import (  # noqa: F401  (capture_flexunet_warnings: autouse fixture)
    BAD_VALUES, LIZARD_CONFIG, SEED_CONFIG, SMALL_MODEL, capture_flexunet_warnings,
    flexunet_warnings, write,
)


# ---------------------------------------------------------------------------------------------
# a wrong type or range is a one-line ConfigError naming file, section and key


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


def test_public_face_exports_what_callers_import(tmp_path):
    """flexunet.core.config is the one import callers use: every name it lists resolves, and the
    ConfigError it offers is the one load_config raises."""
    for name in config.__all__:
        assert getattr(config, name) is not None, name
    with pytest.raises(config.ConfigError):
        load_config(write(tmp_path, SMALL_MODEL + "[train]\nepochs = 0\n", dedent=False))


def test_multiclass_without_rgb_map_message_mentions_num_classes(tmp_path):
    path = write(tmp_path, SMALL_MODEL + "num_classes = 6\n", dedent=False)
    with pytest.raises(ConfigError, match=r"num_classes = 6"):
        load_config(path)


def test_width_error_explains_the_multiple(tmp_path):
    path = write(tmp_path, "[model]\nnum_layers = 8\nimage_width = 500\nimage_height = 512\n", dedent=False)
    with pytest.raises(ConfigError, match=r"500 is not a multiple of .*128"):
        load_config(path)


# ---------------------------------------------------------------------------------------------
# both spellings of sections and keys


@pytest.mark.parametrize("section", ["valid", "eval"])
def test_valid_or_eval_section_is_the_eval_split(tmp_path, section):
    path = write(tmp_path, SMALL_MODEL + textwrap.dedent(f"""\
        [{section}]
        image_datapath = "./data/valid/images"
        mask_datapath  = "./data/valid/masks"
        """), dedent=False)
    cfg = load_config(path)
    assert cfg.eval.image_datapath == tmp_path / "data" / "valid" / "images"
    assert cfg.eval.mask_datapath == tmp_path / "data" / "valid" / "masks"


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


# ---------------------------------------------------------------------------------------------
# the typed object and its defaults


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
    """Every key a config leaves out takes its default (a config must still describe its network:
    an empty one, or one without [model], is refused; see test_faults_config)."""
    for text in ('[model]\nmodel = "TensorflowUNet"\n', '[unknown]\nx = 1\n[model]\n; the seed model\nseed = 137\n'):
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
    a = load_config(write(tmp_path / "a", "[model]\nnum_layers = 6\n"))
    a.model.metrics.append("x")
    a.generator.angles.clear()
    b = load_config(write(tmp_path / "b", "[model]\nnum_layers = 6\n"))
    assert b.model.metrics == ["dice_coef"]
    assert b.generator.angles == [90.0, 180.0, 270.0]


def test_train_seed_overrides_model_seed(tmp_path):
    cfg = load_config(write(tmp_path, "[model]\nseed = 7\n[train]\nseed = 11\n"))
    assert cfg.seed == 11
    cfg = load_config(write(tmp_path / "b", "[model]\nseed = 7\n"))
    assert cfg.seed == 7


def test_class_colors_and_names_binary(tmp_path):
    cfg = load_config(write(tmp_path, SMALL_MODEL + '[segmentation]\nblack = "black"\nwhite = "green"\n'))
    assert class_colors(cfg) == [(0, 0, 0), (0, 255, 0)]
    assert class_names(cfg) == ["background", "foreground"]
    cfg = load_config(write(tmp_path / "b", SMALL_MODEL + '[segmentation]\nblack = (1, 2, 3)\nwhite = "#FF8000"\n'))
    assert class_colors(cfg) == [(1, 2, 3), (255, 128, 0)]


def test_binary_class_names_match_class_colors(tmp_path):
    cfg = load_config(write(tmp_path, SMALL_MODEL + '[mask]\nclass_names = ["background", "nucleus"]\n'))
    assert class_names(cfg) == ["background", "nucleus"]
    assert len(class_names(cfg)) == len(class_colors(cfg))


# ---------------------------------------------------------------------------------------------
# realistic seed configs


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
