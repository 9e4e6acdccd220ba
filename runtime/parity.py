"""Parity: the same images through a reference model and one or more candidates, same tiling.

For every image and candidate: max and mean ``|Δp|`` (over all probability channels), mask dice
and IoU against the reference's mask, the fraction of pixels whose label flipped, and, with ground
truth masks, each model's dice against the truth; overall, the same figures pooled over all pixels
of all images (intersections and sums accumulated, not per-image means) and the worst image.  Each
candidate gets a verdict from :func:`flexunet.core.compare.judge`: agreement with the reference by the
tolerance table (by its precision), or, for a BF16/FP16/INT8 candidate with ground truth, accuracy
retention (its dice vs truth at least 99% of the reference's); the report names the rule that decided.
Every figure follows the comparator's conventions (per-class booleans, both-empty = 1.0, pooled counts).
The worst image of a candidate is the one with the lowest dice against the reference (ties: more
flipped pixels, then larger max ``|Δp|``).

Images are processed one at a time (memory is bounded by one image and its probabilities per
model); of each candidate's worst image only its downscaled row of the disagreement figure
(:mod:`flexunet.runtime.disagreement_figure`) is kept.  The reports (parity.json, parity.md,
worst.png) are written by :mod:`flexunet.runtime.parity_report`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from flexunet.core.compare import (RETENTION, TOLERANCES, Comparison, MaskAgreement, ProbDiff, Tolerance, Verdict,
                                   judge, mask_scores, num_labels, tolerance_for)
from flexunet.core.errors import (EXIT_FAILED, EXIT_OK, EXIT_SKIPPED, FlexunetError, ImageReadError, ModelError,
                                   one_line)
from flexunet.core.imageio import expand_inputs, read_image
from flexunet.runtime.backends.base import BACKENDS, KERAS_SUFFIXES
from flexunet.runtime.disagreement_figure import figure_row, label_colors
from flexunet.runtime.ground_truth import read_truth, truth_index
from flexunet.runtime.layout import FIT, check_memory, tile_source


# -- tolerances and verdicts -----------------------------------------------------------------------
def parse_min_dice(values: Sequence[str]) -> tuple[float | None, dict[str, float]]:
    """``--min-dice`` values -> (value for every candidate or None, {precision: value}).

    Each value is ``0.98`` (every candidate) or ``PRECISION=0.98`` (candidates of that precision).

    Raises:
        FlexunetError: a malformed value or one outside 0..1.
    """
    overall, by_precision = None, {}
    for text in values:
        key, sep, number = str(text).partition("=")
        if not sep:
            key, number = None, text
        try:
            value = float(number)
        except ValueError:
            value = None
        if value is None or not 0.0 <= value <= 1.0 or (key is not None and not key.strip()):
            raise FlexunetError(f"--min-dice {text!r}: expected a dice between 0 and 1, like 0.99 or int8=0.98")
        if key is None:
            overall = value
        else:
            by_precision[key.strip().lower()] = value
    return overall, by_precision


def exit_code(failed: int, skipped: int) -> int:
    """The verdict takes precedence: 1 if any candidate failed, else 3 if any image was skipped,
    else 0."""
    if failed:
        return EXIT_FAILED
    if skipped:
        return EXIT_SKIPPED
    return EXIT_OK


# -- models ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """A model on the command line: ``PATH`` or ``PATH@BACKEND`` (e.g. ``model.onnx@onnxruntime-cpu``)."""

    path: Path
    backend: str = "auto"

    @classmethod
    def parse(cls, text: str | os.PathLike) -> "ModelSpec":
        text = str(text)
        head, sep, tail = text.rpartition("@")
        if sep and tail in BACKENDS and not Path(text).exists():
            return cls(Path(head), tail)
        return cls(Path(text))

    def __str__(self) -> str:
        return str(self.path) if self.backend == "auto" else f"{self.path}@{self.backend}"

    @property
    def label(self) -> str:
        """The file name, with ``@BACKEND`` when one was asked for (tables and figures)."""
        return self.path.name if self.backend == "auto" else f"{self.path.name}@{self.backend}"


# -- results -----------------------------------------------------------------------------------------
@dataclass
class CandidateResult:
    """Everything measured for one candidate."""

    spec: ModelSpec
    backend: str
    precision: str
    tolerance: Tolerance
    pooled: MaskAgreement
    diff: ProbDiff = field(default_factory=ProbDiff)
    truth: MaskAgreement | None = None
    worst: dict | None = None             # the worst image's per-image record
    worst_row: np.ndarray | None = None   # its row of worst.png
    worst_size: tuple[int, int] | None = None
    failures: list[str] = field(default_factory=list)
    verdict: Verdict | None = None  # set when every image is compared

    @property
    def passed(self) -> bool:
        return not self.failures

    def is_worse(self, rec: dict) -> bool:
        """Whether a per-image record is worse than the worst so far (lower dice, then more
        flipped pixels, then larger max ``|Δp|``)."""
        def rank(r: dict) -> tuple:
            return r["dice"], -r["flipped_fraction"], -r["max_abs_diff"]

        return self.worst is None or rank(rec) < rank(self.worst)


@dataclass
class ParityReport:
    """The outcome of :func:`run_parity` (written by :mod:`flexunet.runtime.parity_report`)."""

    reference: ModelSpec
    reference_backend: str
    reference_precision: str
    layout: dict
    candidates: list[CandidateResult]
    images: list[dict]
    skipped: list[tuple[str, str]]
    total_images: int
    masks_dir: str | None = None
    truth_missing: list[str] = field(default_factory=list)
    reference_truth: MaskAgreement | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return sum(not c.passed for c in self.candidates)

    @property
    def exit_code(self) -> int:
        return exit_code(self.failed, len(self.skipped))


# -- the run -----------------------------------------------------------------------------------------
def _open(spec: ModelSpec, config, **options):
    """A Segmenter of ``spec``; parity compares the file named, so ``auto`` never follows a tune
    record to another path (:mod:`flexunet.runtime.autoselect`)."""
    from flexunet.runtime.autoselect import untuned
    from flexunet.runtime.segmenter import Segmenter

    return Segmenter(spec.path, backend=untuned(spec.path, spec.backend),
                     config=config if spec.path.suffix.lower() in KERAS_SUFFIXES else None, **options)


def _open_models(ref_spec: ModelSpec, specs: Sequence[ModelSpec], config, opened: list, tile, overlap, blend,
                 **common) -> None:
    """Open the reference, then every candidate with the reference's tiling, into ``opened``
    (which the caller closes, whatever happens)."""
    ref = _open(ref_spec, config, tile=tile, overlap=overlap, blend=blend, **common)
    opened.append(ref)
    layout = ref.layout()
    if layout.tile is None and not layout.fit:
        raise FlexunetError("parity compares tiled inference; the reference has no tile size")
    try:
        check_memory(layout, ref.info, ref.batch_size, tile_source(tile, ref.backend.fixed_size))
    except FlexunetError as exc:
        raise FlexunetError(f"{ref_spec.path}: {exc}") from None
    for spec in specs:
        try:
            seg = _open(spec, config, tile=FIT if layout.fit else layout.tile, overlap=layout.overlap,
                        blend=layout.blend, **common)
        except FlexunetError as exc:
            raise type(exc)(f"candidate {spec}: {exc}") from None
        opened.append(seg)
        if seg.info.num_classes != ref.info.num_classes:
            raise ModelError(f"{spec.path}: {seg.info.num_classes} classes, but the reference "
                             f"{ref_spec.path} has {ref.info.num_classes}; they cannot be compared")


def check_precisions(by_precision: dict[str, float], candidates: Sequence) -> None:
    """FlexunetError for a ``--min-dice PRECISION=`` that would apply to nothing: a precision neither
    in the tolerance table nor of a candidate (a typo such as ``int4``)."""
    have = sorted({seg.info.precision.lower() for seg in candidates})
    unknown = sorted(set(by_precision) - set(TOLERANCES) - set(have))
    if unknown:
        raise FlexunetError(f"--min-dice {unknown[0]}=: no candidate has precision {unknown[0]!r} (they have "
                            f"{', '.join(have)}; the tolerance table knows {', '.join(TOLERANCES)})")


def run_parity(reference: ModelSpec | str, candidates: Sequence[ModelSpec | str], images: Sequence[str | os.PathLike], *,
               masks_dir: str | os.PathLike | None = None, tile=None, overlap: int | None = None,
               blend: str | None = None, batch_size: int = 4, threshold: float | None = None,
               threads: int | None = None, config: str | os.PathLike | None = None,
               min_dice: Sequence[str] | float | None = None, max_abs_diff: float | None = None,
               per_image: bool = False, min_retention: float = RETENTION,
               progress: Callable[[str], None] | None = None) -> ParityReport:
    """Run the reference and every candidate on ``images`` with the reference's tiling; compare.

    Args:
        reference, candidates: model files (:class:`ModelSpec` or ``PATH[@BACKEND]``).
        images: image files and folders.
        masks_dir: ground-truth masks named like the images (any image extension); when none
            of the images' masks can be scored, the truth figures are None ("n/a"), never 1.0.
        tile, overlap, blend: the tiling for every model (default: the reference's).
        batch_size, threshold, threads, config: as for :class:`~flexunet.runtime.segmenter.Segmenter`
            (``config`` goes to ``.keras`` models only).
        min_dice: ``--min-dice`` values (see :func:`parse_min_dice`) or one float for all.
        max_abs_diff: also fail a candidate whose max ``|Δp|`` exceeds this.
        per_image: also fail a candidate when any image's dice is below its tolerance.
        min_retention: with ground truth, a BF16/FP16/INT8 candidate passes when its dice vs truth
            reaches this share of the reference's (agreement is then reported, not decisive).
        progress: called with one line per image.

    Raises:
        FlexunetError: no images, a ``masks_dir`` with no mask named like any of them, a model
            that cannot be loaded or run with this tiling (or whose tile batches cannot fit in
            memory), models that disagree on the number of classes, a ``min_dice`` precision no
            candidate has (and the tolerance table does not know), or no image could be read.
    """
    ref_spec = reference if isinstance(reference, ModelSpec) else ModelSpec.parse(reference)
    specs = [c if isinstance(c, ModelSpec) else ModelSpec.parse(c) for c in candidates]
    if not specs:
        raise FlexunetError("parity needs at least one --candidate model")
    if isinstance(min_dice, (int, float)):
        overall, by_precision = float(min_dice), {}
    else:
        overall, by_precision = parse_min_dice(min_dice or ())
    paths = expand_inputs(images)
    if not paths:
        raise FlexunetError(f"no images in {', '.join(map(str, images))}")
    truth = truth_index(masks_dir, paths) if masks_dir is not None else None

    start = time.perf_counter()
    segs: list = []
    try:
        _open_models(ref_spec, specs, config, segs, tile, overlap, blend, batch_size=batch_size,
                     threshold=threshold, threads=threads)
        check_precisions(by_precision, segs[1:])
        run = _Comparer(ref_spec, segs[0], specs, segs[1:],
                        lambda precision: tolerance_for(precision, overall, by_precision, max_abs_diff, per_image),
                        truth, progress or (lambda line: None))
        run.min_retention = min_retention
        return run.compare(paths, masks_dir, start)
    finally:
        for seg in segs:
            seg.close()


class _Comparer:
    """One parity run over opened models: the pooled figures of each candidate, per-image records,
    the worst image of each."""

    def __init__(self, ref_spec: ModelSpec, ref, specs, cand_segs, tolerance: Callable[[str], Tolerance],
                 truth_index: dict[str, Path] | None, say: Callable[[str], None]):
        self.ref_spec, self.ref, self.cand_segs, self.truth_index, self.say = ref_spec, ref, cand_segs, truth_index, say
        self.labels = num_labels(ref.info.num_classes)
        self.colors = label_colors(ref.info.class_colors, self.labels)
        has_truth = truth_index is not None
        self.results = [CandidateResult(spec, seg.backend.name, seg.info.precision, tolerance(seg.info.precision),
                                        MaskAgreement.empty(self.labels),
                                        truth=MaskAgreement.empty(self.labels) if has_truth else None)
                        for spec, seg in zip(specs, cand_segs)]
        self.ref_truth = MaskAgreement.empty(self.labels) if has_truth else None
        self.truth_missing: list[str] = []
        self.min_retention = RETENTION

    def compare(self, paths: Sequence[Path], masks_dir, start: float) -> ParityReport:
        ref = self.ref
        self.say(f"reference: {self.ref_spec} ({ref.backend.name}, {ref.info.precision}); {ref.describe()}")
        for r in self.results:
            self.say(f"candidate: {r.spec} ({r.backend}, {r.precision}, min dice {r.tolerance.min_dice})")
        records, skipped = [], []
        width = len(str(len(paths)))
        for k, path in enumerate(paths, 1):
            prefix = f"[{k:{width}d}/{len(paths)}] {one_line(path.name)}"
            try:
                image = read_image(path)
            except ImageReadError as exc:
                skipped.append((str(path), one_line(str(exc))))
                self.say(f"{prefix}: skipped ({skipped[-1][1]})")
                continue
            rec, notes = self.image(path, image)
            records.append(rec)
            self.say(f"{prefix}: " + "; ".join(notes))
        if not records:
            raise FlexunetError(f"none of the {len(paths)} images could be read; nothing was compared")
        if self.truth_index is not None and len(self.truth_missing) == len(records):
            self.ref_truth = None  # no image was scored against the truth: no truth figure (n/a)
            for r in self.results:
                r.truth = None
        ref_truth = self.ref_truth.dice if self.ref_truth is not None else None
        for r in self.results:
            r.verdict = judge(r.precision, Comparison(r.pooled, r.diff), r.tolerance, worst_dice=r.worst["dice"],
                              reference_vs_truth=ref_truth, candidate_vs_truth=r.truth.dice if r.truth else None,
                              min_retention=self.min_retention)
            r.failures = list(r.verdict.failures)
        lay = ref.layout()
        return ParityReport(
            reference=self.ref_spec, reference_backend=ref.backend.name, reference_precision=ref.info.precision,
            layout={"tile": FIT if lay.fit else list(lay.tile) if lay.tile else None, "overlap": lay.overlap,
                    "blend": lay.blend,
                    "batch_size": ref.batch_size, "threshold": ref.threshold},
            candidates=self.results, images=records, skipped=skipped, total_images=len(paths),
            masks_dir=str(masks_dir) if masks_dir is not None else None, truth_missing=self.truth_missing,
            reference_truth=self.ref_truth, seconds=time.perf_counter() - start)

    def image(self, path: Path, image: np.ndarray) -> tuple[dict, list[str]]:
        """Compare every candidate with the reference on one image: its record and progress notes."""
        base = self.ref.segment(image)
        truth = None
        if self.truth_index is not None:
            truth = read_truth(self.truth_index, path, self.ref.info, image.shape[:2])
            if truth is None:
                self.truth_missing.append(path.name)
        rec = {"image": path.name, "path": str(path), "height": int(image.shape[0]), "width": int(image.shape[1]),
               "reference_dice_vs_truth": None, "candidates": []}
        if truth is not None:
            self.ref_truth += MaskAgreement.of(truth, base.labels, self.labels)
            rec["reference_dice_vs_truth"] = mask_scores(truth, base.labels, self.labels)["dice"]
        notes = []
        for r, seg in zip(self.results, self.cand_segs):
            crec = self.candidate(r, seg.segment(image), base, truth, path, image)
            rec["candidates"].append(crec)
            notes.append(f"{r.spec.label} dice {crec['dice']:.5f} max|dp| {crec['max_abs_diff']:.2g}")
        return rec, notes

    def candidate(self, r: CandidateResult, res, base, truth, path: Path, image: np.ndarray) -> dict:
        """Add one candidate's segmentation of an image to its figures; its per-image record."""
        diff = ProbDiff.of(base.probabilities, res.probabilities)
        scores = mask_scores(base.labels, res.labels, self.labels)
        r.pooled += MaskAgreement.of(base.labels, res.labels, self.labels)
        r.diff += diff
        crec = {"model": str(r.spec), "label": r.spec.label, **scores, "max_abs_diff": diff.max,
                "mean_abs_diff": diff.mean, "dice_vs_truth": None}
        if truth is not None:
            r.truth += MaskAgreement.of(truth, res.labels, self.labels)
            crec["dice_vs_truth"] = mask_scores(truth, res.labels, self.labels)["dice"]
        worst = {"image": path.name, **crec}
        if r.is_worse(worst):
            r.worst = worst
            title = (f"{r.spec.label} vs {self.ref_spec.label} | {path.name} | dice {scores['dice']:.5f}"
                     f" | flipped {scores['flipped_fraction'] * 100:.3f}% | max |dp| {diff.max:.3g}")
            r.worst_row = figure_row(image, base.labels, res.labels, self.colors, title)
            r.worst_size = image.shape[:2]
        return crec
