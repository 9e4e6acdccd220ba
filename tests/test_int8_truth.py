"""The INT8 search judged by accuracy retention when its held-out calibration tiles have masks:
mask tiles cut with the same draw, flips and rotations as their image tiles and held out with them;
``flexunet export --calibration-masks`` reports the rule that decided; a mask folder that does not
match the images is refused in one line; project results record the rule, retention and the
OpenVINO paths (or "not measured")."""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from flexunet.cli import cli
from flexunet.core.config import load_config
from flexunet.core.errors import EXIT_USAGE
from flexunet.core.imageio import write_image
from flexunet.core.modelinfo import ModelInfo
from flexunet.export import tiles as T

pytestmark = pytest.mark.usefixtures("isolate_cli")

REPO = Path(__file__).resolve().parents[1]
CONFIG = """
[model]
image_width    = 64
image_height   = 64
num_classes    = 1
base_filters   = 4
base_kernels   = (3,3)
num_layers     = 3
dropout_rate   = 0.0

[train]
image_datapath = "./images"
mask_datapath  = "./masks"
"""


def _gray_images(folder: Path, masks: Path, count: int, size: tuple[int, int], seed: int = 0) -> None:
    """Smooth random gray images (three equal channels) and their masks: foreground where the gray
    value is 128 or more, so a mask tile can be told from its image tile."""
    folder.mkdir(parents=True)
    masks.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        gray = cv2.GaussianBlur(rng.integers(0, 256, size, dtype=np.uint8), (9, 9), 3)
        gray = cv2.normalize(gray, None, 0, 255, cv2.NORM_MINMAX)
        write_image(folder / f"{i:03d}.png", np.repeat(gray[..., None], 3, axis=2))
        write_image(masks / f"{i:03d}.png", np.where(gray >= 128, 255, 0).astype(np.uint8))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("truth")
    (root / "train_eval_infer.config").write_text(CONFIG)
    _gray_images(root / "images", root / "masks", 3, (128, 128))
    return root


def _foreground_from_image(tiles: np.ndarray, info: ModelInfo) -> np.ndarray:
    """The labels the fixture's masks give each pre-processed tile (gray >= 128)."""
    cut = info.preprocess(np.full((1, 1, 3), 128, np.uint8))[0, 0, 0]
    return (tiles[..., 0] >= cut - 1e-6).astype(np.uint8)


def test_mask_tiles_follow_their_image_tiles_through_the_draw_views_and_hold_out(project):
    info = ModelInfo.from_config(load_config(project / "train_eval_infer.config"))
    # 3 images of 2x2 tiles: 40 tiles need the flipped and rotated views
    images, truth = T.labelled_calibration_tiles(project / "images", project / "masks", info, 40)
    assert images.shape == (40, 64, 64, 3) and truth.shape == (40, 64, 64) and truth.dtype == np.uint8
    assert np.array_equal(images, T.calibration_tiles(project / "images", info, 40))  # the same draw
    assert np.array_equal(truth, _foreground_from_image(images, info))
    assert 0.2 < truth.mean() < 0.8
    split = T.split_calibration(images, 16, keep=24, truth=truth)
    kept, held = T.hold_out(images, 16, keep=24)
    assert np.array_equal(split.calib, kept) and np.array_equal(split.check, held)
    assert split.check_truth.shape == (16, 64, 64)
    assert np.array_equal(split.check_truth, _foreground_from_image(split.check, info))


def _export(*args):
    return CliRunner().invoke(cli, ["export", *[str(a) for a in args]], catch_exceptions=False)


