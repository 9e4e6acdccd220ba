"""Parity: the same images through a reference model and one or more candidates, same tiling.

For every image and candidate: max and mean ``|Δp|`` (over all probability channels), mask dice
and IoU against the reference's mask, the fraction of pixels whose label flipped, and, with ground
truth masks, each model's dice against the truth; overall, the same figures pooled over all pixels
of all images (intersections and sums accumulated, not per-image means) and the worst image.  Each
candidate gets a verdict from the tolerance table of :mod:`flexunet.core.compare` (by its precision),
whose conventions (per-class booleans, both-empty = 1.0, pooled counts) every figure here follows.
The worst image of a candidate is the one with the lowest dice against the reference (ties: more
flipped pixels, then larger max ``|Δp|``).

Images are processed one at a time (memory is bounded by one image and its probabilities per
model); for the disagreement figure only small downscaled panels of each candidate's worst image
are kept.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from flexunet.core import masks
from flexunet.core.compare import (Comparison, MaskAgreement, ProbDiff, Tolerance, mask_scores, num_labels,
                                   tolerance_for)
from flexunet.core.atomic import write_text
from flexunet.runtime.backends.base import BACKENDS
from flexunet.core.errors import EXIT_FAILED, EXIT_OK, EXIT_SKIPPED, FlexunetError, ImageReadError, ModelError
from flexunet.core.imageio import IMAGE_EXTENSIONS, expand_inputs, list_images, read_image, read_mask, write_image

log = logging.getLogger("flexunet")


# worst.png layout: one row per candidate, four panels side by side, 1600 px wide in total.
PANELS = ("input", "reference", "candidate", "differences")
PANEL_WIDTH = 394
GAP = 8
HEADER = 28
FIGURE_WIDTH = len(PANELS) * PANEL_WIDTH + (len(PANELS) - 1) * GAP  # 1600
BACKGROUND = (32, 32, 32)  # BGR of gaps and header bars

# Colours (BGR) of the difference panel.
DIFF_COLORS = {
    "agree_foreground": (90, 90, 90),
    "reference_only": (0, 0, 255),     # red: foreground in the reference only
    "candidate_only": (255, 255, 0),   # cyan: foreground in the candidate only
    "other_class": (0, 215, 255),      # yellow (multiclass): both foreground, different classes
}
DIFF_LEGEND = "red: reference only, cyan: candidate only, yellow: other class"


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


def masks_index(folder: str | os.PathLike) -> dict[str, Path]:
    """Ground-truth masks in ``folder`` by file stem (a ``.png`` wins over other extensions)."""
    order = {ext: i for i, ext in enumerate((".png",) + IMAGE_EXTENSIONS)}
    found: dict[str, Path] = {}
    for p in sorted(list_images(folder), key=lambda p: order.get(p.suffix.lower(), 99)):
        found.setdefault(p.stem, p)
    return found


def truth_labels(path: Path, num_classes: int, class_colors: Sequence) -> np.ndarray:
    """A ground-truth mask file -> label map: thresholded (binary models) or by class colour."""
    if num_classes == 1:
        return masks.binary_labels(read_mask(path))
    rgb_map = {tuple(int(v) for v in c): i for i, c in enumerate(class_colors)}
    return masks.class_labels(read_mask(path, color=True), rgb_map)


# -- the disagreement figure -------------------------------------------------------------------------
def _fit(image: np.ndarray, width: int, nearest: bool) -> np.ndarray:
    h, w = image.shape[:2]
    height = max(1, round(h * width / w))
    shrink = width < w
    interp = cv2.INTER_NEAREST if nearest or not shrink else cv2.INTER_AREA
    return cv2.resize(image, (width, height), interpolation=interp)


def _fit_mask(mask: np.ndarray, width: int) -> np.ndarray:
    """A boolean mask resized to ``width``: a pixel is set when any pixel it covers is set."""
    h, w = mask.shape[:2]
    height = max(1, round(h * width / w))
    m = mask.astype(np.uint8) * 255
    if width < w:
        return cv2.resize(m, (width, height), interpolation=cv2.INTER_AREA) > 0
    return cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST) > 0


def difference_map(ref: np.ndarray, cand: np.ndarray, width: int | None = None) -> np.ndarray:
    """BGR picture of where two label maps disagree (colours: :data:`DIFF_COLORS`), optionally
    resized to ``width`` so that any disagreement stays visible."""
    fg_ref, fg_cand = ref > 0, cand > 0
    layers = {
        "agree_foreground": fg_ref & fg_cand & (ref == cand),
        "reference_only": fg_ref & ~fg_cand,
        "candidate_only": fg_cand & ~fg_ref,
        "other_class": fg_ref & fg_cand & (ref != cand),
    }
    h, w = ref.shape[:2]
    if width is not None:
        layers = {k: _fit_mask(v, width) for k, v in layers.items()}
        h, w = next(iter(layers.values())).shape
    out = np.zeros((h, w, 3), np.uint8)
    for name, layer in layers.items():  # later layers (the differences) drawn over earlier ones
        out[layer] = DIFF_COLORS[name]
    return out


def _header(text: str, right: str = "") -> np.ndarray:
    bar = np.full((HEADER, FIGURE_WIDTH, 3), BACKGROUND, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(bar, text[:110], (6, 19), font, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    if right:
        (tw, _), _ = cv2.getTextSize(right, font, 0.45, 1)
        cv2.putText(bar, right, (FIGURE_WIDTH - tw - 6, 19), font, 0.45, (200, 200, 200), 1, cv2.LINE_AA)
    return bar


def figure_row(image: np.ndarray, ref: np.ndarray, cand: np.ndarray, colors: Sequence, title: str,
               legend: str = DIFF_LEGEND) -> np.ndarray:
    """One row of worst.png: a header, then input | reference mask | candidate mask | differences,
    each :data:`PANEL_WIDTH` px wide."""
    if image.ndim == 2 or image.shape[2] == 1:
        image = cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    panels = [_fit(image, PANEL_WIDTH, nearest=False),
              _fit(masks.colorize(ref, colors), PANEL_WIDTH, nearest=True),
              _fit(masks.colorize(cand, colors), PANEL_WIDTH, nearest=True),
              difference_map(ref, cand, PANEL_WIDTH)]
    height = panels[0].shape[0]
    body = np.full((height, FIGURE_WIDTH, 3), BACKGROUND, np.uint8)
    for i, panel in enumerate(panels):
        x = i * (PANEL_WIDTH + GAP)
        body[:, x:x + PANEL_WIDTH] = panel[:height]
    return np.concatenate([_header(title, legend), body])


def figure_size(image_sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """``(height, width)`` of worst.png for the worst images' ``(h, w)``, one per candidate."""
    rows = [HEADER + max(1, round(h * PANEL_WIDTH / w)) for h, w in image_sizes]
    return sum(rows) + GAP * (len(rows) - 1), FIGURE_WIDTH


