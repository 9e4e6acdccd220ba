"""The Python API of the runtime: :class:`Segmenter` segments one image or a folder of slides.

    from flexunet.runtime import Segmenter

    with Segmenter("model.onnx", tile=512, overlap=64) as seg:
        result = seg.segment(image_bgr)        # SegmentResult: probabilities, labels, mask, colorized
        summary = seg.segment_folder(["slides/"], "out/", colorize=True, resume=True)

It mirrors ``flexunet infer``.  Pre- and post-processing come from the model's metadata
(:class:`~runtime.modelinfo.ModelInfo`), so they match training.  Outputs of ``segment_folder``,
for an input ``<stem>.<ext>``, all inside the output folder:

* ``<stem>.png``: the mask, 0/255 for a binary model, class indices for a multiclass one;
* ``<stem>_color.png``: the mask in the class colours (``colorize``);
* ``<stem>_overlay.jpg|png``: the colours blended over the input, JPEG for a JPEG input (``overlay``);
* ``<stem>_prob.npy``: the ``H x W x K`` float32 probabilities (``probabilities``);
* ``.flexunet_done/<stem>.json``: written last; what produced the outputs (model hash, options),
  which ``resume`` compares before skipping an input.

Names come from the file name only (leading dots and path separators removed), so no output leaves
the folder; inputs sharing a name get their parent folder's name appended.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from flexunet.core import masks
from flexunet.runtime import postprocess
from flexunet.core.atomic import atomic_path, write_text
from flexunet.runtime.backends import Backend, as_backend, load_backend
from flexunet.core.errors import FlexunetError, ImageReadError, ModelError
from flexunet.core.machine import sha256_file
from flexunet.core.imageio import expand_inputs, read_image, write_image
from flexunet.core.modelinfo import ModelInfo
from flexunet.runtime.pipeline import Layout, Pipeline, SlideTask
from flexunet.runtime.segment import predict_tiled, predict_whole
from flexunet.core import tiling
from flexunet.core.tiling import BLEND_MODES

log = logging.getLogger("flexunet")

RECORD_DIR = ".flexunet_done"
FIT = "fit"            # tile="fit": the tile that computes the least area for the image size
FIT_MAX_SIDE = 1536    # largest fitted tile side (bounds activation memory)
_NAME_SUFFIXES = ("", "_color", "_overlay", "_prob")  # every output of a stem starts with one of these
_UNSAFE = str.maketrans({c: "_" for c in '/\\:*?"<>|' + "".join(map(chr, range(32)))})


@dataclass(eq=False)
class SegmentResult:
    """The segmentation of one image.

    Attributes:
        probabilities: ``(H, W, K)`` float32; ``K = 1`` (foreground probability) for a binary model.
        labels: ``(H, W)`` uint8 class indices (binary: 0/1) after the optional clean-up.
        class_colors: RGB colour of each class, from the model's metadata.
        image: the input image (BGR uint8), needed by :attr:`overlay`.
    """

    probabilities: np.ndarray
    labels: np.ndarray
    class_colors: list
    image: np.ndarray | None = None

    @property
    def mask(self) -> np.ndarray:
        """The mask as written: 0/255 for a binary model, class indices for a multiclass one."""
        if self.probabilities.shape[-1] == 1:
            return self.labels * np.uint8(255)
        return self.labels

    @functools.cached_property
    def colorized(self) -> np.ndarray:
        """The labels in their class colours, BGR uint8."""
        return masks.colorize(self.labels, self.class_colors)

    @functools.cached_property
    def overlay(self) -> np.ndarray:
        """The class colours blended over the input image (background untouched), BGR uint8."""
        if self.image is None:
            raise ValueError("this result has no input image to overlay")
        return masks.overlay(self.image, self.labels, self.class_colors)


@dataclass
class RunSummary:
    """What :meth:`Segmenter.segment_folder` did.

    Attributes:
        done: inputs segmented and written, in input order.
        skipped: ``(input, reason)`` for unreadable or corrupt inputs.
        resumed: inputs left alone because their outputs were complete (``resume``).
        stage_seconds: busy seconds per pipeline stage (stages overlap, so they may add up to more
            than the wall time).
        wall_seconds: duration of the pipeline run.
    """

    done: list[Path]
    skipped: list[tuple[Path, str]]
    resumed: list[Path]
    stage_seconds: dict[str, float]
    wall_seconds: float

    @property
    def total(self) -> int:
        """Number of inputs."""
        return len(self.done) + len(self.skipped) + len(self.resumed)


@dataclass(frozen=True)
class ProgressEvent:
    """Passed to the ``progress`` callback of :meth:`Segmenter.segment_folder` once per input.

    ``status`` is ``"done"``, ``"skipped"`` (``reason`` says why) or ``"resumed"``; ``finished``
    counts the inputs reported so far, this one included, out of ``total``.
    """

    status: str
    path: Path
    finished: int
    total: int
    reason: str | None = None


ProgressCallback = Callable[[ProgressEvent], None]


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


def model_digest(backend: Backend) -> str:
    """SHA-256 of the model file (if any) and of its ModelInfo: identifies what produced outputs."""
    digest = hashlib.sha256(backend.info.to_json().encode("utf-8"))
    if backend.path is not None and Path(backend.path).is_file():
        sha256_file(backend.path, digest)
    return digest.hexdigest()


class _Outputs:
    """The files of one run: where each input's outputs go, writing them, and resume records."""

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

    def write(self, task: SlideTask, result: SegmentResult) -> None:
        """Write the requested outputs, each atomically, then the record."""
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


