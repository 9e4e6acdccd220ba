"""The comparator: mask agreement and |Δp| maths on hand-made masks, and the one tolerance table."""
from __future__ import annotations

import numpy as np
import pytest

from flexunet.core import metrics
from flexunet.core.compare import (TOLERANCES, MaskAgreement, Overlap, ProbDiff, Tolerance, compare, mask_scores,
                                   tolerance_for)
from flexunet.core.errors import FlexunetError
from flexunet.runtime.parity import parse_min_dice


# -- the maths -----------------------------------------------------------------------------------------
def test_overlap_conventions_and_exact_counts():
    empty = np.zeros((4, 5), bool)
    assert Overlap.of(empty, empty) == Overlap(0, 0, 0)
    assert Overlap.of(empty, empty).dice == 1.0 and Overlap.of(empty, empty).iou == 1.0  # both empty: agree
    one = empty.copy()
    one[1, 1] = True
    assert Overlap.of(one, empty).dice == 0.0 and Overlap.of(one, empty).iou == 0.0       # one empty
    assert Overlap.of(empty, one).dice == 0.0 and Overlap.of(empty, one).iou == 0.0
    a = np.zeros((4, 5), bool)
    b = np.zeros((4, 5), bool)
    a[0, :4] = True           # |A| = 4
    b[0, 1:4] = True
    b[1, :3] = True           # |B| = 6, |A∩B| = 3
    o = Overlap.of(a, b)
    assert (o.inter, o.a, o.b) == (3, 4, 6)
    assert o.dice == pytest.approx(6 / 10) and o.iou == pytest.approx(3 / 7)
    # the same conventions as the project's one dice implementation
    for x, y in ((empty, empty), (one, empty), (a, b)):
        assert Overlap.of(x, y).dice == metrics.dice(x, y)
        assert Overlap.of(x, y).iou == metrics.iou(x, y)


def test_agreement_binary_flipped_and_mask_scores():
    ref = np.array([[0, 1, 1, 0], [0, 1, 0, 0]], np.uint8)
    cand = np.array([[0, 1, 0, 0], [1, 1, 0, 0]], np.uint8)
    ag = MaskAgreement.of(ref, cand, 2)
    assert ag.classes[1] == Overlap(2, 3, 3)
    assert ag.classes[0] == Overlap(4, 5, 5)
    assert ag.flipped == 2 and ag.pixels == 8 and ag.flipped_fraction == 0.25
    assert ag.dice == pytest.approx(4 / 6) and ag.iou == pytest.approx(2 / 4)
    scores = mask_scores(ref, cand, 2)  # per image: computed by core.metrics
    assert scores["dice"] == pytest.approx(ag.dice) and scores["iou"] == pytest.approx(ag.iou)
    assert scores["per_class_dice"] == pytest.approx(ag.per_class_dice)
    assert scores["flipped_fraction"] == 0.25
    both_empty = MaskAgreement.of(np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.uint8), 2)
    assert both_empty.dice == 1.0 and both_empty.iou == 1.0 and both_empty.flipped_fraction == 0.0
    assert mask_scores(np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.uint8), 2)["dice"] == 1.0


def test_pooled_figures_are_not_means_of_per_image_figures():
    big = np.zeros((20, 10), np.uint8)
    big[:10] = 1                                  # 100 foreground pixels, identical in both
    small_ref = np.zeros((2, 2), np.uint8)
    small_ref[0] = 1                              # 2 foreground pixels the candidate misses
    small_cand = np.zeros((2, 2), np.uint8)
    first, second = MaskAgreement.of(big, big, 2), MaskAgreement.of(small_ref, small_cand, 2)
    assert first.dice == 1.0 and second.dice == 0.0
    pooled = first + second
    assert pooled.classes[1] == Overlap(100, 102, 100)
    assert pooled.dice == pytest.approx(200 / 202)          # not (1.0 + 0.0) / 2
    assert pooled.iou == pytest.approx(100 / 102)
    assert pooled.flipped == 2 and pooled.pixels == 204
    assert (MaskAgreement.empty(2) + first) == first