def stack_rows(rows: Sequence[np.ndarray]) -> np.ndarray:
    parts = []
    for i, row in enumerate(rows):
        if i:
            parts.append(np.full((GAP, FIGURE_WIDTH, 3), BACKGROUND, np.uint8))
        parts.append(row)
    return np.concatenate(parts)


# -- the run -----------------------------------------------------------------------------------------
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

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> dict:
        worst = self.worst or {}
        return {
            "model": str(self.spec), "backend": self.backend, "precision": self.precision,
            "tolerance": {"min_dice": self.tolerance.min_dice, "max_abs_diff": self.tolerance.max_abs_diff,
                          "per_image": self.tolerance.per_image, "source": self.tolerance.source},
            "overall": {
                "dice": self.pooled.dice, "iou": self.pooled.iou, "per_class_dice": self.pooled.per_class_dice,
                "flipped_fraction": self.pooled.flipped_fraction, "flipped_pixels": self.pooled.flipped,
                "pixels": self.pooled.pixels, "max_abs_diff": self.diff.max, "mean_abs_diff": self.diff.mean,
                "worst_image": worst.get("image"), "worst_image_dice": worst.get("dice"),
                "dice_vs_truth": self.truth.dice if self.truth is not None else None,
                "per_class_dice_vs_truth": self.truth.per_class_dice if self.truth is not None else None,
            },
            "verdict": "pass" if self.passed else "fail",
            "failures": list(self.failures),
        }


