"""The comparator: how closely a candidate model's output follows a reference's, and the one
tolerance table that decides whether it agrees (export verification, the INT8 search, ``flexunet
parity`` and the CLI defaults all read :data:`TOLERANCES`), and :func:`judge`, the one verdict:
agreement with the reference, or with ground truth accuracy retention (the MLPerf rule, :data:`RETENTION`)
for reduced precisions.

Conventions (the same as :mod:`flexunet.core.metrics`, whose functions give every per-image figure):

* masks are compared per class as booleans; when both masks of a class are empty the class's dice
  and IoU are 1.0 (perfect agreement), when exactly one is empty they are 0.0;
* a binary model (one sigmoid channel) is scored on its foreground (label 1); a multiclass model
  on the mean over its foreground classes (1..K-1); ``per_class_dice`` lists every class, the
  background (0) included;
* pooled figures add up each class's ``|A∩B|``, ``|A|`` and ``|B|`` over images or tiles first
  (:class:`Overlap`), so a large image weighs more than a small one;
* ``|Δp|`` is taken over every pixel and probability channel.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np

from flexunet.core import metrics
from flexunet.core.masks import labels_from_probabilities


# -- counts that add up -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Overlap:
    """Pixel counts of one class in two masks A and B: ``|A∩B|``, ``|A|``, ``|B|``.

    Counts add up (``+``) over images; :attr:`dice` and :attr:`iou` follow the conventions of
    :mod:`flexunet.core.metrics` (both empty: 1.0; one empty: 0.0).
    """

    inter: int = 0
    a: int = 0
    b: int = 0

    @classmethod
    def of(cls, a: np.ndarray, b: np.ndarray) -> "Overlap":
        """The counts of two boolean (or 0/non-0) masks of the same shape."""
        a = np.asarray(a).astype(bool, copy=False)
        b = np.asarray(b).astype(bool, copy=False)
        if a.shape != b.shape:
            raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
        return cls(int(np.count_nonzero(a & b)), int(np.count_nonzero(a)), int(np.count_nonzero(b)))

    def __add__(self, other: "Overlap") -> "Overlap":
        return Overlap(self.inter + other.inter, self.a + other.a, self.b + other.b)

    @property
    def dice(self) -> float:
        """``2|A∩B| / (|A|+|B|)``; 1.0 when both are empty."""
        return metrics.dice_from_counts(self.inter, self.a, self.b)

    @property
    def iou(self) -> float:
        """``|A∩B| / |A∪B|``; 1.0 when both are empty."""
        return metrics.iou_from_counts(self.inter, self.a, self.b)


def num_labels(num_classes: int) -> int:
    """Distinct label values of a model: 2 (0/1) for a binary model, else its classes."""
    return 2 if num_classes == 1 else num_classes


@dataclass(frozen=True)
class MaskAgreement:
    """Two label maps compared, as counts that add up over images.

    Attributes:
        classes: :class:`Overlap` of each label value (0 = background).
        flipped: pixels whose label differs.
        pixels: pixels compared.
    """

    classes: tuple[Overlap, ...]
    flipped: int
    pixels: int

    @classmethod
    def of(cls, a: np.ndarray, b: np.ndarray, labels: int) -> "MaskAgreement":
        """Compare label maps ``a`` and ``b`` (``HxW`` ints in ``0..labels-1``)."""
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
        return cls(tuple(Overlap.of(a == c, b == c) for c in range(labels)),
                   int(np.count_nonzero(a != b)), int(a.size))

    @classmethod
    def empty(cls, labels: int) -> "MaskAgreement":
        return cls(tuple(Overlap() for _ in range(labels)), 0, 0)

    def __add__(self, other: "MaskAgreement") -> "MaskAgreement":
        if len(self.classes) != len(other.classes):
            raise ValueError("cannot add agreements of different label counts")
        return MaskAgreement(tuple(x + y for x, y in zip(self.classes, other.classes)),
                             self.flipped + other.flipped, self.pixels + other.pixels)

    @property
    def dice(self) -> float:
        """Foreground dice (binary), or the mean dice of the foreground classes (multiclass)."""
        return float(np.mean([c.dice for c in self.classes[1:]]))

    @property
    def iou(self) -> float:
        """Foreground IoU (binary), or the mean IoU of the foreground classes (multiclass)."""
        return float(np.mean([c.iou for c in self.classes[1:]]))

    @property
    def per_class_dice(self) -> list[float]:
        """Dice of every label value, background first."""
        return [c.dice for c in self.classes]

    @property
    def flipped_fraction(self) -> float:
        return self.flipped / self.pixels if self.pixels else 0.0


def mask_scores(a: np.ndarray, b: np.ndarray, labels: int) -> dict:
    """Per-image agreement of two label maps, computed with :mod:`flexunet.core.metrics`:
    ``dice``/``iou`` (foreground, or mean over foreground classes), ``per_class_dice`` (every
    label, background first) and ``flipped_fraction``."""
    per_class = metrics.per_class_dice(a, b, labels)
    ious = [metrics.iou(a == c, b == c) for c in range(1, labels)]
    return {"dice": float(np.mean(per_class[1:])), "iou": float(np.mean(ious)),
            "per_class_dice": [float(d) for d in per_class],
            "flipped_fraction": metrics.flipped_fraction(a, b)}


@dataclass(frozen=True)
class ProbDiff:
    """``|Δp|`` between two probability maps, accumulated over images: max, sum and count."""

    max: float = 0.0
    total: float = 0.0
    count: int = 0

    @classmethod
    def of(cls, p: np.ndarray, q: np.ndarray) -> "ProbDiff":
        if p.shape != q.shape:
            raise ValueError(f"probability shapes differ: {p.shape} vs {q.shape}")
        d = np.abs(np.asarray(p, np.float32) - np.asarray(q, np.float32))
        return cls(float(d.max(initial=0.0)), float(d.sum(dtype=np.float64)), int(d.size))

    def __add__(self, other: "ProbDiff") -> "ProbDiff":
        return ProbDiff(max(self.max, other.max), self.total + other.total, self.count + other.count)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


# -- one comparison of probabilities ----------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """A candidate's probabilities against a reference's, pooled over images or tiles: the masks
    (:class:`MaskAgreement`) and ``|Δp|`` (:class:`ProbDiff`). Comparisons add up (``+``)."""

    masks: MaskAgreement
    diff: ProbDiff = field(default_factory=ProbDiff)
    items: int = 0  # images or tiles compared

    @property
    def dice(self) -> float:
        return self.masks.dice

    @property
    def max_abs_diff(self) -> float:
        return self.diff.max

    @property
    def mean_abs_diff(self) -> float:
        return self.diff.mean

    def __add__(self, other: "Comparison") -> "Comparison":
        return Comparison(self.masks + other.masks, self.diff + other.diff, self.items + other.items)

    def to_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "mean_abs_diff": self.mean_abs_diff, "dice": self.dice,
                "iou": self.masks.iou, "flipped_fraction": self.masks.flipped_fraction, "tiles": self.items}


def compare(reference: np.ndarray, candidate: np.ndarray, threshold: float = 0.5) -> Comparison:
    """Compare probability maps: one ``HxWxC`` image or a batch ``NxHxWxC`` of them. Masks are
    made with :func:`flexunet.core.masks.labels_from_probabilities` at ``threshold``."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.shape != candidate.shape:
        raise ValueError(f"probability shapes differ: {reference.shape} vs {candidate.shape}")
    if reference.ndim == 3:
        reference, candidate = reference[None], candidate[None]
    labels = num_labels(reference.shape[-1])
    total = Comparison(MaskAgreement.empty(labels))
    for p, q in zip(reference, candidate):
        total += Comparison(MaskAgreement.of(labels_from_probabilities(p, threshold),
                                             labels_from_probabilities(q, threshold), labels),
                            ProbDiff.of(p, q), 1)
    return total


