"""Ground-truth masks beside a set of images: found by the image's file stem, read as label maps the
way a model's output is (thresholded for a binary model, by class colour for a multiclass one)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from flexunet.core import masks
from flexunet.core.errors import FlexunetError, ImageReadError
from flexunet.core.imageio import IMAGE_EXTENSIONS, list_images, read_mask

log = logging.getLogger("flexunet")


def masks_index(folder: str | os.PathLike) -> dict[str, Path]:
    """Ground-truth masks in ``folder`` by file stem (a ``.png`` wins over other extensions)."""
    order = {ext: i for i, ext in enumerate((".png",) + IMAGE_EXTENSIONS)}
    found: dict[str, Path] = {}
    for p in sorted(list_images(folder), key=lambda p: order.get(p.suffix.lower(), 99)):
        found.setdefault(p.stem, p)
    return found


def truth_index(folder: str | os.PathLike, images: Sequence[Path]) -> dict[str, Path]:
    """:func:`masks_index` of ``folder``, checked to hold a mask for at least one of ``images``.

    Raises:
        FlexunetError: the folder holds no mask named like any of the images (truth figures from
            it would be made of nothing).
    """
    index = masks_index(folder)
    if not any(p.stem in index for p in images):
        what = f"none of its {len(index)} mask(s) is named like one of the {len(images)} image(s)" if index \
            else "no mask images"
        raise FlexunetError(f"{folder}: {what}; an image's mask has its name ({images[0].stem}.* for "
                            f"{images[0].name})")
    return index


def truth_labels(path: Path, num_classes: int, class_colors: Sequence) -> np.ndarray:
    """A ground-truth mask file -> label map: thresholded (binary models) or by class colour (RGB)."""
    if num_classes == 1:
        return masks.binary_labels(read_mask(path))
    rgb_map = {tuple(int(v) for v in c): i for i, c in enumerate(class_colors)}
    return masks.class_labels(read_mask(path, color=True), rgb_map)


def read_truth(index: dict[str, Path], image_path: Path, info, shape: tuple[int, int]) -> np.ndarray | None:
    """The ground-truth labels of an image of ``shape`` for a model of ``info``, or None (with a
    warning) when its mask is missing, unreadable or of another size."""
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