@dataclass
class ParityReport:
    """The outcome of :func:`run_parity`; :meth:`to_dict` is parity.json."""

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

    def to_dict(self) -> dict:
        from flexunet import __version__

        return {
            "tool": "flexunet parity", "flexunet_version": __version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(self.seconds, 3),
            "reference": {"model": str(self.reference), "backend": self.reference_backend,
                          "precision": self.reference_precision,
                          "dice_vs_truth": self.reference_truth.dice if self.reference_truth else None,
                          "per_class_dice_vs_truth":
                              self.reference_truth.per_class_dice if self.reference_truth else None},
            "layout": self.layout,
            "conventions": "dice/IoU: both masks empty -> 1.0, one empty -> 0.0; binary models scored on the "
                           "foreground, multiclass on the mean over foreground classes; overall figures pooled "
                           "over all pixels of all images",
            "images": {"total": self.total_images, "compared": len(self.images),
                       "skipped": [{"path": p, "reason": r} for p, r in self.skipped]},
            "truth": None if self.masks_dir is None else {
                "masks_dir": self.masks_dir, "found": len(self.images) - len(self.truth_missing),
                "missing": list(self.truth_missing)},
            "candidates": [c.summary() for c in self.candidates],
            "per_image": self.images,
            "passed": self.failed == 0,
            "exit_code": self.exit_code,
        }

    def to_markdown(self) -> str:
        ref_truth = _fmt(self.reference_truth.dice if self.reference_truth else None)
        lay = self.layout
        tiling = ("whole image" if lay["tile"] is None else
                  f"tiles {lay['tile'][0]}x{lay['tile'][1]}, overlap {lay['overlap']}, {lay['blend']} blend")
        lines = [
            "# Parity report", "",
            f"Reference `{self.reference}` ({self.reference_backend}, {self.reference_precision}); "
            f"{tiling}, batch {lay['batch_size']}, the same for every model.",
            f"Images: {len(self.images)} compared of {self.total_images}"
            + (f", {len(self.skipped)} skipped" if self.skipped else "") + ".",
            "Dice and IoU: binary models on the foreground, multiclass on the mean over foreground "
            "classes; both masks empty counts as 1.0. Overall figures are pooled over all pixels.", "",
            "| model | precision | pooled dice vs ref | IoU vs ref | worst image (dice) | max \\|Δp\\| | "
            "mean \\|Δp\\| | flipped % | dice vs truth | min dice | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| reference `{self.reference.label}` | {self.reference_precision} | — | — | — | — | — | — | "
            f"{ref_truth} | — | — |",
        ]
        for c in self.candidates:
            s = c.summary()["overall"]
            worst = f"{s['worst_image']} ({_fmt(s['worst_image_dice'])})" if s["worst_image"] else "—"
            lines.append(
                f"| `{c.spec.label}` | {c.precision} | {_fmt(s['dice'])} | {_fmt(s['iou'])} | {worst} | "
                f"{s['max_abs_diff']:.3g} | {s['mean_abs_diff']:.3g} | {100 * s['flipped_fraction']:.4f} | "
                f"{_fmt(s['dice_vs_truth'])} | {c.tolerance.min_dice} | "
                f"{'**pass**' if c.passed else '**FAIL**'} |")
        for c in self.candidates:
            for reason in c.failures:
                lines.append(f"\n`{c.spec.label}` fails: {reason}")
        if self.truth_missing:
            lines.append(f"\nNo ground truth for {len(self.truth_missing)} image(s): "
                         + ", ".join(self.truth_missing[:20]) + (" ..." if len(self.truth_missing) > 20 else ""))
        if self.skipped:
            lines += ["", "Skipped:"] + [f"- {reason}" for _, reason in self.skipped]
        lines += ["", "## Per image", "",
                  "| image | model | dice vs ref | IoU vs ref | max \\|Δp\\| | mean \\|Δp\\| | flipped % | dice vs truth |",
                  "|---|---|---|---|---|---|---|---|"]
        for rec in self.images:
            if rec.get("reference_dice_vs_truth") is not None:
                lines.append(f"| {rec['image']} | reference | — | — | — | — | — | "
                             f"{_fmt(rec['reference_dice_vs_truth'])} |")
            for c in rec["candidates"]:
                lines.append(f"| {rec['image']} | `{c['label']}` | {_fmt(c['dice'])} | {_fmt(c['iou'])} | "
                             f"{c['max_abs_diff']:.3g} | {c['mean_abs_diff']:.3g} | "
                             f"{100 * c['flipped_fraction']:.4f} | {_fmt(c['dice_vs_truth'])} |")
        lines += ["", "`worst.png`: each candidate's worst image: input | reference mask | candidate mask | "
                      f"differences ({DIFF_LEGEND}).", ""]
        return "\n".join(lines)

    def figure(self) -> np.ndarray | None:
        """worst.png as a BGR array (None when no image was compared)."""
        rows = [c.worst_row for c in self.candidates if c.worst_row is not None]
        return stack_rows(rows) if rows else None


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.6f}"


