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
the folder; inputs sharing a name get their parent folder's name appended, and a name too long for
the file system (:data:`NAME_MAX` bytes with its longest suffix) is cut and given a short hash.

The record names the input by its name, size and SHA-256 (of the very bytes decoded), so
``resume`` redoes an input replaced by another, even one of the same size.  An output that cannot
be written because of its name skips its input (:class:`~flexunet.runtime.pipeline.InputSkipped`);
any other write error (a full disk) stops the run.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from flexunet.core.atomic import WriteError, remove_temporary, write_file, write_text
from flexunet.core.errors import FlexunetError
from flexunet.core.imageio import write_image
from flexunet.core.machine import sha256_file
from flexunet.runtime.backends.base import Backend
from flexunet.runtime.layout import Layout
from flexunet.runtime.pipeline import InputSkipped, SlideTask

log = logging.getLogger("flexunet")

RECORD_DIR = ".flexunet_done"
_NAME_SUFFIXES = ("", "_color", "_overlay", "_prob", "_preview", "_tissue")  # outputs of a stem (and a slide's)
NAME_MAX = 255                                       # bytes in a file name (ext4, xfs, btrfs, tmpfs...)
_LONGEST_SUFFIX = len("_overlay.png")
_NAME_ERRORS = {errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL}  # write errors caused by a file's name
_UNSAFE = str.maketrans({c: "_" for c in '/\\:*?"<>|' + "".join(map(chr, range(32)))})


# -- output names ----------------------------------------------------------------------------------
def _safe_stem(name: str) -> str:
    """``name`` usable as a file name inside the output folder (no separators, no leading dots)."""
    return name.translate(_UNSAFE).strip(" ").lstrip(".").rstrip(". ") or "image"


def _fit_stem(stem: str) -> str:
    """``stem``, or its start plus ``~`` and 8 hex digits of its hash when its longest output name
    would not fit in :data:`NAME_MAX` bytes."""
    raw = os.fsencode(stem)
    limit = NAME_MAX - _LONGEST_SUFFIX
    if len(raw) <= limit:
        return stem
    tag = "~" + hashlib.sha256(raw).hexdigest()[:8]
    return raw[:limit - len(tag)].decode("utf-8", "ignore") + tag


def _real(path: str | os.PathLike) -> Path:
    """The path with every link resolved (never raises, unlike ``Path.resolve`` on a link loop)."""
    return Path(os.path.realpath(path))


def output_names(paths: Sequence[Path]) -> list[str]:
    """Output stem of each input: its file stem, made safe and unique among the inputs.

    Inputs whose stems collide (case-insensitively) get ``_<parent folder>`` appended; a stem too
    long for the file system is cut (:func:`_fit_stem`); a name still taken (or clashing with
    another input's ``_color``/``_overlay``/``_prob`` outputs) gets ``_2``, ``_3``... in input order.
    """
    stems = [_safe_stem(Path(p).stem) for p in paths]
    counts = Counter(s.casefold() for s in stems)
    wanted = [_fit_stem(f"{s}_{_safe_stem(_real(p).parent.name)}" if counts[s.casefold()] > 1 else s)
              for s, p in zip(stems, paths)]
    taken: set[str] = set()
    names = []
    for base in wanted:
        name, n = base, 2
        while any((name + suffix).casefold() in taken for suffix in _NAME_SUFFIXES):
            name, n = _fit_stem(f"{base}_{n}"), n + 1
        taken.update((name + suffix).casefold() for suffix in _NAME_SUFFIXES)
        names.append(name)
    renamed = [(p, n) for p, s, n in zip(paths, stems, names) if n != s]
    if renamed:
        log.warning("inputs share output names or have names too long; writing "
                    + ", ".join(f"{p} as {n}" for p, n in renamed))
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