# -- the tolerance table ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Tolerance:
    """What a candidate must reach against its reference.

    Attributes:
        min_dice: minimum pooled mask dice.
        max_abs_diff: maximum ``|Δp|`` over every pixel and channel (None: not checked).
        per_image: also require every image's dice to reach ``min_dice``.
        source: where the figures come from (``"default for int8"``, ``"--min-dice"``...).
    """

    min_dice: float
    max_abs_diff: float | None = None
    per_image: bool = False
    source: str = ""

    def failures(self, result: Comparison, worst_dice: float | None = None) -> list[str]:
        """Why a candidate with these figures fails (empty: it agrees)."""
        out = []
        if result.dice < self.min_dice:
            out.append(f"pooled dice {result.dice:.6f} < {self.min_dice}")
        if self.per_image and worst_dice is not None and worst_dice < self.min_dice:
            out.append(f"worst image dice {worst_dice:.6f} < {self.min_dice}")
        if self.max_abs_diff is not None and result.max_abs_diff > self.max_abs_diff:
            out.append(f"max |Δp| {result.max_abs_diff:.3g} > {self.max_abs_diff:g}")
        return out


#: What a candidate of each precision must reach against its reference (the FP32 Keras model, or
#: the FP32 ONNX model for the INT8 export's own check). Every verdict in flexunet reads this table.
TOLERANCES: Mapping[str, Tolerance] = {
    "fp32": Tolerance(min_dice=0.9999, max_abs_diff=1e-4, source="default for fp32"),
    "fp16": Tolerance(min_dice=0.995, source="default for fp16"),
    "int8": Tolerance(min_dice=0.99, source="default for int8"),
    "bf16": Tolerance(min_dice=0.99, source="default for bf16"),
}
#: The tolerance of a precision not in the table (the strictest).
FALLBACK_PRECISION = "fp32"