def _worse(rec: dict, than: dict | None) -> bool:
    if than is None:
        return True
    return (rec["dice"], -rec["flipped_fraction"], -rec["max_abs_diff"]) < \
        (than["dice"], -than["flipped_fraction"], -than["max_abs_diff"])


def _open(spec: ModelSpec, config, **options):
    from flexunet.runtime.segmenter import Segmenter

    return Segmenter(spec.path, backend=spec.backend,
                     config=config if spec.path.suffix.lower() == ".keras" else None, **options)


def run_parity(reference: ModelSpec | str, candidates: Sequence[ModelSpec | str], images: Sequence[str | os.PathLike], *,
               masks_dir: str | os.PathLike | None = None, tile=None, overlap: int | None = None,
               blend: str | None = None, batch_size: int = 4, threshold: float | None = None,
               threads: int | None = None, config: str | os.PathLike | None = None,
               min_dice: Sequence[str] | float | None = None, max_abs_diff: float | None = None,
               per_image: bool = False, progress: Callable[[str], None] | None = None) -> ParityReport:
    """Run the reference and every candidate on ``images`` with the reference's tiling; compare.

    Args:
        reference, candidates: model files (:class:`ModelSpec` or ``PATH[@BACKEND]``).
        images: image files and folders.
        masks_dir: ground-truth masks named like the images (any image extension).
        tile, overlap, blend: the tiling for every model (default: the reference's).
        batch_size, threshold, threads, config: as for :class:`~runtime.segmenter.Segmenter`
            (``config`` goes to ``.keras`` models only).
        min_dice: ``--min-dice`` values (see :func:`parse_min_dice`) or one float for all.
        max_abs_diff: also fail a candidate whose max ``|Δp|`` exceeds this.
        per_image: also fail a candidate when any image's dice is below its tolerance.
        progress: called with one line per image.

    Raises:
        FlexunetError: no images, a model that cannot be loaded or run with this tiling, models
            that disagree on the number of classes, or no image could be read.
    """
    say = progress or (lambda line: None)
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
    truth_index = masks_index(masks_dir) if masks_dir is not None else None

    start = time.perf_counter()
    segs = []
    try:
        common = dict(batch_size=batch_size, threshold=threshold, threads=threads)
        ref = _open(ref_spec, config, tile=tile, overlap=overlap, blend=blend, **common)
        segs.append(ref)
        layout = ref.layout()
        if layout.tile is None:
            raise FlexunetError("parity compares tiled inference; the reference has no tile size")
        for spec in specs:
            try:
                seg = _open(spec, config, tile=layout.tile, overlap=layout.overlap, blend=layout.blend, **common)
            except FlexunetError as exc:
                raise type(exc)(f"candidate {spec}: {exc}") from None
            segs.append(seg)
            if seg.info.num_classes != ref.info.num_classes:
                raise ModelError(f"{spec.path}: {seg.info.num_classes} classes, but the reference "
                                 f"{ref_spec.path} has {ref.info.num_classes}; they cannot be compared")
        return _compare(ref_spec, ref, specs, segs[1:], paths, truth_index, masks_dir, overall, by_precision,
                        max_abs_diff, per_image, say, start)
    finally:
        for seg in segs:
            seg.close()