class _Progress:
    """Counts reported inputs and forwards :class:`ProgressEvent` s to the user's callback."""

    def __init__(self, total: int, callback: ProgressCallback | None):
        self.total, self.finished, self.callback = total, 0, callback

    def __call__(self, status: str, task: SlideTask, reason: str | None = None) -> None:
        self.finished += 1
        if self.callback is not None:
            self.callback(ProgressEvent(status, task.path, self.finished, self.total, reason))


# -- the segmenter -----------------------------------------------------------------------------------
def _size_pair(value, what: str) -> tuple[int, int]:
    """``512`` or ``(512, 768)`` -> ``(h, w)`` of positive ints."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in pair):
        raise FlexunetError(f"{what} must be a positive size or a (height, width) pair, got {value!r}")
    return int(pair[0]), int(pair[1])


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class Segmenter:
    """Segments images with a UNet model: batched, blended tiled inference (or one whole-image
    pass), then threshold/argmax and optional clean-up, all as the model's metadata says.

    Args:
        model: an ``.onnx``, ``.keras`` or TensorRT ``.engine``/``.plan`` file, or a loaded
            backend (a :class:`~runtime.backends.base.Backend` or a runner with the same
            attributes; not closed by :meth:`close`).
        backend: see :data:`runtime.backends.base.BACKENDS`; ``auto`` picks the fastest available.
        tile: tile size ``n`` or ``(h, w)``.  Default: the training input size.  A model with a
            fixed input size only takes that size; for a dynamic-size model the tile is rounded up
            to a multiple of ``info.multiple`` (larger tiles: fewer seams, bigger batches).
        overlap: minimum overlap of neighbouring tiles in pixels.  Default: the model's (64),
            limited to half the tile.
        batch_size: tiles per ``predict`` call (limited to the backend's ``max_batch``).
        blend: ``cosine``, ``gaussian`` or ``none`` (plain averaging).  Default: the model's.
        whole: one pass over the whole image padded to ``info.multiple`` instead of tiles (needs a
            dynamic-size model): the reference for tiling quality.
        threshold: foreground threshold of a binary model.  Default: the model's (0.5).
        fill_holes: fill background holes enclosed by one class (:func:`runtime.postprocess.fill_holes`).
        min_size: remove objects smaller than this many pixels (0: keep all).
        threads: CPU threads for ONNX Runtime (default: all cores).
        config: training config of a ``.keras`` model (default: the one beside it).
        readers: decoding threads of :meth:`segment_folder`.
        max_in_flight: slides held in memory at once by :meth:`segment_folder` (slides smaller than
            a batch may exceed it, up to ``batch_size``, so that batches stay full).

    Raises:
        ModelError, MissingDependencyError: the model cannot be loaded with that backend.
        FlexunetError: options the model does not allow.
    """

    def __init__(self, model: str | os.PathLike | Backend, backend: str = "auto", tile=None,
                 overlap: int | None = None, batch_size: int = 4, blend: str | None = None,
                 whole: bool = False, threshold: float | None = None, fill_holes: bool = False,
                 min_size: int = 0, threads: int | None = None, config: str | os.PathLike | None = None,
                 readers: int = 1, max_in_flight: int = 3):
        self._owns_backend = isinstance(model, (str, os.PathLike))
        self.backend: Backend = load_backend(model, backend, threads=threads, config=config) \
            if self._owns_backend else as_backend(model)
        try:
            self._configure(tile, overlap, batch_size, blend, whole, threshold, min_size)
        except BaseException:
            self.close()
            raise
        self.fill_holes = bool(fill_holes)
        self.readers = readers
        self.max_in_flight = max_in_flight
        self._digest: str | None = None

    def _configure(self, tile, overlap, batch_size, blend, whole, threshold, min_size) -> None:
        info = self.info
        fixed = self.backend.fixed_size
        where = self.backend.path or self.backend.name
        if whole:
            if fixed is not None:
                raise FlexunetError(f"{where}: --whole needs a model that accepts any input size; this "
                                    f"one is fixed at {fixed[0]}x{fixed[1]} (use tiled inference)")
            self.tile = None
        elif fixed is not None:
            if tile is not None and _size_pair(tile, "tile") != tuple(fixed):
                raise FlexunetError(f"{where}: the model's input is fixed at {fixed[0]}x{fixed[1]}; "
                                    f"tile {tile} is not possible (leave it out)")
            self.tile = tuple(fixed)
        elif tile == FIT:
            self.tile = None  # chosen from the first image's size (fit_tile)
        else:
            th, tw = _size_pair(tile, "tile") if tile is not None else info.tile_size
            self.tile = (_round_up(th, info.multiple), _round_up(tw, info.multiple))
            if not self.backend.accepts(*self.tile):
                raise FlexunetError(f"{where}: {self.backend.name} cannot run {self.tile[0]}x{self.tile[1]} "
                                    "tiles; choose another tile size")
        self.whole = bool(whole)
        self.fit = tile == FIT and self.tile is None and not self.whole
        if self.whole:
            self.overlap = 0
        elif overlap is None:
            self.overlap = int(info.overlap) if self.fit else min(int(info.overlap), min(self.tile) // 2)
        elif not 0 <= overlap < min(self.tile or (FIT_MAX_SIDE // 2, FIT_MAX_SIDE // 2)):
            raise FlexunetError(f"overlap must be at least 0 and smaller than the tile, got {overlap}")
        else:
            self.overlap = int(overlap)
        self.blend = blend or info.blend
        if self.blend not in BLEND_MODES:
            raise FlexunetError(f"blend must be one of {', '.join(BLEND_MODES)}, got {self.blend!r}")
        if batch_size < 1:
            raise FlexunetError(f"batch size must be at least 1, got {batch_size}")
        self.batch_size = min(batch_size, self.backend.max_batch or batch_size)
        self.threshold = info.threshold if threshold is None else float(threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise FlexunetError(f"threshold must be between 0 and 1, got {self.threshold}")
        if min_size < 0:
            raise FlexunetError(f"min size must be at least 0, got {min_size}")
        self.min_size = int(min_size)

    @property
    def info(self) -> ModelInfo:
        """What the model says about itself (pre-processing, classes, colours, defaults)."""
        return self.backend.info

    def describe(self) -> str:
        """One line: how images are cut and batched."""
        if self.whole:
            how = f"whole image (padded to a multiple of {self.info.multiple})"
        elif self.tile is None:
            how = f"tiles fitted to the image size (up to {FIT_MAX_SIDE} px), overlap {self.overlap}, {self.blend} blend"
        else:
            how = f"tiles {self.tile[0]}x{self.tile[1]}, overlap {self.overlap}, {self.blend} blend"
        return f"{how}, batch {self.batch_size}"

    def layout(self) -> Layout:
        """How images are cut into model inputs."""
        return Layout(tile=self.tile, overlap=self.overlap, blend=self.blend, multiple=self.info.multiple)

    # -- one image -----------------------------------------------------------------------------------
    def segment(self, image: np.ndarray | str | os.PathLike) -> SegmentResult:
        """Segment one image: a BGR (or grayscale) uint8 array, or an image file."""
        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
            raise ValueError(f"expected a non-empty HxW or HxWxC uint8 image, got {image.dtype} {image.shape}")
        x = self.info.preprocess(image)
        if self.whole:
            probs = predict_whole(x, self.backend.predict, self.info.multiple)
        else:
            tile = self.fitted_tile(*image.shape[:2]) if self.fit else self.tile
            probs = predict_tiled(x, self.backend.predict, tile, self.overlap, self.blend, self.batch_size)
        return self._finish(image, probs)

    def fitted_tile(self, height: int, width: int) -> tuple[int, int]:
        """The tile with the least computed area for an image of this size (``tile="fit"``)."""
        return tiling.fit_tile(height, width, self.overlap, self.info.multiple, FIT_MAX_SIDE)

    def _finish(self, image: np.ndarray, probs: np.ndarray) -> SegmentResult:
        """Probabilities -> labels (threshold or argmax), then the optional clean-up."""
        if probs.shape[-1] != self.info.num_classes:
            raise ModelError(f"{self.backend.name}: the model gives {probs.shape[-1]} channels but its "
                             f"metadata says {self.info.num_classes} classes")
        labels = masks.labels_from_probabilities(probs, self.threshold)
        if self.min_size > 1:
            labels = postprocess.remove_small_objects(labels, self.min_size)
        if self.fill_holes:
            labels = postprocess.fill_holes(labels)
        return SegmentResult(probs, labels, list(self.info.class_colors), image)

    # -- a folder --------------------------------------------------------------------------------------
    def segment_folder(self, inputs: str | os.PathLike | Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                       colorize: bool = False, overlay: bool = False, probabilities: bool = False,
                       resume: bool = False, progress: ProgressCallback | None = None) -> RunSummary:
        """Segment image files and folders (their images, not recursive) into ``out_dir``.

        Decoding, inference, blending and writing run concurrently (:mod:`runtime.pipeline`);
        tiles of consecutive slides share batches.  Unreadable images are skipped and listed in the
        summary.  With ``resume``, inputs whose outputs are complete and were made by this model
        with these options are not processed again.  ``progress`` is called once per input.

        Raises:
            FlexunetError: the output folder cannot be written, or an output would replace an input.
            KeyboardInterrupt: after stopping every thread; outputs written so far are complete.
        """
        items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        paths = expand_inputs(items)
        tasks = [SlideTask(i, p, n) for i, (p, n) in enumerate(zip(paths, output_names(paths)))]
        out = Path(out_dir)
        outputs = _Outputs(out, self._producer(), colorize=colorize, overlay=overlay, probabilities=probabilities)
        outputs.check_inputs(tasks)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FlexunetError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from None
        report = _Progress(len(tasks), progress)
        todo, resumed = [], []
        for task in tasks:
            if resume and outputs.is_complete(task):
                resumed.append(task.path)
                report("resumed", task)
            else:
                todo.append(task)
        if self.fit and self.tile is None:  # one tile size for the whole run: fitted to the first image
            for task in todo:
                try:
                    self.tile = self.fitted_tile(*read_image(task.path).shape[:2])
                    break
                except ImageReadError:
                    continue
            else:
                self.tile = self.info.tile_size
        pipeline = Pipeline(
            self.backend, self.layout(), read=read_image, prepare=self.info.preprocess,
            finish=lambda task, image, probs: self._finish(image, probs), write=outputs.write,
            batch_size=self.batch_size, max_in_flight=self.max_in_flight, readers=self.readers,
            on_slide=report,
        )
        result = pipeline.run(todo)
        return RunSummary(done=result.done, skipped=result.skipped, resumed=resumed,
                          stage_seconds=result.stage_seconds, wall_seconds=result.wall_seconds)

    def _producer(self) -> dict:
        """The model hash and the options that determine the outputs (stored in resume records)."""
        if self._digest is None:
            self._digest = model_digest(self.backend)
        return {
            "model_sha256": self._digest,
            "options": {"tile": list(self.tile) if self.tile else None, "overlap": self.overlap,
                        "blend": self.blend, "whole": self.whole, "threshold": self.threshold,
                        "fill_holes": self.fill_holes, "min_size": self.min_size},
        }

    # -- lifetime ----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the backend, if this Segmenter loaded it."""
        if self._owns_backend:
            self.backend.close()

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
