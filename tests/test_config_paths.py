"""Where a config's paths point (flexunet.core.config_paths through load_config): relative to the
config file's folder, never the working directory; with a data root, the dataset inputs are re-rooted
under it and the outputs stay beside the config."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flexunet.core.config import CONFIG_FILENAME, load_config, reroot
from flexunet.core.errors import ConfigError
from seed_configs import SEED_CONFIG, SMALL_MODEL, write


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


def test_realistic_seed_config_with_data_root(tmp_path):
    """The seed config with a data root: dataset inputs move under it, outputs stay."""
    project = tmp_path / "projects" / "TensorflowSlightlyFlexibleUNet" / "Tiled-Cell"
    path = write(project, SEED_CONFIG, dedent=False)
    root = tmp_path / "shared" / "data"
    root.mkdir(parents=True)
    cfg = load_config(path, data_root=root)
    assert cfg.train.image_datapath == root / "Tiled-Cell" / "train" / "images"
    assert cfg.eval.mask_datapath == root / "Tiled-Cell" / "valid" / "masks"
    assert cfg.test.image_datapath == root / "Tiled-Cell" / "test" / "images"
    assert cfg.train.model_dir == project / "models"
    assert cfg.train.eval_dir == project / "eval"
    assert cfg.tiledinfer.output_dir == project / "mini_test_output_tiled"
