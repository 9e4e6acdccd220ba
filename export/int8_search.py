"""The mixed-precision search: INT8 with as few convolutions kept in FP32 as it takes to pass its
verdict against the FP32 model, within a budget of estimated FP32 cost.

The verdict is the one of :func:`flexunet.core.compare.judge`: agreement with the FP32 model (mask
dice at the target) on the held-out check tiles, or, when the check tiles come with ground-truth
masks, accuracy retention (INT8's dice vs truth at least :data:`~flexunet.core.compare.RETENTION` of
FP32's); the search then gains retention instead of agreement.  The export's calibration sources
(a folder of images, or a project's training images) are read as images only, so the export runs
the search by agreement; :func:`tune_int8` takes masks from callers that have them."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from flexunet.core.compare import RETENTION, Verdict, compare, judge, tolerance_for, truth_agreement
from flexunet.export.int8_quantize import PreparedGraph
from flexunet.export.int8_rewrites import input_nodes, tensor_dims
from flexunet.export.onnx import copy_metadata
from flexunet.export.verify import onnx_predict

#: Estimated cost, in multiply-adds, of each element a convolution kept in FP32 converts between
#: uint8 and float (and NHWC and NCHW) at its input and output, amid INT8 layers.  Measured on the
#: reduced Tiled-MultipleMyeloma UNet: a 1x1 up-sampling convolution at 256x256 with 0.6% of the
#: multiply-adds slowed INT8 by ~8% in FP32, nearly all of it conversions.
CONVERT_COST = 32
#: Smallest mask-dice gain for which :func:`tune_int8` keeps a convolution in FP32.  Smaller changes
#: are what re-quantising with another set of float layers does by chance: on the reduced
#: Tiled-MultipleMyeloma UNet, 27 of 28 convolutions measured between -0.0002 and +0.0003 alone
#: (the first one +0.0027), and keeping two of them "gained" 0.0001 at a measurable cost in speed.
MIN_GAIN = 0.0005
#: Default largest estimated FP32 cost (:func:`conv_costs`, a share of the model's multiply-adds)
#: :func:`tune_int8` may keep.  The FP32 layers then take about that share of the FP32 model's
#: time, so an all-INT8 model 2.2x faster than FP32 stays >= 1.8x.  On the reduced
#: Tiled-MultipleMyeloma UNet the first convolution is both the most sensitive layer (+0.0027 dice
#: alone) and estimated at 5.8%; measured, keeping it FP32 took INT8 from 2.22x to 2.00x.
MAX_FLOAT_SHARE = 0.10


def int8_candidates(model, float_first_conv: bool = False) -> list[str]:
    """Convolutions that :func:`tune_int8` may keep in FP32, in graph order (without the first
    one when it is FP32 anyway)."""
    first = set(input_nodes(model)) if float_first_conv else set()
    return [n.name for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose") and n.name not in first]


@dataclass
class Int8Tuning:
    """What :func:`tune_int8` did: the agreement with FP32 on the check tiles before and after, and
    the convolutions left in FP32 (in the order chosen) with their share of the multiply-adds."""

    target_dice: float
    check_tiles: int
    dice_all_int8: float
    dice: float
    float_nodes: list[str]
    float_share: float  # estimated FP32 cost (conv_costs) as a share of the convolutions' multiply-adds
    max_float_share: float
    candidates: int
    sensitivity: dict[str, float]  # gain in the deciding rule's figure (dice, or retention with masks)
    variants_tried: int
    seconds: float
    rule: str = "agreement"  # what the search met: "agreement" (dice vs FP32) or "retention" (masks)
    passed: bool | None = None
    reference_dice_vs_truth: float | None = None
    retention_all_int8: float | None = None
    retention: float | None = None
    min_retention: float = RETENTION

    def to_dict(self) -> dict:
        return asdict(self)


def conv_costs(model, tile: tuple[int, int, int], convert_cost: float = CONVERT_COST) -> dict[str, float]:
    """Estimated cost of keeping each convolution in FP32 on one ``(h, w, C)`` tile, as a share of
    the model's convolution multiply-adds: its multiply-adds plus ``convert_cost`` per element of
    its input and output (with ``convert_cost=0``, the shares add up to 1)."""
    import copy

    import onnx

    m = copy.deepcopy(model)
    for d, v in zip(m.graph.input[0].type.tensor_type.shape.dim, (1, *tile)):
        d.Clear()
        d.dim_value = v
    del m.graph.value_info[:]
    m = onnx.shape_inference.infer_shapes(m)
    dims = tensor_dims(m)
    weights = {i.name: list(i.dims) for i in m.graph.initializer}

    def elements(name):
        shape = dims.get(name, [])
        return float(np.prod(shape)) if shape and all(shape) else 0.0

    macs, moved = {}, {}
    for n in m.graph.node:
        if n.op_type in ("Conv", "ConvTranspose") and n.input[1] in weights:
            out = dims.get(n.output[0], [])
            area = out[2] * out[3] if len(out) == 4 and out[2] and out[3] else 1
            macs[n.name] = float(np.prod(weights[n.input[1]])) * area
            moved[n.name] = elements(n.input[0]) + elements(n.output[0])
    total = sum(macs.values()) or 1.0
    return {k: (macs[k] + convert_cost * moved[k]) / total for k in macs}


@dataclass(frozen=True)
class _Score:
    """A variant judged: its verdict, its agreement dice and the figure the search gains (the
    deciding rule's: retention with masks, else the dice)."""

    verdict: Verdict
    dice: float

    @property
    def value(self) -> float:
        return self.verdict.retention if self.verdict.rule == "retention" else self.dice


class _Variants:
    """INT8 variants of one prepared graph written to ``dest``, each judged against the FP32 model on
    the check tiles by :func:`~flexunet.core.compare.judge` (calibration reused between variants)."""

    def __init__(self, prep: PreparedGraph, dest: Path, tiles: np.ndarray, check: np.ndarray, input_name: str,
                 threshold: float, method: str, weight_bits: int, float_first_conv: bool, target_dice: float,
                 truth: np.ndarray | None = None, min_retention: float = RETENTION):
        self.prep, self.dest, self.tiles, self.check, self.threshold = prep, dest, tiles, check, threshold
        self.settings = (input_name, method, weight_bits, float_first_conv)
        self.reference = onnx_predict(prep.src, check)
        self.tolerance = tolerance_for("int8", min_dice=target_dice)
        self.truth, self.min_retention = truth, min_retention
        self.reference_vs_truth = truth_agreement(truth, self.reference, threshold).dice if truth is not None else None
        self.tried = 0

    def write(self, keep) -> None:
        self.prep.quantize(self.dest, self.tiles, *self.settings, tuple(keep))

    def score(self, keep) -> _Score:
        self.tried += 1
        self.write(keep)
        probs = onnx_predict(self.dest, self.check)
        agreement = compare(self.reference, probs, self.threshold)
        truth = truth_agreement(self.truth, probs, self.threshold).dice if self.truth is not None else None
        verdict = judge("int8", agreement, self.tolerance, reference_vs_truth=self.reference_vs_truth,
                        candidate_vs_truth=truth, min_retention=self.min_retention)
        return _Score(verdict, agreement.dice)


@dataclass
class _Choice:
    """The convolutions kept in FP32 so far, their score and their estimated cost."""

    keep: list[str]
    score: _Score
    share: float = 0.0


def _sensitivity(variants: _Variants, candidates: list[str], first: _Score, say) -> dict[str, float]:
    """What each candidate alone in FP32 gains in the deciding rule's figure."""
    sensitivity = {}
    for i, name in enumerate(candidates, 1):
        sensitivity[name] = round(variants.score((name,)).value - first.value, 6)
        say(f"INT8 sensitivity {i}/{len(candidates)}: {name} in FP32 -> {first.verdict.rule} "
            f"{first.value + sensitivity[name]:.4f}")
    return sensitivity


def _keep_in_fp32(variants: _Variants, ranked: list[str], cost: dict[str, float], choice: _Choice,
                  max_float: int, max_float_share: float, min_gain: float, say) -> _Choice:
    """Add ``ranked`` convolutions to the FP32 set one at a time while each gains ``min_gain``,
    until the variant passes, ``max_float`` or the cost budget is reached."""
    for name in ranked:
        if choice.score.verdict.passed or len(choice.keep) >= max_float:
            break
        if choice.share + cost.get(name, 0.0) > max_float_share:
            continue
        s = variants.score(choice.keep + [name])
        if s.value >= choice.score.value + min_gain:
            choice = _Choice(choice.keep + [name], s, choice.share + cost.get(name, 0.0))
            say(f"INT8: {len(choice.keep)} convolution(s) in FP32 ({100 * choice.share:.1f}% of multiply-adds) "
                f"-> {s.verdict.rule} {s.value:.4f}")
    return choice


def tune_int8(src: Path, dest: Path, tiles: np.ndarray, check: np.ndarray, input_name: str = "image",
              threshold: float = 0.5, target_dice: float = 0.99, weight_bits: int = 8,
              method: str = "minmax", max_float: int = 8, max_float_share: float = MAX_FLOAT_SHARE,
              float_first_conv: bool = False, min_gain: float = MIN_GAIN, progress=None,
              check_truth: np.ndarray | None = None, min_retention: float = RETENTION) -> Int8Tuning:
    """INT8 with as little FP32 as it takes to pass its verdict against FP32.

    Quantises everything first (:func:`~flexunet.export.int8_quantize.quantize_int8`'s defaults)
    and judges it against the FP32 model on ``check`` tiles, which must not be calibration tiles
    (the caller holds them out of the calibration images, never the test split), with
    :func:`~flexunet.core.compare.judge`: mask dice vs FP32 at ``target_dice``, or, with
    ``check_truth`` (the check tiles' ground-truth label maps, ``NxHxW``), accuracy retention at
    ``min_retention``.  Until it passes, each convolution's sensitivity is measured (what that one
    alone in FP32 gains in the deciding rule's figure, calibration reused), and convolutions are
    kept in FP32 one at a time, the most gain per unit of estimated cost (:func:`conv_costs`)
    first, each only if it gains at least ``min_gain`` (:data:`MIN_GAIN`), until the variant
    passes, ``max_float`` are, or the next would take the estimated FP32 cost over
    ``max_float_share`` of the model's multiply-adds (the speed INT8 is for).  The result is written
    to ``dest`` whatever its verdict; the caller judges it.
    """
    say = progress or (lambda line: None)
    t0 = time.perf_counter()
    with PreparedGraph(src, dest) as prep:
        variants = _Variants(prep, dest, tiles, check, input_name, threshold, method, weight_bits, float_first_conv,
                             target_dice, check_truth, min_retention)
        first = variants.score(())
        say(f"INT8: mask dice vs FP32 {first.dice:.4f} on {len(check)} check tiles; verdict by {first.verdict.rule} "
            f"({first.verdict.why}): {'pass' if first.verdict.passed else 'fail'}")
        candidates = int8_candidates(prep.model, float_first_conv)
        sensitivity: dict[str, float] = {}
        choice = _Choice([], first)
        if not first.verdict.passed and max_float > 0:
            cost = conv_costs(prep.model, tuple(check.shape[1:]))
            sensitivity = _sensitivity(variants, candidates, first, say)
            ranked = sorted((n for n in candidates if sensitivity[n] >= min_gain),
                            key=lambda n: -sensitivity[n] / max(cost.get(n, 1.0), 1e-9))
            choice = _keep_in_fp32(variants, ranked, cost, choice, max_float, max_float_share, min_gain, say)
        if variants.tried > 1:  # the last variant tried may not be the one kept
            variants.write(choice.keep)
    copy_metadata(src, dest, precision="int8")
    return _tuning(first, choice, variants, target_dice, len(candidates), sensitivity, max_float_share, t0)


def _tuning(first: _Score, choice: _Choice, variants: _Variants, target_dice: float, candidates: int,
            sensitivity: dict[str, float], max_float_share: float, t0: float) -> Int8Tuning:
    verdict = choice.score.verdict

    def rounded(value):
        return None if value is None else round(value, 6)

    return Int8Tuning(target_dice=target_dice, check_tiles=int(len(variants.check)),
                      dice_all_int8=round(first.dice, 6), dice=round(choice.score.dice, 6), float_nodes=choice.keep,
                      float_share=round(choice.share, 4), max_float_share=max_float_share, candidates=candidates,
                      sensitivity=sensitivity, variants_tried=variants.tried,
                      seconds=round(time.perf_counter() - t0, 2),
                      rule=verdict.rule, passed=verdict.passed,
                      reference_dice_vs_truth=rounded(variants.reference_vs_truth),
                      retention_all_int8=rounded(first.verdict.retention), retention=rounded(verdict.retention),
                      min_retention=variants.min_retention)
