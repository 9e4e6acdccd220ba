"""Pictures of where two label maps disagree: the rows of ``flexunet parity``'s worst.png (input |
reference mask | candidate mask | differences) and of a project's comparison.png (input | ground
truth | prediction | differences).

A row is :data:`FIGURE_WIDTH` px wide: a header bar with a title and a legend, then four panels of
:data:`PANEL_WIDTH` px.  Downscaled masks keep every disagreeing pixel visible.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from flexunet.core import masks

# One row: four panels side by side, 1600 px wide in total.
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
    """One row: a header, then input | reference mask | candidate mask | differences, each
    :data:`PANEL_WIDTH` px wide (``colors``: one RGB colour per label value)."""
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
    """``(height, width)`` of the rows of images of ``(h, w)`` stacked by :func:`stack_rows`."""
    rows = [HEADER + max(1, round(h * PANEL_WIDTH / w)) for h, w in image_sizes]
    return sum(rows) + GAP * (len(rows) - 1), FIGURE_WIDTH


def stack_rows(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Rows one under the other, :data:`GAP` px apart."""
    parts = []
    for i, row in enumerate(rows):
        if i:
            parts.append(np.full((GAP, FIGURE_WIDTH, 3), BACKGROUND, np.uint8))
        parts.append(row)
    return np.concatenate(parts)


def label_colors(class_colors: Sequence, labels: int) -> list:
    """One RGB colour per label value: the model's class colours, padded with white."""
    colors = list(class_colors)
    return colors + [(255, 255, 255)] * max(0, labels - len(colors))
