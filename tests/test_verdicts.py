"""Verdicts (:func:`flexunet.core.compare.judge`): agreement with the reference, or with ground truth
accuracy retention for reduced precisions (the MLPerf rule); the rule named in parity's reports; the
INT8 search judged the same way."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from flexunet.core.compare import (RETENTION, RETENTION_STRICT, TOLERANCES, Comparison, compare, judge,
                                   retention, tolerance_for, truth_agreement)
from flexunet.core.errors import EXIT_FAILED, EXIT_OK
from flexunet.core.imageio import write_image
from flexunet.runtime.parity_cli import parity_cmd
from flexunet.runtime.segmenter import Segmenter


# -- the rule on constructed masks ---------------------------------------------------------------------
def _square(top: int, left: int, size: int = 20, shape=(64, 64)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[top:top + size, left:left + size] = 1
    return m


def _probs(mask: np.ndarray) -> np.ndarray:
    """One sigmoid channel: 0.9 on the mask, 0.1 elsewhere."""
    return np.where(mask[..., None] > 0, 0.9, 0.1).astype(np.float32)


TRUTH = _square(22, 22)
REFERENCE = _square(22, 24)     # 2 px right of the truth
SHIFTED = _square(22, 20)       # 2 px left: as good against the truth, 4 px from the reference
SHRUNK = _square(22, 24, 17)    # loses >1% of the reference's dice vs truth


def _verdict(precision: str, candidate: np.ndarray, with_truth: bool = True):
    agreement = compare(_probs(REFERENCE), _probs(candidate))
    ref_truth = truth_agreement(TRUTH, _probs(REFERENCE)).dice if with_truth else None
    cand_truth = truth_agreement(TRUTH, _probs(candidate)).dice if with_truth else None
    return judge(precision, agreement, tolerance_for(precision), reference_vs_truth=ref_truth,
                 candidate_vs_truth=cand_truth), agreement


@pytest.mark.parametrize("precision", ["int8", "bf16", "fp16"])
def test_flipped_pixels_that_keep_the_dice_vs_truth_pass_reduced_precisions(precision):
    verdict, agreement = _verdict(precision, SHIFTED)
    assert agreement.dice < 0.9 and agreement.masks.flipped > 0  # agreement alone would fail
    assert verdict.rule == "retention" and verdict.passed and verdict.failures == ()
    assert not verdict.agrees and any("pooled dice" in f for f in verdict.agreement_failures)
    assert verdict.retention == pytest.approx(1.0) and verdict.retains_strict
    assert verdict.to_dict()["retains_99"] and verdict.to_dict()["agreement"] == "fail"
    assert "retention" in verdict.why and precision in verdict.why


def test_the_same_candidate_fails_as_fp32_whatever_its_accuracy():
    verdict, _ = _verdict("fp32", SHIFTED)
    assert verdict.rule == "agreement" and not verdict.passed
    assert verdict.retention == pytest.approx(1.0)  # reported, not decisive
    assert "bug" in verdict.why
    unknown, _ = _verdict("int4", SHIFTED)  # not a reduced precision judge() knows: agreement
    assert unknown.rule == "agreement" and not unknown.passed


def test_losing_more_than_one_percent_of_the_reference_dice_vs_truth_fails():
    verdict, agreement = _verdict("int8", SHRUNK)
    ref = truth_agreement(TRUTH, _probs(REFERENCE)).dice
    cand = truth_agreement(TRUTH, _probs(SHRUNK)).dice
    assert cand < RETENTION * ref
    assert verdict.rule == "retention" and not verdict.passed and verdict.retention == pytest.approx(cand / ref)
    assert "% of the reference's" in verdict.failures[0] and "< 99%" in verdict.failures[0]
    # just at the limit passes; 99.9% is reported separately
    assert judge("int8", agreement, TOLERANCES["int8"], reference_vs_truth=1.0, candidate_vs_truth=0.99).passed
    at_99 = judge("int8", agreement, TOLERANCES["int8"], reference_vs_truth=1.0, candidate_vs_truth=0.995)
    assert at_99.passed and at_99.retains_strict is False and RETENTION_STRICT == 0.999


def test_without_truth_agreement_decides_as_before():
    verdict, agreement = _verdict("int8", SHIFTED, with_truth=False)
    assert verdict.rule == "agreement" and not verdict.passed and verdict.retention is None
    assert list(verdict.failures) == TOLERANCES["int8"].failures(agreement)
    good, _ = _verdict("bf16", REFERENCE, with_truth=False)
    assert good.rule == "agreement" and good.passed
    # a reference that scores 0 against the truth leaves nothing to retain: agreement decides
    zero = judge("int8", agreement, TOLERANCES["int8"], reference_vs_truth=0.0, candidate_vs_truth=0.5)
    assert zero.rule == "agreement" and retention(0.0, 0.5) is None and "scores 0" in zero.why


def test_bf16_has_its_own_agreement_tolerance():
    assert tolerance_for("bf16") == TOLERANCES["bf16"] and TOLERANCES["bf16"].max_abs_diff is None


def test_truth_agreement_pools_a_batch():
    batch = np.stack([_probs(REFERENCE), _probs(SHIFTED)])
    pooled = truth_agreement(np.stack([TRUTH, TRUTH]), batch)
    one = truth_agreement(TRUTH, _probs(REFERENCE))
    assert pooled.classes[1].a == 2 * one.classes[1].a and pooled.dice == pytest.approx(one.dice)
    assert isinstance(compare(_probs(TRUTH), _probs(TRUTH)), Comparison)


# -- parity names the rule ---------------------------------------------------------------------------------
def parity(*args):
    return CliRunner().invoke(parity_cmd, [str(a) for a in args] + ["--tile", "64"])


@pytest.fixture
def truth_setup(make_onnx, make_images, tmp_path):
    """A reference, its own masks as the ground truth of three images."""
    ref = make_onnx("ref.onnx")
    images = make_images(tmp_path / "in", [(72, 90), (64, 64), (50, 70)])
    with Segmenter(ref, backend="onnxruntime-cpu", tile=64) as seg:
        for p in images:
            write_image(tmp_path / "masks" / f"{p.stem}.png", seg.segment(p).mask)
    return ref, tmp_path / "in", tmp_path / "masks"


def test_parity_reports_say_which_rule_decided(make_onnx, truth_setup, tmp_path):
    ref, images, masks = truth_setup
    int8 = make_onnx("same.int8.onnx", precision="int8")
    fp32 = make_onnx("same.onnx")
    out = tmp_path / "report"
    result = parity("--reference", ref, "--candidate", int8, "--candidate", fp32, images, "--masks", masks, "-o", out)
    assert result.exit_code == EXIT_OK, (result.stdout, result.stderr)
    data = json.loads((out / "parity.json").read_text())
    by_precision = {c["precision"]: c for c in data["candidates"]}
    assert by_precision["int8"]["rule"] == "retention" and by_precision["int8"]["retention"] == pytest.approx(1.0)
    assert by_precision["int8"]["agreement"] == "pass" and by_precision["int8"]["retains_99_9"] is True
    assert by_precision["fp32"]["rule"] == "agreement" and "bug" in by_precision["fp32"]["why"]
    md = (out / "parity.md").read_text()
    assert "| rule |" in md and "| retention |" in md and "retention decided" in md and "agreement decided" in md
    assert "  rule: retention (int8 with ground truth" in result.stdout
    plain = parity("--reference", ref, "--candidate", int8, images, "-o", out)
    assert plain.exit_code == EXIT_OK
    (cand,) = json.loads((out / "parity.json").read_text())["candidates"]
    assert cand["rule"] == "agreement" and cand["retention"] is None and "no ground truth" in cand["why"]


def test_parity_fails_a_reduced_precision_that_loses_accuracy(make_onnx, truth_setup, tmp_path):
    ref, images, masks = truth_setup
    other = make_onnx("other.int8.onnx", precision="int8", seed=1)  # other weights: other masks
    out = tmp_path / "report"
    result = parity("--reference", ref, "--candidate", other, images, "--masks", masks, "-o", out,
                    "--min-dice", "0")  # agreement would pass: retention decides
    assert result.exit_code == EXIT_FAILED, (result.stdout, result.stderr)
    (cand,) = json.loads((out / "parity.json").read_text())["candidates"]
    assert cand["rule"] == "retention" and cand["verdict"] == "fail" and cand["agreement"] == "pass"
    assert "dice vs truth" in cand["failures"][0] and cand["retention"] < RETENTION
    relaxed = parity("--reference", ref, "--candidate", other, images, "--masks", masks, "-o", out,
                     "--min-retention", "0")
    assert relaxed.exit_code == EXIT_OK, (relaxed.stdout, relaxed.stderr)


# -- the INT8 search --------------------------------------------------------------------------------------
def _noisy_tiles(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, size=(n, 32, 32, 3)).astype(np.float32)


def test_int8_search_judges_by_retention_when_its_check_tiles_have_masks(make_onnx, tmp_path):
    from flexunet.core.masks import labels_from_probabilities
    from flexunet.export import int8_search as search
    from flexunet.export.verify import onnx_predict

    src = make_onnx("model.onnx")
    calib, check = _noisy_tiles(8, 0), _noisy_tiles(4, 1)
    # truth: the FP32 model's own masks; an unreachable agreement target fails, retention 50% passes at once
    truth = np.stack([labels_from_probabilities(p, 0.5) for p in onnx_predict(src, check)])
    by_truth = search.tune_int8(src, tmp_path / "a.int8.onnx", calib, check, target_dice=1.01, max_float=1,
                                check_truth=truth, min_retention=0.5)
    assert by_truth.rule == "retention" and by_truth.passed and by_truth.variants_tried == 1
    assert by_truth.reference_dice_vs_truth == 1.0 and by_truth.retention == by_truth.retention_all_int8 > 0.5
    assert by_truth.to_dict()["rule"] == "retention"
    by_agreement = search.tune_int8(src, tmp_path / "b.int8.onnx", calib, check, target_dice=1.01, max_float=1)
    assert by_agreement.rule == "agreement" and not by_agreement.passed and by_agreement.retention is None
    assert by_agreement.variants_tried > 1  # it searched: the sensitivity pass ran
    assert onnx.load(str(tmp_path / "a.int8.onnx")).graph.node  # written whatever the verdict
