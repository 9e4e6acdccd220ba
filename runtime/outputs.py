"""The files of a folder run: output names, writing each input's outputs, and resume records.

For an input ``<stem>.<ext>``, all inside the output folder:

* ``<stem>.png``: the mask, 0/255 for a binary model, class indices for a multiclass one;
* ``<stem>_color.png``: the mask in the class colours (``colorize``);
* ``<stem>_overlay.jpg|png``: the colours blended over the input, JPEG for a JPEG input (``overlay``);
* ``<stem>_prob.npy``: the ``H x W x K`` float32 probabilities (``probabilities``);
* ``.flexunet_done/<stem>.json``: the resume record, written last: what produced the outputs (model
  hash and the options of the run, the tile actually used included), which ``resume`` compares
  before skipping an input.

Names come from the file name only (leading dots and path separators removed), so no output leaves
the folder; inputs sharing a name get their parent folder's name appended.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from flexunet.core.atomic import atomic_path, write_text
from flexunet.core.errors import FlexunetError
from flexunet.core.imageio import write_image
from flexunet.core.machine import sha256_file
from flexunet.runtime.backends.base import Backend
from flexunet.runtime.layout import Layout
from flexunet.runtime.pipeline import SlideTask

log = logging.getLogger("flexunet")

RECORD_DIR = ".flexunet_done"
_NAME_SUFFIXES = ("", "_color", "_overlay", "_prob")  # every output of a stem starts with one of these
_UNSAFE = str.maketrans({c: "_" for c in '/\\:*?"<>|' + "".join(map(chr, range(32)))})


# -- output names ----------------------------------------------------------------------------------
def _safe_stem(name: str) -> str:
    """``name`` usable as a file name inside the output folder (no separators, no leading dots)."""
    return name.translate(_UNSAFE).strip(" ").lstrip(".").rstrip(". ") or "image"


def output_names(paths: Sequence[Path]) -> list[str]:
    """Output stem of each input: its file stem, made safe and unique among the inputs.

    Inputs whose stems collide (case-insensitively) get ``_<parent folder>`` appended; a name
    still taken (or clashing with another input's ``_color``/``_overlay``/``_prob`` outputs) gets
    ``_2``, ``_3``... in input order.
    """
    stems = [_safe_stem(Path(p).stem) for p in paths]
    counts = Counter(s.casefold() for s in stems)
    wanted = [f"{s}_{_safe_stem(Path(p).resolve().parent.name)}" if counts[s.casefold()] > 1 else s
              for s, p in zip(stems, paths)]
    taken: set[str] = set()
    names = []
    for base in wanted:
        name, n = base, 2
        while any((name + suffix).casefold() in taken for suffix in _NAME_SUFFIXES):
            name, n = f"{base}_{n}", n + 1
        taken.update((name + suffix).casefold() for suffix in _NAME_SUFFIXES)
        names.append(name)
    renamed = [(p, n) for p, s, n in zip(paths, stems, names) if n != s]
    if renamed:
        log.warning("inputs share output names; writing " + ", ".join(f"{p} as {n}" for p, n in renamed))
    return names


# -- what produced the outputs -------------------------------------------------------------------------
def model_digest(backend: Backend) -> str:
    """SHA-256 of the model file (if any) and of its ModelInfo: identifies what produced outputs."""
    digest = hashlib.sha256(backend.info.to_json().encode("utf-8"))
    if backend.path is not None and Path(backend.path).is_file():
        sha256_file(backend.path, digest)
    return digest.hexdigest()


def producer(digest: str, layout: Layout, *, threshold: float, fill_holes: bool, min_size: int) -> dict:
    """The model hash and the options that determine the outputs, as stored in resume records.

    ``layout`` is the one the run used: with ``tile="fit"``, its fitted tile.
    """
    return {
        "model_sha256": digest,
        "options": {"tile": list(layout.tile) if layout.tile else None, "overlap": layout.overlap,
                    "blend": layout.blend, "whole": layout.whole, "threshold": threshold,
                    "fill_holes": fill_holes, "min_size": min_size},
    }


# -- the files of one run ------------------------------------------------------------------------------
class Outputs:
    """The files of one run: where each input's outputs go, writing them, and resume records.

    Args:
        out_dir: the output folder.
        producer: what the records say produced the outputs (:func:`producer`).
        colorize, overlay, probabilities: which optional outputs are written.
    """

    def __init__(self, out_dir: Path, producer: dict, *, colorize: bool, overlay: bool, probabilities: bool):
        self.out_dir = out_dir
        self.producer = producer
        self.colorize, self.overlay, self.probabilities = colorize, overlay, probabilities

    def files(self, task: SlideTask) -> dict[str, Path]:
        """Requested output kind -> file."""
        files = {"mask": self.out_dir / f"{task.name}.png"}
        if self.colorize:
            files["color"] = self.out_dir / f"{task.name}_color.png"
        if self.overlay:
            ext = ".jpg" if task.path.suffix.lower() in (".jpg", ".jpeg") else ".png"
            files["overlay"] = self.out_dir / f"{task.name}_overlay{ext}"
        if self.probabilities:
            files["probabilities"] = self.out_dir / f"{task.name}_prob.npy"
        return files

    def record_file(self, task: SlideTask) -> Path:
        """Where the resume record of ``task`` goes."""
        return self.out_dir / RECORD_DIR / f"{task.name}.json"

    def record(self, task: SlideTask) -> dict:
        """What the record of a complete output set says (None-free, JSON-comparable)."""
        return {"input": task.path.name, "input_bytes": task.path.stat().st_size, **self.producer,
                "outputs": sorted(p.name for p in self.files(task).values())}

    def check_inputs(self, tasks: Sequence[SlideTask]) -> None:
        """FlexunetError if an output would replace one of the inputs."""
        inputs = {t.path.resolve(): t.path for t in tasks}
        for task in tasks:
            for path in self.files(task).values():
                if path.resolve() in inputs:
                    raise FlexunetError(f"{path}: the output would replace the input {inputs[path.resolve()]}; "
                                        "choose another output folder")

    def is_complete(self, task: SlideTask) -> bool:
        """Whether every requested output exists and the record matches this model and options."""
        try:
            written = json.loads(self.record_file(task).read_text(encoding="utf-8"))
            expected = self.record(task)
        except (OSError, ValueError):
            return False
        return written == expected and all(p.is_file() for p in self.files(task).values())

    def write(self, task: SlideTask, result) -> None:
        """Write the requested outputs of a :class:`~flexunet.runtime.segmenter.SegmentResult`,
        each atomically, then the record."""
        files = self.files(task)
        write_image(files["mask"], result.mask)
        if "color" in files:
            write_image(files["color"], result.colorized)
        if "overlay" in files:
            write_image(files["overlay"], result.overlay)
        if "probabilities" in files:
            _write_npy(files["probabilities"], result.probabilities)
        write_text(self.record_file(task), json.dumps(self.record(task), indent=1, sort_keys=True))


def _write_npy(path: Path, array: np.ndarray) -> None:
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, array)
    except OSError as exc:
        raise FlexunetError(f"{path}: cannot write ({exc.strerror or exc})") from None