def tolerance_for(precision: str, min_dice: float | None = None, by_precision: Mapping[str, float] | None = None,
                  max_abs_diff: float | None = None, per_image: bool = False) -> Tolerance:
    """The tolerance of a candidate of ``precision``.

    The dice comes from ``by_precision[precision]``, else ``min_dice``, else :data:`TOLERANCES`
    (fp32's for an unknown precision); ``max_abs_diff`` replaces the table's ``|Δp|`` limit when
    given.
    """
    precision = (precision or "").lower()
    base = TOLERANCES.get(precision)
    if base is None:
        base = replace(TOLERANCES[FALLBACK_PRECISION],
                       source=f"default for {FALLBACK_PRECISION} (unknown precision {precision or '?'!r})")
    if by_precision and precision in by_precision:
        base = replace(base, min_dice=by_precision[precision], source=f"--min-dice {precision}=")
    elif min_dice is not None:
        base = replace(base, min_dice=min_dice, source="--min-dice")
    if max_abs_diff is not None:
        base = replace(base, max_abs_diff=max_abs_diff)
    return replace(base, per_image=per_image)


def describe_defaults(precisions: Sequence[str] | None = None) -> str:
    """The table in one line for help texts: ``FP32 dice 0.9999 and |Δp| 1e-04, FP16 dice 0.995, ...``."""
    parts = []
    for name in precisions or TOLERANCES:
        t = TOLERANCES[name]
        text = f"{name.upper()} dice {t.min_dice:g}"
        if t.max_abs_diff is not None:
            text += f" and |Δp| {t.max_abs_diff:g}"
        parts.append(text)
    return ", ".join(parts)


# -- the verdict: agreement, or accuracy retention with ground truth ----------------------------------
#: Accuracy retention (the MLPerf rule for reduced precision): a reduced-precision candidate passes
#: when its dice against the ground truth reaches this share of the reference's dice against the
#: same truth; :data:`RETENTION_STRICT` (99.9%) is reported beside it.
RETENTION = 0.99
RETENTION_STRICT = 0.999
#: Precisions judged by retention when ground truth is given.  FP32 is always judged by agreement:
#: an FP32 candidate that does not reproduce its FP32 reference is a bug, whatever its accuracy.
RETENTION_PRECISIONS = frozenset({"bf16", "fp16", "int8"})
AGREEMENT, RETENTION_RULE = "agreement", "retention"


def retention(reference_vs_truth: float | None, candidate_vs_truth: float | None) -> float | None:
    """The candidate's dice against the truth as a share of the reference's (None when either is
    unknown or the reference scores 0 against the truth: nothing to retain)."""
    if reference_vs_truth is None or candidate_vs_truth is None or reference_vs_truth <= 0:
        return None
    return candidate_vs_truth / reference_vs_truth