def check_output_folder(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> None:
    """FlexunetError if ``out_dir`` is, or is inside, a folder named in ``inputs``: a later run
    would take its outputs for inputs."""
    out = os.path.realpath(out_dir)
    for item in inputs:
        if not os.path.isdir(item):
            continue
        folder = os.path.realpath(item)
        if out == folder or out.startswith(folder.rstrip(os.sep) + os.sep):
            where = "is" if out == folder else "is inside"
            raise FlexunetError(f"{out_dir}: the output folder {where} the input folder {item}; "
                                "choose another output folder")


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

    def record(self, task: SlideTask, digest: str | None = None) -> dict:
        """What the record of a complete output set says (None-free, JSON-comparable);
        ``digest``: the SHA-256 of the input's bytes (default: hash the file now)."""
        return {"input": task.path.name, "input_bytes": task.path.stat().st_size,
                "input_sha256": digest or sha256_file(task.path), **self.producer,
                "outputs": sorted(p.name for p in self.files(task).values())}

    def check_inputs(self, tasks: Sequence[SlideTask]) -> None:
        """FlexunetError if an output would replace one of the inputs."""
        inputs = {_real(t.path): t.path for t in tasks}
        for task in tasks:
            for path in self.files(task).values():
                if _real(path) in inputs:
                    raise FlexunetError(f"{path}: the output would replace the input {inputs[_real(path)]}; "
                                        "choose another output folder")

    def is_complete(self, task: SlideTask) -> bool:
        """Whether every requested output exists and the record matches this input's content, this
        model and these options (the input is hashed only when everything else matches)."""
        try:
            written = json.loads(self.record_file(task).read_text(encoding="utf-8"))
            if not isinstance(written, dict) or not all(p.is_file() for p in self.files(task).values()):
                return False
            digest = written.get("input_sha256")
            return written == self.record(task, digest or "-") and sha256_file(task.path) == digest
        except (OSError, ValueError):
            return False

    def open(self, resume: bool = False) -> None:
        """Make the output folder; with ``resume``, remove the temporary files a stopped run left."""
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FlexunetError(f"{self.out_dir}: cannot create the output folder ({exc.strerror or exc})") from None
        if resume:
            self.remove_stale()

    def remove_stale(self) -> list[Path]:
        """Remove the temporary files a stopped run left in the output folder and its records."""
        removed = remove_temporary(self.out_dir) + remove_temporary(self.out_dir / RECORD_DIR)
        if removed:
            log.info(f"removed {len(removed)} unfinished temporary files from {self.out_dir}")
        return removed

    def write(self, task: SlideTask, result, digest: str | None = None) -> None:
        """Write the requested outputs of a :class:`~flexunet.runtime.segmenter.SegmentResult`,
        each atomically, then the record (``digest``: of the input's bytes that were decoded).

        Raises:
            InputSkipped: the input is gone, or an output's name cannot be written (this input's
                outputs are then removed).
            WriteError: another write error (a full disk).
        """
        try:
            record = json.dumps(self.record(task, digest), indent=1, sort_keys=True)
        except OSError as exc:
            raise InputSkipped(f"{task.path}: cannot read it any more ({exc.strerror or exc})") from None
        written: list[Path] = []
        try:
            for kind, path in self.files(task).items():
                _write_output(kind, path, result)
                written.append(path)
            write_text(self.record_file(task), record)
        except WriteError as exc:
            if exc.errno not in _NAME_ERRORS:
                raise
            for path in [*written, self.record_file(task)]:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise InputSkipped(f"{task.path}: cannot write its output {exc.path.name} ({exc.reason})") from None


_PRODUCTS = {"mask": "mask", "color": "colorized", "overlay": "overlay"}  # output kind -> SegmentResult field


def _write_output(kind: str, path: Path, result) -> None:
    if kind == "probabilities":
        write_file(path, lambda tmp: _save_npy(tmp, result.probabilities))
    else:
        write_image(path, getattr(result, _PRODUCTS[kind]))


def _save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through Python's file writes: a full disk raises ENOSPC (``np.save`` to a file
    says only how many bytes it wrote)."""
    array = np.ascontiguousarray(array)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
        f.write(memoryview(array).cast("B"))
