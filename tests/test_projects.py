"""The projects' seed-format configs: seed hyperparameters, held-out splits, real data through --data-root."""
from __future__ import annotations

from pathlib import Path

import pytest

from flexunet.core.config import load_config

REPO = Path(__file__).resolve().parents[1]
PROJECTS = REPO / "projects"
DATA = REPO.parent / "shared" / "data"
NAMES = ["IHC", "Clustered-Cervical-Cell", "TNBC", "Lizard", "Tiled-MultipleMyeloma"]

# ../shared/data/DATA.md: the seeds' published settings
SEED = {
    "IHC": dict(size=512, kernels=(11, 11), layers=8, dilation=(4, 4), loss="bce_dice_loss"),
    "Clustered-Cervical-Cell": dict(size=512, kernels=(9, 9), layers=8, dilation=(3, 3), loss="bce_dice_loss"),
    "TNBC": dict(size=640, kernels=(5, 5), layers=7, dilation=(1, 1), loss="bce_dice_loss"),
    "Lizard": dict(size=512, kernels=(9, 9), layers=8, dilation=(1, 1), loss="categorical_crossentropy"),
    "Tiled-MultipleMyeloma": dict(size=512, kernels=(9, 9), layers=8, dilation=(1, 1), loss="bce_dice_loss"),
}


@pytest.mark.parametrize("name", NAMES)
def test_seed_settings_kept(name):
    cfg = load_config(PROJECTS / name / "train_eval_infer.config")
    s, m = SEED[name], cfg.model
    assert (m.image_height, m.image_width) == (s["size"], s["size"])
    assert (m.base_filters, m.base_kernels, m.num_layers, m.dilation, m.loss) == \
        (16, s["kernels"], s["layers"], s["dilation"], s["loss"])
    assert m.num_classes == (6 if name == "Lizard" else 1)
    assert not cfg.warnings


@pytest.mark.parametrize("variant", ["", "reduced"])
@pytest.mark.parametrize("name", NAMES)
def test_real_splits_are_held_out(name, variant):
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is absent: the real sample data sits beside the repository as ../shared/data")
    from flexunet.train.dataset import split_pairs

    cfg = load_config(PROJECTS / name / variant / "train_eval_infer.config", data_root=DATA)
    train, valid, test = (split_pairs(cfg, s) for s in ("train", "eval", "test"))
    names = [{p.image.name for p in split} for split in (train, valid, test)]
    assert all(names) and not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    assert len(train) + len(valid) + len(test) == len(list((DATA / name / "images").iterdir()))


def test_multiple_myeloma_slides_become_model_tiles():
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is absent: the real sample data sits beside the repository as ../shared/data")
    from flexunet.train.dataset import SampleMaker, split_pairs

    cfg = load_config(PROJECTS / "Tiled-MultipleMyeloma" / "reduced" / "train_eval_infer.config", data_root=DATA)
    maker = SampleMaker(cfg)
    pair = split_pairs(cfg, "train")[0]
    samples = list(maker.samples(pair))
    assert len(samples) == maker.count(pair) == 20  # 2560x1920 -> 5 x 4 tiles of 512, never resized
    assert all(x.shape == (512, 512, 3) and y.shape == (512, 512, 1) for x, y in samples)
    assert 0.01 < sum(float(y.mean()) for _, y in samples) / len(samples) < 0.5