def truth_agreement(truth: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> MaskAgreement:
    """Pooled agreement of ``NxHxWxC`` (or ``HxWxC``) probabilities' masks with ``NxHxW`` (or
    ``HxW``) ground-truth label maps; its :attr:`~MaskAgreement.dice` is the dice against the truth."""
    probabilities, truth = np.asarray(probabilities), np.asarray(truth)
    if probabilities.ndim == 3:
        probabilities, truth = probabilities[None], truth[None]
    labels = num_labels(probabilities.shape[-1])
    total = MaskAgreement.empty(labels)
    for t, p in zip(truth, probabilities):
        total += MaskAgreement.of(t, labels_from_probabilities(p, threshold), labels)
    return total


@dataclass(frozen=True)
class Verdict:
    """Whether a candidate passes, and by which rule.

    Attributes:
        rule: ``"agreement"`` (its masks and ``|Δp|`` against the reference's, :class:`Tolerance`)
            or ``"retention"`` (its dice against the truth against the reference's, :data:`RETENTION`).
        passed: the deciding rule's outcome.
        failures: why it fails by the deciding rule (empty: it passes).
        agreement_failures: why it fails agreement (reported whatever rule decides).
        retention: dice vs truth as a share of the reference's (None without truth).
        why: one line: the rule, and why it was the one that decided.
    """

    rule: str
    passed: bool
    failures: tuple[str, ...]
    agreement_failures: tuple[str, ...]
    retention: float | None = None
    min_retention: float = RETENTION
    why: str = ""

    @property
    def agrees(self) -> bool:
        return not self.agreement_failures

    @property
    def retains_strict(self) -> bool | None:
        """Whether the candidate also reaches :data:`RETENTION_STRICT` (None without truth)."""
        return None if self.retention is None else self.retention >= RETENTION_STRICT

    def to_dict(self) -> dict:
        return {"verdict": "pass" if self.passed else "fail", "rule": self.rule, "why": self.why,
                "failures": list(self.failures), "agreement": "pass" if self.agrees else "fail",
                "agreement_failures": list(self.agreement_failures), "retention": self.retention,
                "min_retention": self.min_retention, "retains_99": None if self.retention is None
                else self.retention >= RETENTION, "retains_99_9": self.retains_strict}


def judge(precision: str, agreement: Comparison, tolerance: Tolerance, *, worst_dice: float | None = None,
          reference_vs_truth: float | None = None, candidate_vs_truth: float | None = None,
          min_retention: float = RETENTION) -> Verdict:
    """The verdict on a candidate of ``precision``: every verdict in flexunet (parity, export
    verification, the INT8 search, ``flexunet tune``) comes from here.

    Agreement (``agreement`` against the reference, ``tolerance``) is always measured.  With both
    dice against ground truth known, a BF16/FP16/INT8 candidate is judged by retention instead:
    it passes when ``candidate_vs_truth >= min_retention * reference_vs_truth``.  FP32 candidates,
    and any candidate without truth, are judged by agreement.
    """
    precision = (precision or "").lower()
    agreement_failures = tuple(tolerance.failures(agreement, worst_dice))
    kept = retention(reference_vs_truth, candidate_vs_truth)
    if precision in RETENTION_PRECISIONS and kept is not None:
        failures = () if kept >= min_retention else (
            f"dice vs truth {candidate_vs_truth:.6f} is {100 * kept:.2f}% of the reference's "
            f"{reference_vs_truth:.6f} (< {100 * min_retention:g}%)",)
        why = f"{precision} with ground truth: accuracy retention >= {100 * min_retention:g}% decides"
        return Verdict(RETENTION_RULE, not failures, failures, agreement_failures, kept, min_retention, why)
    if precision in RETENTION_PRECISIONS:
        what = "ground truth the reference scores 0 on" if reference_vs_truth == 0 else "no ground truth"
        why = f"{precision}, {what}: agreement with the reference decides"
    elif kept is not None:
        why = f"{precision or 'unknown precision'}: agreement decides even with ground truth (a mismatch is a bug)"
    else:
        why = f"{precision or 'unknown precision'}: agreement with the reference decides"
    return Verdict(AGREEMENT, not agreement_failures, agreement_failures, agreement_failures, kept,
                   min_retention, why)
