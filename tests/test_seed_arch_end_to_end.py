"""One of the seed API's non-UNet architectures (TensorflowSharpUNet) through the whole chain on a real
seed dataset sample: train from a seed-style config, evaluate, export to ONNX (verified against Keras),
segment the held-out images with the export, and beat the trivial all-foreground mask on them.

Small on purpose (128x128 inputs, a few filters, a few epochs on the IHC sample): it shows the chain
works for an architecture other than the plain UNet, not what the architecture can reach.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from flexunet.cli import cli
from flexunet.core.metrics import dice

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TEST_FILES = ["ROI_338_2.jpg", "ROI_347_2.jpg", "ROI_356_2.jpg", "ROI_366_2.jpg"]  # as projects/IHC/reduced
VALID_FILES = ["ROI_342_1.jpg", "ROI_351_2.jpg", "ROI_361_1.jpg"]

CONFIG = f"""; IHC sample, seed-style config for the seed API's SharpUNet (tiny)
[model]
model          = "TensorflowSharpUNet"
image_width    = 128
image_height   = 128
image_channels = 3
num_classes    = 1
filters        = [8, 16, 32]
max_filter     = 64
base_ksize     = (3, 3)
dilation       = (1, 1)
learning_rate  = 0.003
loss           = "bce_dice_loss"
metrics        = ["dice_coef"]

[train]
epochs         = 12
steps_per_epoch = 6
batch_size     = 4
patience       = 12
model_dir      = "./models"
eval_dir       = "./eval"
image_datapath = "./IHC/images/"
mask_datapath  = "./IHC/masks/"
exclude_files  = {TEST_FILES + VALID_FILES!r}
learning_rate_reducer = False

[eval]
image_datapath = "./IHC/images/"
mask_datapath  = "./IHC/masks/"
files          = {VALID_FILES!r}

[test]
image_datapath = "./IHC/images/"
mask_datapath  = "./IHC/masks/"
files          = {TEST_FILES!r}

[dataset]
image_normalize = True

[mask]
binarize  = True
threshold = 128
"""


def _run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result


def test_sharp_unet_trains_exports_and_segments_a_real_sample(tmp_path):
    if not (DATA / "IHC").is_dir():
        pytest.skip(f"{DATA / 'IHC'} is absent: the real sample data sits beside the repository as ../shared/data")
    project = tmp_path / "ihc-sharp"
    project.mkdir()
    (project / "train_eval_infer.config").write_text(CONFIG)

    _run("train", project, "--data-root", DATA)
    model = project / "models" / "best_model.keras"
    assert model.is_file()
    _run("evaluate", project, "--data-root", DATA)
    assert (project / "evaluation.csv").is_file()

    _run("export", model, "-o", tmp_path / "export", "--config", project / "train_eval_infer.config")
    report = json.loads((tmp_path / "export" / "export_report.json").read_text())
    assert report["artifacts"]["model.onnx"]["vs_keras"]["dice"] >= 0.9999  # verified against Keras

    images = tmp_path / "held_out"
    images.mkdir()
    for name in TEST_FILES:
        (images / name).write_bytes((DATA / "IHC" / "images" / name).read_bytes())
    _run("infer", tmp_path / "export" / "model.onnx", images, "-o", tmp_path / "masks")

    ours, trivial = [], []
    for name in TEST_FILES:
        truth = cv2.imread(str(DATA / "IHC" / "masks" / name), cv2.IMREAD_GRAYSCALE) >= 128
        found = sorted((tmp_path / "masks").glob(Path(name).stem + ".*"))
        assert found, f"no mask written for {name}"
        mask = cv2.imread(str(found[0]), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == truth.shape
        ours.append(dice(mask > 127, truth))
        trivial.append(dice(np.ones_like(truth), truth))
    print(f"SharpUNet on the IHC sample: held-out mask dice {np.mean(ours):.3f} "
          f"vs all-foreground {np.mean(trivial):.3f}")
    assert np.mean(ours) > np.mean(trivial) + 0.05, (ours, trivial)
