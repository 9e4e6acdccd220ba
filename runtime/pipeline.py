"""The concurrent slide engine: read -> batch + infer -> stitch + post-process -> write.

Threads connected by bounded queues run the steps of the tiled engine (:mod:`flexunet.runtime.segment`)::

    reader(s) --jobs--> batcher/inference --results--> stitcher/post --outputs--> writer

* a reader decodes a slide, pre-processes it and cuts it by the layout (a
  :class:`~flexunet.runtime.segment.TiledImage`; one job per slide);
* the batcher groups tiles into batches of ``batch_size`` (:func:`~flexunet.runtime.segment.batches`)
  and runs ``backend.predict``; a batch is filled with the tiles of consecutive slides, so the
  engine never runs a short batch at the end of each slide or waits for the next slide to be decoded;
* the stitcher blends every tile's probabilities into its slide and, once a slide has all its
  tiles, post-processes it;
* the writer writes the slide's outputs.

The steps are the ones :func:`~flexunet.runtime.segment.predict_image` runs for one image, so a
folder run gives the same probabilities as segmenting each image on its own.

Memory is bounded for any number of slides: every queue is bounded, and a reader starts a slide
only when :class:`~flexunet.runtime.admission.Admission` allows it -- while fewer than
``max_in_flight`` slides are in flight (read but not yet written or skipped), or when the batcher is
waiting for tiles that only a new slide can give (small slides).  At most
``max(max_in_flight, batch_size)`` slides are in flight, ``max_in_flight`` for slides of
``batch_size`` tiles or more, and batches are always full except the last one (and where the tile
shape changes, in whole-image mode).

Stopping: an unreadable image (:class:`~flexunet.core.errors.ImageReadError`), one too large
for the memory while it is pre-processed and cut, and an :class:`InputSkipped` raised by ``read``
or ``write`` (an output name the file system refuses) are recorded as skipped and the run goes
on.  Any other exception in a stage sets a shared stop event; every thread notices it within
:data:`POLL` seconds (every wait on a queue or for admission times out), a running ``predict`` is
interrupted, the threads are joined (for at most :data:`JOIN_TIMEOUT` seconds) and
:meth:`Pipeline.run` re-raises it.  A ``KeyboardInterrupt`` in the calling thread stops the run the
same way and is re-raised.  Outputs are written atomically by the ``write`` callable, so a stopped
run leaves no partial file.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from flexunet.core.errors import FlexunetError, ImageReadError, one_line
from flexunet.runtime.admission import Admission
from flexunet.runtime.backends.base import Backend
from flexunet.runtime.layout import Layout
from flexunet.runtime.segment import (TiledImage, TileRef, batches, blend_batch, predict_batch, stack_tiles,
                                      tile_refs)

log = logging.getLogger("flexunet")

#: Stages whose busy time is measured, in pipeline order.
STAGES = ("decode", "preprocess", "batch", "inference", "blend", "post", "write")
POLL = 0.1           # seconds between checks of the stop event while waiting
JOIN_TIMEOUT: float | None = 2.0  # seconds to wait for the threads when stopping (None: no limit)
RESULT_QUEUE = 4     # predicted batches waiting for the stitcher
OUTPUT_QUEUE = 2     # finished slides waiting for the writer


class InputSkipped(FlexunetError):
    """One input cannot be processed (its message names it); the run goes on without it."""


_SKIPPED = (ImageReadError, InputSkipped)  # errors of one input, not of the run


@dataclass(frozen=True)
class SlideTask:
    """One input of a run: its position in the input list, its file and its output name."""

    index: int
    path: Path
    name: str


@dataclass
class PipelineResult:
    """What a run did: inputs written and skipped (in input order), busy seconds per stage
    (summed over threads, so stages that overlap can add up to more than the wall time)."""

    done: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0


class StageTimer:
    """Thread-safe busy-time accounting: ``with timer("decode"): ...``."""

    def __init__(self, stages: Sequence[str] = STAGES):
        self._seconds = dict.fromkeys(stages, 0.0)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                self._seconds[stage] = self._seconds.get(stage, 0.0) + elapsed

    def seconds(self) -> dict[str, float]:
        """Busy seconds per stage so far."""
        with self._lock:
            return dict(self._seconds)


class _Slide(TiledImage):
    """A slide in flight: its task and decoded image beside its tiles and their blend."""

    def __init__(self, task: SlideTask, image: np.ndarray, x: np.ndarray, layout: Layout):
        super().__init__(x, layout)
        self.task = task
        self.image = image


class _Stopped(Exception):
    """Raised inside a stage thread when the run is being stopped."""


_END = object()  # end-of-stream marker passed down the queues

Reader = Callable[[Path], np.ndarray]
Preparer = Callable[[np.ndarray], np.ndarray]
Finisher = Callable[[SlideTask, np.ndarray, np.ndarray], Any]
Writer = Callable[[SlideTask, Any], None]
SlideCallback = Callable[[str, SlideTask, "str | None"], None]


class Pipeline:
    """Runs slides through read -> batch/infer -> stitch/post-process -> write concurrently.

    Args:
        backend: runs the batches.
        layout: how each image is cut into model inputs (with its tile: not a ``fit`` layout).
        read: ``path -> image`` (decode; raises ImageReadError for unreadable files).
        prepare: ``image -> float32 HxWxC model input`` (pre-processing).
        finish: ``(task, image, probabilities) -> product`` (labels and derived images).
        write: ``(task, product) -> None`` (writes the outputs atomically; raises InputSkipped
            to skip that input).
        batch_size: tiles per ``predict`` call.
        max_in_flight: slides read but not yet written, at most (>= 1; slides smaller than a batch
            may exceed it up to ``batch_size``, see :class:`~flexunet.runtime.admission.Admission`).
        readers: reader threads.
        on_slide: called as ``on_slide(status, task, reason)`` when a slide is done
            (``"done"``, reason None) or skipped (``"skipped"``, reason the error message);
            calls are serialised.

    A Pipeline runs once: create one per run.
    """

    def __init__(self, backend: Backend, layout: Layout, *, read: Reader, prepare: Preparer,
                 finish: Finisher, write: Writer, batch_size: int = 4, max_in_flight: int = 3,
                 readers: int = 1, on_slide: SlideCallback | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if readers < 1:
            raise ValueError(f"readers must be >= 1, got {readers}")
        if layout.fit:
            raise ValueError("the layout of a run needs its tile: fit it to an image first (layout.fitted)")
        self._backend = backend
        self._layout = layout
        self._read, self._prepare, self._finish, self._write = read, prepare, finish, write
        self._batch_size = batch_size
        self._readers = readers
        self._on_slide = on_slide
        self._admission = Admission(max_in_flight, batch_size, POLL)
        self._jobs: queue.Queue = queue.Queue(maxsize=max_in_flight)
        self._results: queue.Queue = queue.Queue(maxsize=RESULT_QUEUE)
        self._outputs: queue.Queue = queue.Queue(maxsize=OUTPUT_QUEUE)
        self._stop = threading.Event()
        self._wake = threading.Event()  # set when the writer is finished or a stage failed
        self._lock = threading.Lock()
        self._tasks: Iterator[SlideTask] = iter(())
        self._error: BaseException | None = None
        self._done: list[SlideTask] = []
        self._skipped: list[tuple[SlideTask, str]] = []
        self._started = False
        self.timer = StageTimer()

    # -- running ---------------------------------------------------------------------------------
    def run(self, tasks: Sequence[SlideTask]) -> PipelineResult:
        """Process ``tasks``; returns when every slide is written or skipped.

        Raises:
            KeyboardInterrupt: after stopping every thread, when interrupted.
            Exception: the first error a stage raised (other than those of one input), after
                stopping every thread.
        """
        if self._started:
            raise RuntimeError("a Pipeline runs once; create a new one")
        self._started = True
        self._tasks = iter(list(tasks))
        start = time.perf_counter()
        stages = [(f"read-{i}", self._read_loop) for i in range(self._readers)]
        stages += [("infer", self._batch_loop), ("stitch", self._stitch_loop), ("write", self._write_loop)]
        threads = [threading.Thread(target=self._guard, args=(body,), name=f"flexunet-{name}", daemon=True)
                   for name, body in stages]
        try:
            for thread in threads:
                thread.start()
            while not self._wake.wait(POLL):
                pass
        except BaseException:  # KeyboardInterrupt (or another async exception) in this thread
            self._shutdown(threads)
            raise
        if self._error is not None:
            self._shutdown(threads)
            raise self._error
        self._join(threads)
        return PipelineResult(
            done=[t.path for t in sorted(self._done, key=lambda t: t.index)],
            skipped=[(t.path, reason) for t, reason in sorted(self._skipped, key=lambda s: s[0].index)],
            stage_seconds=self.timer.seconds(),
            wall_seconds=time.perf_counter() - start,
        )

    def _shutdown(self, threads: list[threading.Thread]) -> None:
        self._stop.set()
        self._backend.interrupt()
        self._join(threads)

    @staticmethod
    def _join(threads: list[threading.Thread]) -> None:
        """Join the started threads within :data:`JOIN_TIMEOUT` seconds in all (None: however long
        it takes)."""
        deadline = None if JOIN_TIMEOUT is None else time.monotonic() + JOIN_TIMEOUT
        for thread in (t for t in threads if t.ident is not None):
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        busy = [t.name for t in threads if t.is_alive()]
        if busy:
            log.warning(f"pipeline threads still busy after {JOIN_TIMEOUT:.0f} s: {', '.join(busy)}; "
                        "they stop after their current step")

    def _guard(self, body: Callable[[], None]) -> None:
        """Run one stage; record its first error and stop the others."""
        try:
            body()
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 -- re-raised by run() in the caller's thread
            with self._lock:
                if self._error is None and not self._stop.is_set():
                    self._error = exc
            self._stop.set()
            self._wake.set()

    # -- waiting without hanging -------------------------------------------------------------------
    def _check(self) -> None:
        if self._stop.is_set():
            raise _Stopped

    def _patiently(self, step: Callable[[], Any]) -> Any:
        """``step()`` (a queue operation that times out after :data:`POLL` s), retried until it
        succeeds or the run is stopped."""
        while True:
            self._check()
            try:
                return step()
            except (queue.Full, queue.Empty):
                pass

    def _put(self, q: queue.Queue, item: Any) -> None:
        self._patiently(lambda: q.put(item, timeout=POLL))

    def _get(self, q: queue.Queue) -> Any:
        return self._patiently(lambda: q.get(timeout=POLL))

    def _drain(self, q: queue.Queue) -> Iterator[Any]:
        """The items put on ``q`` until the end marker."""
        while (item := self._get(q)) is not _END:
            yield item

    def _report(self, task: SlideTask, status: str, reason: str | None = None) -> None:
        """Record a written or skipped slide and report it."""
        with self._lock:
            if status == "done":
                self._done.append(task)
            else:
                reason = one_line(reason)  # a file name with a line break stays on its report's line
                self._skipped.append((task, reason))
            if self._on_slide is not None:
                self._on_slide(status, task, reason)

    # -- stages ------------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        while True:
            with self._lock:
                task = next(self._tasks, None)
            if task is None:
                break
            self._admission.start(self._check)
            try:
                slide = self._read_slide(task)
            except _SKIPPED as exc:
                self._report(task, "skipped", str(exc))
                self._admission.dropped()
                continue
            self._admission.read(len(slide))
            self._put(self._jobs, slide)
        self._put(self._jobs, _END)

    def _read_slide(self, task: SlideTask) -> _Slide:
        """Decode, pre-process and cut one input (InputSkipped when it does not fit in memory)."""
        with self.timer("decode"):
            image = self._read(task.path)
        try:
            with self.timer("preprocess"):
                return _Slide(task, image, self._prepare(image), self._layout)
        except MemoryError:
            raise InputSkipped(f"{task.path}: not enough memory for a {image.shape[1]}x{image.shape[0]} "
                               "image") from None

    def _incoming(self) -> Iterator[_Slide]:
        """The slides the readers cut, as they come, until every reader has finished."""
        ended = 0
        while ended < self._readers:
            slide = self._get(self._jobs)
            if slide is _END:
                ended += 1
            else:
                yield slide

    def _batch_loop(self) -> None:
        for refs in batches(tile_refs(self._incoming()), self._batch_size):
            self._infer(refs)
        self._put(self._results, _END)

    def _infer(self, refs: list[TileRef]) -> None:
        """Predict one batch of tiles (of one or more slides) and pass it to the stitcher."""
        with self.timer("batch"):
            batch, completed = stack_tiles(refs)
        self._admission.batched(len(refs), completed)
        self._check()
        with self.timer("inference"):
            preds = predict_batch(self._backend.predict, batch, self._backend.name)
        self._put(self._results, (preds, refs))

    def _stitch_loop(self) -> None:
        for preds, refs in self._drain(self._results):
            with self.timer("blend"):
                complete = [(slide, slide.probabilities()) for slide in blend_batch(preds, refs)]
            for slide, probs in complete:
                with self.timer("post"):
                    product = self._finish(slide.task, slide.image, probs)
                self._put(self._outputs, (slide.task, product))
        self._put(self._outputs, _END)

    def _write_loop(self) -> None:
        for task, product in self._drain(self._outputs):
            try:
                with self.timer("write"):
                    self._write(task, product)
            except InputSkipped as exc:
                self._report(task, "skipped", str(exc))
            else:
                self._report(task, "done")
            self._admission.written()
        self._wake.set()
