"""``flexunet parity``: the maths on hand-made masks, tolerances, verdicts and exit codes, reports."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from flexunet.core.compare import TOLERANCES
from flexunet.core.errors import EXIT_FAILED, EXIT_OK, EXIT_SKIPPED, EXIT_USAGE, FlexunetError
from flexunet.core.imageio import read_image, write_image
from flexunet.core.masks import colorize
from flexunet.runtime.disagreement_figure import DIFF_COLORS, FIGURE_WIDTH, difference_map, figure_row, figure_size
from flexunet.runtime.parity import ModelSpec, exit_code
from flexunet.runtime.parity_cli import parity_cmd
from flexunet.runtime.segmenter import Segmenter


# -- exit codes ------------------------------------------------------------------------------------------
def test_exit_code_policy_verdict_first():
    assert exit_code(failed=0, skipped=0) == EXIT_OK
    assert exit_code(failed=1, skipped=0) == EXIT_FAILED
    assert exit_code(failed=1, skipped=2) == EXIT_FAILED
    assert exit_code(failed=0, skipped=2) == EXIT_SKIPPED


def test_model_spec_backend_suffix(tmp_path):
    assert ModelSpec.parse("m.onnx") == ModelSpec(Path("m.onnx"), "auto")
    spec = ModelSpec.parse("dir/m.onnx@onnxruntime-cpu")
    assert str(spec.path) == "dir/m.onnx" and spec.backend == "onnxruntime-cpu"
    odd = tmp_path / "a@keras"
    odd.write_bytes(b"")
    assert ModelSpec.parse(str(odd)).path == odd  # an existing file name wins


# -- the disagreement figure ----------------------------------------------------------------------------
def test_difference_map_colours_and_row_layout():
    ref = np.array([[1, 1, 0, 0], [2, 0, 0, 0]], np.uint8)
    cand = np.array([[1, 0, 1, 0], [1, 0, 0, 0]], np.uint8)
    diff = difference_map(ref, cand)
    assert tuple(diff[0, 0]) == DIFF_COLORS["agree_foreground"]
    assert tuple(diff[0, 1]) == DIFF_COLORS["reference_only"]
    assert tuple(diff[0, 2]) == DIFF_COLORS["candidate_only"]
    assert tuple(diff[1, 0]) == DIFF_COLORS["other_class"]
    assert tuple(diff[0, 3]) == (0, 0, 0)
    # a single differing pixel stays visible after a 10x downscale
    big_ref = np.zeros((1000, 1000), np.uint8)
    big_cand = big_ref.copy()
    big_cand[503, 507] = 1
    small = difference_map(big_ref, big_cand, width=100)
    assert small.shape == (100, 100, 3)
    assert (small == DIFF_COLORS["candidate_only"]).all(axis=2).sum() >= 1
    image = np.zeros((300, 1000, 3), np.uint8)
    row = figure_row(image, big_ref[:300], big_cand[:300], [(0, 0, 0), (255, 255, 255)], "title")
    assert row.shape == (*figure_size([(300, 1000)]), 3)
    assert row.shape[1] == FIGURE_WIDTH


# -- the command ---------------------------------------------------------------------------------------
def parity(*args):
    return CliRunner().invoke(parity_cmd, [str(a) for a in args])


@pytest.fixture
def images(make_images, tmp_path):
    return make_images(tmp_path / "in", [(90, 120), (64, 64), (40, 70)])


def test_identical_candidate_passes_with_reports(make_onnx, images, tmp_path):
    ref = make_onnx("ref.onnx")
    same = make_onnx("same.onnx")  # the same weights
    out = tmp_path / "report"
    result = parity("--reference", ref, "--candidate", same, "--candidate", f"{ref}@onnxruntime-cpu",
                    tmp_path / "in", "-o", out)
    assert result.exit_code == EXIT_OK, (result.stdout, result.stderr)
    assert "[3/3]" in result.stderr and "reference: " in result.stderr
    assert "same.onnx [fp32]: dice vs reference 1.000000" in result.stdout and "PASS" in result.stdout
    assert "ref.onnx@onnxruntime-cpu [fp32]: dice vs reference 1.000000" in result.stdout
    data = json.loads((out / "parity.json").read_text())
    cand, by_backend = data["candidates"]
    assert by_backend["model"] == f"{ref}@onnxruntime-cpu" and by_backend["verdict"] == "pass"
    assert by_backend["backend"] == "onnxruntime CPUExecutionProvider"
    assert cand["verdict"] == "pass" and data["passed"] and data["exit_code"] == 0
    assert cand["overall"]["dice"] == 1.0 and cand["overall"]["iou"] == 1.0
    assert cand["overall"]["max_abs_diff"] == 0.0 and cand["overall"]["mean_abs_diff"] == 0.0
    assert cand["overall"]["flipped_fraction"] == 0.0
    assert cand["tolerance"]["min_dice"] == TOLERANCES["fp32"].min_dice and cand["precision"] == "fp32"
    with Segmenter(ref) as seg:  # a dynamic-size model's default tile is fitted to each image
        tile = "fit" if seg.fit else list(seg.layout().tile)
    assert data["layout"] == {"tile": tile, "overlap": 16, "blend": "cosine", "batch_size": 4, "threshold": 0.5}
    assert data["images"] == {"total": 3, "compared": 3, "skipped": []}
    assert [r["image"] for r in data["per_image"]] == ["img00.png", "img01.png", "img02.png"]
    rec = data["per_image"][0]["candidates"][0]
    assert set(rec) >= {"model", "dice", "iou", "per_class_dice", "flipped_fraction", "max_abs_diff",
                        "mean_abs_diff", "dice_vs_truth"}
    md = (out / "parity.md").read_text()
    assert "| `same.onnx` | fp32 | 1.000000 |" in md and "**pass**" in md
    worst = read_image(out / "worst.png")  # one row per candidate (identical: the first image is the worst)
    assert cand["overall"]["worst_image"] == by_backend["overall"]["worst_image"] == "img00.png"
    assert worst.shape[:2] == figure_size([(90, 120), (90, 120)]) == (2 * (28 + 296) + 8, 1600)


def test_perturbed_candidate_fails_with_exit_1_and_min_dice_overrides(make_onnx, images, tmp_path):
    ref = make_onnx("ref.onnx")
    other = make_onnx("other.onnx", seed=1)  # different weights
    same = make_onnx("same.onnx")
    out = tmp_path / "report"
    result = parity("--reference", ref, "--candidate", other, "--candidate", same, tmp_path / "in", "-o", out)
    assert result.exit_code == EXIT_FAILED, (result.stdout, result.stderr)
    data = json.loads((out / "parity.json").read_text())
    bad, good = data["candidates"]
    assert bad["verdict"] == "fail" and good["verdict"] == "pass" and not data["passed"]
    dice = bad["overall"]["dice"]
    assert dice < 0.999 and bad["failures"] and "pooled dice" in bad["failures"][0]
    assert bad["overall"]["max_abs_diff"] > 0 and bad["overall"]["flipped_fraction"] > 0
    assert bad["overall"]["worst_image_dice"] <= dice + 1e-12 or len(data["per_image"]) == 1
    assert "FAIL" in result.stdout and "**FAIL**" in (out / "parity.md").read_text()
    # two rows in worst.png, one per candidate
    sizes = [next((r["height"], r["width"]) for r in data["per_image"] if r["image"] == c["overall"]["worst_image"])
             for c in data["candidates"]]
    assert read_image(out / "worst.png").shape[:2] == figure_size(sizes)

    # --min-dice sets the dice for every candidate, --max-abs-diff the |dp| limit (fp32's default is 1e-4):
    # just below the measured dice with a loose |dp| passes
    assert parity("--reference", ref, "--candidate", other, tmp_path / "in", "-o", out,
                  "--min-dice", f"{dice - 1e-6:.9f}", "--max-abs-diff", "1").exit_code == EXIT_OK
    assert parity("--reference", ref, "--candidate", other, tmp_path / "in", "-o", out,
                  "--min-dice", f"{dice - 1e-6:.9f}").exit_code == EXIT_FAILED
    assert json.loads((out / "parity.json").read_text())["candidates"][0]["tolerance"]["source"] == "--min-dice"
    # ... and --max-abs-diff is a second condition
    strict = parity("--reference", ref, "--candidate", other, tmp_path / "in", "-o", out,
                    "--min-dice", "0", "--max-abs-diff", "0.001")
    assert strict.exit_code == EXIT_FAILED
    assert "max |Δp|" in json.loads((out / "parity.json").read_text())["candidates"][0]["failures"][0]


def test_int8_candidate_gets_the_int8_default(make_onnx, images, tmp_path):
    ref = make_onnx("ref.onnx")
    int8 = make_onnx("model.int8.onnx", precision="int8")
    out = tmp_path / "report"
    result = parity("--reference", ref, "--candidate", int8, tmp_path / "in", "-o", out)
    assert result.exit_code == EXIT_OK, result.stderr
    (cand,) = json.loads((out / "parity.json").read_text())["candidates"]
    assert cand["precision"] == "int8"
    default = TOLERANCES["int8"]
    assert cand["tolerance"] == {"min_dice": default.min_dice, "max_abs_diff": default.max_abs_diff,
                                 "per_image": False, "source": default.source}
    result = parity("--reference", ref, "--candidate", int8, tmp_path / "in", "-o", out, "--min-dice", "int8=0.5")
    assert json.loads((out / "parity.json").read_text())["candidates"][0]["tolerance"]["min_dice"] == 0.5


def test_ground_truth_masks_binary(make_onnx, images, tmp_path):
    ref = make_onnx("ref.onnx")
    other = make_onnx("other.onnx", seed=1)
    truth = tmp_path / "masks"
    with Segmenter(ref) as seg:  # the reference's own masks as ground truth (0/255 PNG)
        for p in images[:2]:
            write_image(truth / f"{p.stem}.png", seg.segment(p).mask)
    out = tmp_path / "report"
    result = parity("--reference", ref, "--candidate", other, tmp_path / "in", "-o", out, "--masks", truth,
                    "--min-dice", "0", "--max-abs-diff", "1")
    assert result.exit_code == EXIT_OK, result.stderr
    data = json.loads((out / "parity.json").read_text())
    assert data["reference"]["dice_vs_truth"] == 1.0
    assert data["truth"] == {"masks_dir": str(truth), "found": 2, "missing": ["img02.png"]}
    assert data["per_image"][2]["reference_dice_vs_truth"] is None
    for rec in data["per_image"][:2]:  # truth == reference: dice vs truth is dice vs reference
        c = rec["candidates"][0]
        assert rec["reference_dice_vs_truth"] == 1.0 and c["dice_vs_truth"] == pytest.approx(c["dice"])
    assert data["candidates"][0]["overall"]["dice_vs_truth"] is not None
    assert "dice vs truth" in result.stdout


def test_ground_truth_masks_multiclass_use_the_class_colours(make_onnx, make_images, tmp_path):
    paths = make_images(tmp_path / "in", [(70, 90)])
    ref = make_onnx("ref.onnx", classes=3)
    same = make_onnx("same.onnx", classes=3)
    with Segmenter(ref) as seg:
        result = seg.segment(paths[0])
        write_image(tmp_path / "masks" / "img00.png", colorize(result.labels, seg.info.class_colors))
    out = tmp_path / "report"
    run = parity("--reference", ref, "--candidate", same, tmp_path / "in", "-o", out, "--masks", tmp_path / "masks")
    assert run.exit_code == EXIT_OK, run.stderr
    data = json.loads((out / "parity.json").read_text())
    assert data["reference"]["dice_vs_truth"] == 1.0
    assert len(data["reference"]["per_class_dice_vs_truth"]) == 3
    assert len(data["candidates"][0]["overall"]["per_class_dice"]) == 3


def test_unreadable_image_is_skipped_exit_3_unless_a_candidate_fails(make_onnx, images, tmp_path):
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG not really" * 4)
    ref, same, other = make_onnx("ref.onnx"), make_onnx("same.onnx"), make_onnx("other.onnx", seed=1)
    out = tmp_path / "report"
    result = parity("--reference", ref, "--candidate", same, tmp_path / "in", "-o", out)
    assert result.exit_code == EXIT_SKIPPED, (result.stdout, result.stderr)
    assert "broken.png: skipped" in result.stderr
    data = json.loads((out / "parity.json").read_text())
    assert data["images"]["compared"] == 3 and data["images"]["skipped"][0]["path"].endswith("broken.png")
    result = parity("--reference", ref, "--candidate", other, tmp_path / "in", "-o", out)
    assert result.exit_code == EXIT_FAILED  # the verdict takes precedence


def test_bad_inputs_are_one_line_errors(make_onnx, images, tmp_path):
    ref = make_onnx("ref.onnx")
    three = make_onnx("three.onnx", classes=3)
    result = parity("--reference", ref, "--candidate", three, tmp_path / "in", "-o", tmp_path / "r")
    assert result.exit_code == EXIT_USAGE and "3 classes" in result.stderr
    assert "Traceback" not in result.output
    result = parity("--reference", ref, "--candidate", tmp_path / "missing.onnx", tmp_path / "in", "-o", tmp_path / "r")
    assert result.exit_code == EXIT_USAGE and "missing.onnx" in result.stderr
    result = parity("--reference", ref, "--candidate", ref, tmp_path / "in", "--min-dice", "high", "-o", tmp_path / "r")
    assert result.exit_code == EXIT_USAGE and "--min-dice" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.png").write_bytes(b"junk")
    result = parity("--reference", ref, "--candidate", ref, empty, "-o", tmp_path / "r2")
    assert result.exit_code == EXIT_USAGE and "could be read" in result.stderr
    assert not (tmp_path / "r2").exists()


def test_commands_resolve_through_the_lazy_group():
    """flexunet's own command table resolves "parity", "bench" and "project", each with its help."""
    from flexunet.cli import COMMANDS, LazyGroup

    group = LazyGroup("flexunet", lazy=COMMANDS)
    for name in ("parity", "bench", "project"):
        result = CliRunner().invoke(group, [name, "--help"])
        assert result.exit_code == 0 and "Exit codes" in result.output, result.output
