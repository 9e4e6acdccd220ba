"""The Python API of the runtime: :class:`Segmenter` segments one image or a folder of slides.

    from flexunet.runtime import Segmenter

    with Segmenter("model.onnx", tile=512, overlap=64) as seg:
        result = seg.segment(image_bgr)        # SegmentResult: probabilities, labels, mask, colorized
        summary = seg.segment_folder(["slides/"], "out/", colorize=True, resume=True)

It mirrors ``flexunet infer``.  Pre- and post-processing come from the model's metadata
(:class:`~flexunet.core.modelinfo.ModelInfo`), so they match training; the tiling is resolved once,
when the Segmenter is made (:func:`~flexunet.runtime.layout.resolve_layout`), and one image and a
folder run go through the same tiled engine (:mod:`flexunet.runtime.segment`).  A Segmenter does
not change after it is made.  The files of ``segment_folder`` are described in
:mod:`flexunet.runtime.outputs`.
"""
from __future__ import annotations

import functools
import hashlib
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from flexunet.core import masks
from flexunet.core.errors import FlexunetError, ImageReadError, ModelError
from flexunet.core.imageio import expand_inputs, read_image
from flexunet.core.modelinfo import ModelInfo
from flexunet.runtime import postprocess
from flexunet.runtime.backends import Backend, as_backend, load_backend
from flexunet.runtime.layout import FIT, FIT_MAX_SIDE, Layout, budget_batch, resolve_layout
from flexunet.runtime.outputs import (RECORD_DIR, Outputs, check_output_folder, model_digest, output_names,
                                      producer)
from flexunet.runtime.pipeline import Pipeline, PipelineResult, SlideCallback, SlideTask
from flexunet.runtime.segment import predict_image

# Importable from here as before the tiling and the output files had modules of their own.
__all__ = ["FIT", "FIT_MAX_SIDE", "RECORD_DIR", "FolderPlan", "ProgressEvent", "RunSummary", "SegmentResult",
           "Segmenter", "model_digest", "output_names"]

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
        skipped: ``(input, reason)`` for inputs that could not be read or decoded (or were too
            large), or whose outputs could not be written under their names.
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


class _Progress:
    """Counts reported inputs and forwards :class:`ProgressEvent` s to the user's callback."""

    def __init__(self, total: int, callback: ProgressCallback | None):
        self.total, self.finished, self.callback = total, 0, callback

    def __call__(self, status: str, task: SlideTask, reason: str | None = None) -> None:
        self.finished += 1
        if self.callback is not None:
            self.callback(ProgressEvent(status, task.path, self.finished, self.total, reason))


class _Handover:
    """The pipeline's reader: hands over, once, the image the run already decoded to fit its tile,
    and decodes every other input (with ``read_image`` as this module has it at the time); keeps
    the SHA-256 of the bytes decoded for each input until its record is written (:meth:`digest`)."""

    def __init__(self, path: Path | None, image: np.ndarray | None, digest: str | None):
        self._path, self._image = path, image
        self._digests: dict[Path, str] = {path: digest} if path is not None and digest else {}
        self._lock = threading.Lock()

    def __call__(self, path: Path) -> np.ndarray:
        with self._lock:
            if self._image is not None and path == self._path:
                image, self._image = self._image, None
                return image
        digest = hashlib.sha256()
        image = read_image(path, digest=digest)
        with self._lock:
            self._digests[path] = digest.hexdigest()
        return image

    def digest(self, path: Path) -> str | None:
        """The SHA-256 of the bytes decoded for ``path`` (once; None if it was not read here)."""
        with self._lock:
            return self._digests.pop(path, None)


_Decoded = tuple[Path | None, np.ndarray | None, str | None]  # an input decoded ahead: path, image, SHA-256


@dataclass
class FolderPlan:
    """A folder run before anything is segmented (:meth:`Segmenter.plan_files`): every input with
    its output name, the run's layout (tile fitted), the output writer, the inputs to segment and
    those whose outputs are complete, and the input decoded to fit the tile (``first``)."""

    tasks: list[SlideTask]
    layout: Layout
    outputs: Outputs
    todo: list[SlideTask]
    resumed: list[SlideTask]
    first: _Decoded = (None, None, None)


def _from_layout(name: str, doc: str) -> property:
    """A read-only Segmenter attribute that is a field of its layout."""
    return property(lambda self: getattr(self._layout, name), doc=doc)