def test_multiclass_mean_over_foreground_classes():
    ref = np.array([[0, 1, 1], [2, 2, 0]], np.uint8)
    cand = np.array([[0, 1, 2], [2, 2, 0]], np.uint8)
    ag = MaskAgreement.of(ref, cand, 4)   # class 3 absent from both: dice 1.0
    assert ag.per_class_dice == pytest.approx([1.0, 2 / 3, 4 / 5, 1.0])
    assert ag.dice == pytest.approx((2 / 3 + 4 / 5 + 1.0) / 3)  # background excluded
    assert ag.flipped == 1
    assert mask_scores(ref, cand, 4)["dice"] == pytest.approx(ag.dice)


def test_probability_differences_pool_max_and_mean():
    p = np.zeros((2, 2, 2), np.float32)
    q = p.copy()
    q[0, 0, 1] = 0.5
    d1 = ProbDiff.of(p, q)
    assert d1.max == 0.5 and d1.mean == pytest.approx(0.5 / 8)
    d2 = ProbDiff.of(np.zeros((1, 1, 2), np.float32), np.full((1, 1, 2), 0.25, np.float32))
    pooled = d1 + d2
    assert pooled.max == 0.5 and pooled.mean == pytest.approx(1.0 / 10)


# -- the tolerance table -----------------------------------------------------------------------------------
def test_tolerance_by_precision_overrides_and_fallback():
    assert tolerance_for("int8") == TOLERANCES["int8"]
    unknown = tolerance_for("int4")  # not in the table: the strictest entry, and says so
    assert (unknown.min_dice, unknown.max_abs_diff) == (TOLERANCES["fp32"].min_dice, TOLERANCES["fp32"].max_abs_diff)
    assert "unknown precision" in unknown.source
    overall, by_precision = parse_min_dice(["0.97", "int8=0.95"])
    assert overall == 0.97 and by_precision == {"int8": 0.95}
    assert tolerance_for("int8", overall, by_precision).min_dice == 0.95
    fp32 = tolerance_for("fp32", overall, by_precision, max_abs_diff=0.5)
    assert (fp32.min_dice, fp32.max_abs_diff, fp32.source) == (0.97, 0.5, "--min-dice")
    for bad in ("x", "1.5", "int8=", "=0.9"):
        with pytest.raises(FlexunetError, match="--min-dice"):
            parse_min_dice([bad])


def test_tolerance_failures_name_each_limit():
    same = np.full((1, 10, 10, 1), 0.9, np.float32)
    good = compare(same, same)
    tol = Tolerance(0.99, max_abs_diff=0.1, per_image=True)
    assert tol.failures(good, worst_dice=1.0) == []
    off = same.copy()
    off[0, 0, :, 0] = 0.2   # ten pixels flip (dice 180/190) and |dp| = 0.7
    bad = compare(same, off)
    reasons = tol.failures(bad, worst_dice=0.5)
    assert len(reasons) == 3
    assert "pooled dice" in reasons[0] and "worst image" in reasons[1] and "max |Δp| 0.7" in reasons[2]


def test_compare_pools_tiles_like_parity_pools_images():
    rng = np.random.default_rng(0)
    p = rng.random((3, 8, 8, 1), dtype=np.float32)
    q = np.clip(p + rng.normal(0, 0.1, p.shape).astype(np.float32), 0, 1)
    batch = compare(p, q)
    one_by_one = compare(p[0], q[0]) + compare(p[1], q[1]) + compare(p[2], q[2])
    assert batch == one_by_one and batch.items == 3
    assert batch.max_abs_diff == pytest.approx(float(np.abs(p - q).max()))
    assert batch.dice == MaskAgreement.of((p > 0.5).squeeze(-1).reshape(-1, 8), (q > 0.5).squeeze(-1).reshape(-1, 8), 2).dice