@pytest.mark.parametrize("problem", ["unnamed", "size", "missing"])
def test_a_mask_folder_that_does_not_match_the_images_is_refused_in_one_line(project, tmp_path, problem):
    masks = tmp_path / "masks"
    masks.mkdir()
    for p in sorted((project / "masks").iterdir()):
        if problem == "unnamed":
            (masks / f"other_{p.name}").write_bytes(p.read_bytes())
        elif problem == "size":
            write_image(masks / p.name, np.zeros((64, 128), np.uint8))
    if problem == "missing":
        masks = tmp_path / "no-such-folder"
    model = tmp_path / "best_model.keras"
    model.write_bytes(b"PK")  # never read: the options are refused first
    out = tmp_path / "out"
    r = _export(model, "-o", out, "--config", project / "train_eval_infer.config", "--int8",
                "--calibration-images", project / "images", "--calibration-masks", masks)
    assert r.exit_code == EXIT_USAGE, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(masks) in lines[0], r.output
    assert {"unnamed": "no mask for 3 of the 3", "size": "mask is 128x64",
            "missing": "does not exist"}[problem] in lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_export_with_calibration_masks_searches_by_retention_and_says_so(project, tmp_path):
    """An untrained tiny UNet, the calibration masks its own masks (so FP32 scores 1.0 against them
    on tiles cut where the masks were, and retention is defined): the search and the report name
    the retention rule."""
    from flexunet.architectures import build
    from flexunet.export.verify import keras_predict

    cfg = load_config(project / "train_eval_infer.config")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "train_eval_infer.config").write_text(CONFIG)
    model = build(cfg)
    model.save(folder / "best_model.keras")
    info = ModelInfo.from_config(cfg)
    masks = tmp_path / "own_masks"
    _gray_images(tmp_path / "images", tmp_path / "gray_masks", 5, (128, 128), seed=1)  # 20 tiles: no views
    masks.mkdir()
    for p in sorted((tmp_path / "images").iterdir()):  # 128x128: the model's masks of its four 64x64 tiles
        x = info.preprocess(cv2.imread(str(p))).reshape(2, 64, 2, 64, 3).transpose(0, 2, 1, 3, 4)
        probs = keras_predict(model, np.ascontiguousarray(x.reshape(4, 64, 64, 3), dtype=np.float32))
        whole = probs[..., 0].reshape(2, 2, 64, 64).transpose(0, 2, 1, 3).reshape(128, 128)
        write_image(masks / p.name, np.where(whole > info.threshold, 255, 0).astype(np.uint8))
    out = tmp_path / "out"
    r = _export(folder / "best_model.keras", "-o", out, "--config", project / "train_eval_infer.config", "--int8",
                "--calibration-images", tmp_path / "images", "--calibration-masks", masks,
                "--calibration-count", "1", "--int8-min-dice", "0", "--int8-max-float", "1")
    assert r.exit_code == 0, r.output
    entry = json.loads((out / "export_report.json").read_text())["artifacts"]["model.int8.onnx"]
    tuning = entry["tuning"]
    assert entry["rule"] == tuning["rule"] == "retention"
    assert entry["calibration"]["masks"] == str(masks) and entry["calibration"]["check_tiles_with_truth"] == 16
    assert tuning["check_tiles"] == 16 and tuning["reference_dice_vs_truth"] > 0.99
    assert 0 < tuning["retention"] and tuning["passed"] == (tuning["retention"] >= tuning["min_retention"])
    assert "verdict by accuracy retention" in r.output


# -- project results ---------------------------------------------------------------------------------
def _committed(name: str = "IHC") -> dict:
    """A committed results.json as a run before the OpenVINO paths wrote it (without them)."""
    r = json.loads((REPO / "projects" / name / "reduced" / "results" / "results.json").read_text())
    for label in ("model.onnx@openvino", "model.onnx@openvino-bf16"):
        r["parity"]["candidates"].pop(label, None)
    for key in ("openvino_fp32", "openvino_bf16"):
        r["throughput"].pop(key, None)
    r["parity"].pop("unavailable", None)
    return r


def _with_openvino(r: dict) -> dict:
    """A results.json as a run on an OpenVINO machine writes it (figures made up for the table)."""
    r = json.loads(json.dumps(r))
    cands, speed = r["parity"]["candidates"], r["throughput"]
    base = dict(cands["model.onnx"], dice_vs_truth=0.74, retention=None, rule="agreement", why="")
    cands["model.onnx@openvino"] = dict(base, backend="openvino", verdict="pass")
    cands["model.onnx@openvino-bf16"] = dict(base, precision="bf16", backend="openvino-bf16", verdict="fail",
                                             rule="retention", retention=0.9812, dice_vs_keras=0.97)
    speed["openvino_fp32"] = dict(speed["onnx_fp32"], images_per_s=12.5)
    speed["openvino_bf16"] = dict(speed["onnx_fp32"], images_per_s=21.25)
    return r


def test_project_summary_row_has_the_openvino_columns_or_says_not_measured():
    from flexunet.projects.report import _summary_row, summary_table

    header = summary_table(REPO / "projects").splitlines()[0]
    assert "OpenVINO FP32: images/s, verdict, retention" in header and "OpenVINO BF16" in header
    old = _summary_row(_committed())
    measured = _summary_row(_with_openvino(_committed()))
    assert old.count("| not measured |") == 1 and old.count("not measured") == 2
    assert len(old.split("|")) == len(measured.split("|")) == len(header.split("|"))
    assert "| 12.50, pass (agreement), – |" in measured and "| 21.25, fail (retention), 98.12% |" in measured


def test_project_markdown_and_failure_lines_name_the_deciding_rule():
    from flexunet.projects.report import results_markdown
    from flexunet.projects.results import parity_failures

    r = _with_openvino(_committed())
    r["parity"]["unavailable"] = {}
    text = results_markdown(r)
    assert "| OpenVINO BF16 | 0.97000 |" in text and "fail (retention) | 21.25 |" in text and "98.12%" in text
    old = results_markdown(_committed())
    assert "| OpenVINO FP32 | not measured |" in old
    lines = parity_failures(r)
    assert len(lines) == 1 and lines[0].startswith("model.onnx@openvino-bf16 fails parity: keeps 98.12% of Keras's "
                                                   "dice vs truth, < 99% (accuracy retention decides)")
    r["parity"]["candidates"]["model.int8.onnx"].update(verdict="fail", rule="agreement")
    assert any("model.int8.onnx fails parity: mask dice vs Keras" in x and "agreement decides" in x
               for x in parity_failures(r))