def _compare(ref_spec, ref, specs, cand_segs, paths, truth_index, masks_dir, overall, by_precision,
             max_abs_diff, per_image, say, start) -> ParityReport:
    info = ref.info
    labels = num_labels(info.num_classes)
    colors = list(info.class_colors)
    if len(colors) < labels:  # colourising needs one colour per label
        colors += [(255, 255, 255)] * (labels - len(colors))
    results = [CandidateResult(spec, seg.backend.name, seg.info.precision,
                               tolerance_for(seg.info.precision, overall, by_precision, max_abs_diff,
                                                       per_image),
                               MaskAgreement.empty(labels))
               for spec, seg in zip(specs, cand_segs)]
    has_truth = truth_index is not None
    if has_truth:
        for r in results:
            r.truth = MaskAgreement.empty(labels)
    ref_truth = MaskAgreement.empty(labels) if has_truth else None
    records, skipped, truth_missing = [], [], []
    say(f"reference: {ref_spec} ({ref.backend.name}, {ref.info.precision}); {ref.describe()}")
    for r in results:
        say(f"candidate: {r.spec} ({r.backend}, {r.precision}, min dice {r.tolerance.min_dice})")
    width = len(str(len(paths)))
    for k, path in enumerate(paths, 1):
        prefix = f"[{k:{width}d}/{len(paths)}] {path.name}"
        try:
            image = read_image(path)
        except ImageReadError as exc:
            skipped.append((str(path), str(exc)))
            say(f"{prefix}: skipped ({exc})")
            continue
        base = ref.segment(image)
        truth = None
        if has_truth:
            truth = _read_truth(truth_index, path, info, image.shape[:2])
            if truth is None:
                truth_missing.append(path.name)
        rec = {"image": path.name, "path": str(path), "height": int(image.shape[0]), "width": int(image.shape[1]),
               "reference_dice_vs_truth": None, "candidates": []}
        if truth is not None:
            agreement = MaskAgreement.of(truth, base.labels, labels)
            ref_truth += agreement
            rec["reference_dice_vs_truth"] = mask_scores(truth, base.labels, labels)["dice"]
        notes = []
        for r, seg in zip(results, cand_segs):
            res = seg.segment(image)
            diff = ProbDiff.of(base.probabilities, res.probabilities)
            scores = mask_scores(base.labels, res.labels, labels)
            r.pooled += MaskAgreement.of(base.labels, res.labels, labels)
            r.diff += diff
            crec = {"model": str(r.spec), "label": r.spec.label, **scores, "max_abs_diff": diff.max, "mean_abs_diff": diff.mean,
                    "dice_vs_truth": None}
            if truth is not None:
                r.truth += MaskAgreement.of(truth, res.labels, labels)
                crec["dice_vs_truth"] = mask_scores(truth, res.labels, labels)["dice"]
            rec["candidates"].append(crec)
            worst_key = {"image": path.name, **crec}
            if _worse(worst_key, r.worst):
                r.worst = worst_key
                title = (f"{r.spec.label} vs {ref_spec.label} | {path.name} | dice {scores['dice']:.5f}"
                         f" | flipped {scores['flipped_fraction'] * 100:.3f}% | max |dp| {diff.max:.3g}")
                r.worst_row = figure_row(image, base.labels, res.labels, colors, title)
                r.worst_size = image.shape[:2]
            notes.append(f"{r.spec.label} dice {scores['dice']:.5f} max|dp| {diff.max:.2g}")
            del res
        records.append(rec)
        say(f"{prefix}: " + "; ".join(notes))
    if not records:
        raise FlexunetError(f"none of the {len(paths)} images could be read; nothing was compared")
    for r in results:
        r.failures = r.tolerance.failures(Comparison(r.pooled, r.diff), r.worst["dice"])
    lay = ref.layout()
    return ParityReport(
        reference=ref_spec, reference_backend=ref.backend.name, reference_precision=ref.info.precision,
        layout={"tile": list(lay.tile) if lay.tile else None, "overlap": lay.overlap, "blend": lay.blend,
                "batch_size": ref.batch_size, "threshold": ref.threshold},
        candidates=results, images=records, skipped=skipped, total_images=len(paths),
        masks_dir=str(masks_dir) if masks_dir is not None else None, truth_missing=truth_missing,
        reference_truth=ref_truth, seconds=time.perf_counter() - start)


def _read_truth(index: dict[str, Path], image_path: Path, info, shape) -> np.ndarray | None:
    """The ground-truth labels of an image, or None (with a warning) when missing or unusable."""
    path = index.get(image_path.stem)
    if path is None:
        log.warning(f"{image_path.name}: no ground-truth mask named {image_path.stem}.* ; not scored against truth")
        return None
    try:
        truth = truth_labels(path, info.num_classes, info.class_colors)
    except ImageReadError as exc:
        log.warning(f"{exc}; {image_path.name} not scored against truth")
        return None
    if truth.shape != tuple(shape):
        log.warning(f"{path}: mask is {truth.shape[1]}x{truth.shape[0]} but {image_path.name} is "
                    f"{shape[1]}x{shape[0]}; not scored against truth")
        return None
    return truth


# -- reports -----------------------------------------------------------------------------------------
REPORT_FILES = ("parity.json", "parity.md", "worst.png")


def write_reports(report: ParityReport, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write parity.json, parity.md and worst.png into ``out_dir`` (each atomically)."""
    out = Path(out_dir)
    files = {"json": out / "parity.json", "markdown": out / "parity.md", "worst_png": out / "worst.png"}
    data = report.to_dict()
    data["files"] = {k: str(v) for k, v in files.items()}
    write_text(files["json"], json.dumps(data, indent=2) + "\n")
    write_text(files["markdown"], report.to_markdown())
    figure = report.figure()
    if figure is not None:
        write_image(files["worst_png"], figure)
    return files