# -- the segmenter -----------------------------------------------------------------------------------
class Segmenter:
    """Segments images with a UNet model: batched, blended tiled inference (or one whole-image
    pass), then threshold/argmax and optional clean-up, all as the model's metadata says.

    Args:
        model: an ``.onnx``, ``.keras``, seed API ``.h5`` or TensorRT ``.engine``/``.plan`` file, or a loaded
            backend (a :class:`~flexunet.runtime.backends.base.Backend` or a runner with the same
            attributes; not closed by :meth:`close`).
        backend: see :data:`~flexunet.runtime.backends.base.BACKENDS`; ``auto`` runs, for an
            ``.onnx``, the fastest path ``flexunet tune`` recorded beside it as passing its verdict
            (:mod:`~flexunet.runtime.autoselect`; logged at INFO, ``backend.path``/``backend.name`` say
            what runs), else the exact FP32 ONNX Runtime path; by file type for other models.
        tile: tile size ``n`` or ``(h, w)``, or ``"fit"`` (dynamic-size models: the tile computing
            the least area for the image size; a folder run fits it to its first readable input).
            Default: the model's (its training input size).  A model with a fixed input size only
            takes that size; for a dynamic-size model the tile is rounded up to a multiple of
            ``info.multiple`` (larger tiles: fewer seams, bigger batches).
        overlap: minimum overlap of neighbouring tiles in pixels.  Default: the one measured at
            export (tiles agree with a whole-image pass), else the model's, else 64; limited to half the tile.
        batch_size: tiles per ``predict`` call (limited to the backend's ``max_batch``).  Default: the
            most tiles that fit in ``memory_budget`` (:func:`~flexunet.runtime.layout.budget_batch`),
            at most 8; 1 for whole-image passes.
        blend: ``cosine``, ``gaussian`` or ``none`` (plain averaging).  Default: the model's (else
            cosine).
        whole: one pass over the whole image padded to ``info.multiple`` instead of tiles (needs a
            dynamic-size model): the reference for tiling quality.
        threshold: foreground threshold of a binary model.  Default: the model's (else 0.5).
        fill_holes: fill background holes enclosed by one class (:func:`~flexunet.runtime.postprocess.fill_holes`).
        min_size: remove objects smaller than this many pixels (0: keep all).
        threads: CPU threads for ONNX Runtime (default: all cores).
        config: training config of a ``.keras`` or ``.h5`` model (default: the one beside it; for a
            ``.h5`` also the one in its parent folder).
        readers: decoding threads of :meth:`segment_folder`.
        max_in_flight: slides held in memory at once by :meth:`segment_folder` (slides smaller than
            a batch may exceed it, up to ``batch_size``, so that batches stay full).
        memory_budget: bytes for one batch (inputs, probabilities, network activations); default
            :data:`~flexunet.runtime.layout.DEFAULT_MEMORY_BUDGET`.  It sets the default batch and
            bounds ``fit`` tiles.

    Raises:
        ModelError, MissingDependencyError: the model cannot be loaded with that backend.
        FlexunetError: options the model does not allow.
    """

    def __init__(self, model: str | os.PathLike | Backend, backend: str = "auto", tile=None,
                 overlap: int | None = None, batch_size: int | None = None, blend: str | None = None,
                 whole: bool = False, threshold: float | None = None, fill_holes: bool = False,
                 min_size: int = 0, threads: int | None = None, config: str | os.PathLike | None = None,
                 readers: int = 1, max_in_flight: int = 3, memory_budget: int | None = None):
        self._owns_backend = isinstance(model, (str, os.PathLike))
        self.backend: Backend = load_backend(model, backend, threads=threads, config=config) \
            if self._owns_backend else as_backend(model)
        try:
            if batch_size is not None and batch_size < 1:
                raise FlexunetError(f"batch size must be at least 1, got {batch_size}")
            self._batch_option, self.memory_budget = batch_size, memory_budget
            native = min(batch_size or 1, self.backend.max_batch or batch_size or 1)
            self._layout = self._checked(self._resolve(tile, overlap, blend, whole, native))
            self.batch_size = self.batch_for(self._layout)
            self.threshold = self.info.threshold if threshold is None else float(threshold)
            if not 0.0 <= self.threshold <= 1.0:
                raise FlexunetError(f"threshold must be between 0 and 1, got {self.threshold}")
            if min_size < 0:
                raise FlexunetError(f"min size must be at least 0, got {min_size}")
        except BaseException:
            self.close()
            raise
        self.min_size = int(min_size)
        self.fill_holes = bool(fill_holes)
        self.readers = readers
        self.max_in_flight = max_in_flight

    def _resolve(self, tile, overlap: int | None, blend: str | None, whole: bool, batch_size: int) -> Layout:
        """:func:`~flexunet.runtime.layout.resolve_layout` for this model (its memory checked for
        batches of ``batch_size`` tiles); errors name the model."""
        try:
            return resolve_layout(self.info, tile, overlap, blend, whole=whole, fixed_size=self.backend.fixed_size,
                                  batch_size=batch_size, memory_budget=self.memory_budget)
        except FlexunetError as exc:
            raise type(exc)(f"{self.backend.path or self.backend.name}: {exc}") from None

    def batch_for(self, layout: Layout) -> int:
        """Tiles per batch for ``layout``: the ``batch_size`` given, else what the memory budget allows
        for its tile (a ``fit`` layout not fitted yet: for its largest tile; whole passes: 1); at
        most the backend's ``max_batch``."""
        if self._batch_option is not None:
            batch = self._batch_option
        elif layout.whole:
            batch = 1
        else:
            try:
                batch = budget_batch(layout.tile or (layout.max_side,) * 2, self.info, self.memory_budget)
            except FlexunetError as exc:
                raise FlexunetError(f"{self.backend.path or self.backend.name}: {exc}") from None
        return min(batch, self.backend.max_batch or batch)

    def _checked(self, layout: Layout) -> Layout:
        """``layout``, once the backend is known to run its tiles."""
        if layout.tile is not None and not self.backend.accepts(*layout.tile):
            raise FlexunetError(f"{self.backend.path or self.backend.name}: {self.backend.name} cannot run "
                                f"{layout.tile[0]}x{layout.tile[1]} tiles; choose another tile size")
        return layout

    # -- how images are cut ---------------------------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        """What the model says about itself (pre-processing, classes, colours, defaults)."""
        return self.backend.info

    tile = _from_layout("tile", "The tile size; None for whole passes and for ``tile=\"fit\"`` (see :meth:`layout`).")
    overlap = _from_layout("overlap", "Minimum overlap of neighbouring tiles, pixels.")
    blend = _from_layout("blend", "Blending window of overlapping tiles.")
    whole = _from_layout("whole", "One padded pass over the whole image instead of tiles.")
    fit = _from_layout("fit", "Whether the tile is fitted to the image size (``tile=\"fit\"``).")

    def layout(self, image_size: tuple[int, int] | None = None) -> Layout:
        """How images are cut into model inputs: with ``tile="fit"`` and an ``(h, w)``
        ``image_size``, the layout fitted to that size; without one, a ``fit`` layout (no tile)."""
        if image_size is None or not self.fit:
            return self._layout
        return self._checked(self._layout.fitted(*image_size))

    def fitted_tile(self, height: int, width: int) -> tuple[int, int]:
        """The tile with the least computed area for an image of this size (what ``tile="fit"`` uses)."""
        return replace(self._layout, tile=None, fit=True).fitted(height, width).tile

    def describe(self) -> str:
        """One line: how images are cut and batched."""
        if self.whole:
            how = f"whole image (padded to a multiple of {self.info.multiple})"
        elif self.fit:
            how = (f"tiles fitted to the image size (up to {self._layout.max_side} px), overlap {self.overlap}, "
                   f"{self.blend} blend")
        else:
            how = f"tiles {self.tile[0]}x{self.tile[1]}, overlap {self.overlap}, {self.blend} blend"
        batch = "from the memory budget" if self.fit and self._batch_option is None else self.batch_size
        return f"{how}, batch {batch}"

    # -- one image -----------------------------------------------------------------------------------
    def segment(self, image: np.ndarray | str | os.PathLike) -> SegmentResult:
        """Segment one image: a BGR (or grayscale) uint8 array, or an image file."""
        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
            raise ValueError(f"expected a non-empty HxW or HxWxC uint8 image, got {image.dtype} {image.shape}")
        probs = predict_image(self.info.preprocess(image), self.backend.predict, self.layout(image.shape[:2]),
                              self.batch_for(self.layout(image.shape[:2])), self.backend.name)
        return self._finish(image, probs)

    def _finish(self, image: np.ndarray, probs: np.ndarray) -> SegmentResult:
        """Probabilities -> labels (threshold or argmax), then the optional clean-up."""
        if probs.shape[-1] != self.info.num_classes:
            raise ModelError(f"{self.backend.path or self.backend.name}: the model gives {probs.shape[-1]} "
                             f"channels but its metadata says {self.info.num_classes} classes")
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

        Decoding, inference, blending and writing run concurrently (:mod:`flexunet.runtime.pipeline`);
        tiles of consecutive slides share batches.  Unreadable images are skipped and listed in the
        summary.  With ``resume``, inputs whose outputs are complete and were made from the same
        content (SHA-256) by this model with these options (and the same tile) are not processed
        again, and temporary files a stopped run left in ``out_dir`` are removed.  With ``tile="fit"`` the
        tile is fitted to the first readable input and used for the whole run.  ``progress`` is
        called once per input.

        Raises:
            FlexunetError: an input path is missing or not a file or folder, the output folder is
                (inside) an input folder or cannot be written, or an output would replace an input.
            KeyboardInterrupt: after stopping every thread; outputs written so far are complete.
        """
        items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        check_output_folder(items, out_dir)
        return self.segment_files(expand_inputs(items), out_dir, colorize=colorize, overlay=overlay,
                                  probabilities=probabilities, resume=resume, progress=progress)

    def segment_files(self, paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                      colorize: bool = False, overlay: bool = False, probabilities: bool = False,
                      resume: bool = False, progress: ProgressCallback | None = None,
                      names: Sequence[str] | None = None) -> RunSummary:
        """:meth:`segment_folder` for image files already listed (folders are not expanded:
        ``flexunet infer`` lists its inputs once, with :func:`~flexunet.core.imageio.expand_inputs`);
        ``names``: their output names (default: :func:`output_names`)."""
        plan = self.plan_files(paths, out_dir, colorize=colorize, overlay=overlay, probabilities=probabilities,
                               resume=resume, names=names)
        report = _Progress(len(plan.tasks), progress)
        for task in plan.resumed:
            report("resumed", task)
        result = self.run_tasks(plan.todo, plan.layout, plan.outputs, on_slide=report, first=plan.first)
        return RunSummary(done=result.done, skipped=result.skipped, resumed=[t.path for t in plan.resumed],
                          stage_seconds=result.stage_seconds, wall_seconds=result.wall_seconds)

    def plan_files(self, paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                   colorize: bool = False, overlay: bool = False, probabilities: bool = False,
                   resume: bool = False, names: Sequence[str] | None = None) -> FolderPlan:
        """The first half of :meth:`segment_files`: output names, the run's layout, the output
        folder made (with ``resume``, its stale temporary files removed) and the inputs whose
        outputs are complete set aside.  :meth:`run_tasks` runs the rest, here or elsewhere."""
        paths = [Path(p) for p in paths]
        tasks = [SlideTask(i, p, n) for i, (p, n) in enumerate(zip(paths, names or output_names(paths)))]
        layout, first = self._run_layout(tasks)
        record = producer(model_digest(self.backend), layout, threshold=self.threshold,
                          fill_holes=self.fill_holes, min_size=self.min_size)
        outputs = Outputs(Path(out_dir), record, colorize=colorize, overlay=overlay, probabilities=probabilities)
        outputs.check_inputs(tasks)
        outputs.open(resume)
        complete = [resume and outputs.is_complete(task) for task in tasks]
        return FolderPlan(tasks, layout, outputs, todo=[t for t, c in zip(tasks, complete) if not c],
                          resumed=[t for t, c in zip(tasks, complete) if c], first=first)

    def run_tasks(self, tasks: Sequence[SlideTask], layout: Layout, outputs: Outputs, *,
                  on_slide: SlideCallback | None = None, first: _Decoded = (None, None, None)) -> PipelineResult:
        """Segment ``tasks`` with ``layout`` (fitted) and write them with ``outputs``: the second half of
        :meth:`segment_files` (``first``: an input already decoded, handed to the pipeline)."""
        handover = _Handover(*first) if first[0] in {t.path for t in tasks} else _Handover(None, None, None)
        pipeline = Pipeline(
            self.backend, layout, read=handover, prepare=self.info.preprocess,
            finish=lambda task, image, probs: self._finish(image, probs),
            write=lambda task, product: outputs.write(task, product, handover.digest(task.path)),
            batch_size=self.batch_for(layout), max_in_flight=self.max_in_flight, readers=self.readers,
            on_slide=on_slide,
        )
        return pipeline.run(tasks)

    def _run_layout(self, tasks: Sequence[SlideTask]) -> tuple[Layout, _Decoded]:
        """The layout of a folder run, and ``(path, image, sha256)`` of the input decoded to choose it.

        With ``tile="fit"`` one tile serves the whole run: the one fitted to the first readable
        input (the model's tile size when none is readable).  That image is decoded once, here, and
        handed to the pipeline.  Other layouts decode nothing: ``(None, None, None)``.
        """
        if not self.fit:
            return self._layout, (None, None, None)
        for task in tasks:
            digest = hashlib.sha256()
            try:
                image = read_image(task.path, digest=digest)
            except ImageReadError:
                continue
            return self.layout(image.shape[:2]), (task.path, image, digest.hexdigest())
        return self.layout(self.info.tile_size), (None, None, None)

    # -- lifetime ----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the backend, if this Segmenter loaded it."""
        if self._owns_backend:
            self.backend.close()

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
