"""The worker side of ``flexunet infer --ray``: the model shipped through Ray's object store, and
the segmenter actor that Ray Data runs (one :class:`~flexunet.runtime.segmenter.Segmenter` per actor).

The driver reads the model file (and the files a model needs beside it: ``<model>.data``, ONNX
external weights; ``<model>.json``, a TensorRT engine's sidecar; the training config of a
``.keras`` model) and puts the bytes in the object store once (:func:`ship_model`).  Each actor
writes them to a folder of its node's temporary directory named after their SHA-256
(:func:`materialize`), reused by the other actors of that node and by later runs of the same
model, so no node needs the driver's path.  Then it loads its Segmenter once and segments the
slides Ray Data hands it with :meth:`~flexunet.runtime.segmenter.Segmenter.run_tasks`, the local
run's own code path (decoding, tiled inference, atomic writes, resume records).

Each call returns one row per slide: its index, status (``done``, ``skipped`` or ``error``), the
reason, an exit code and the busy seconds of each stage.  Errors never escape an actor: an input
that cannot be read or written is ``skipped`` (as in a local run), and anything that stops a local
run (a full disk, a model the node cannot load) is an ``error`` row that the driver reports in
one line.  Ray is imported only inside these functions.
"""
from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from flexunet.core.atomic import write_bytes
from flexunet.core.config import CONFIG_FILENAME
from flexunet.core.errors import FlexunetError, first_line
from flexunet.runtime.backends import load_backend
from flexunet.runtime.backends.base import Backend, RunnerBackend
from flexunet.runtime.layout import Layout
from flexunet.runtime.outputs import Outputs
from flexunet.runtime.pipeline import STAGES, SlideTask
from flexunet.runtime.segmenter import Segmenter

#: Files a model needs beside it, by the model's suffix (``{name}``: the model's file name).
CALLS_PER_ACTOR = 2  # slides segmented at once by an actor (their inference one batch at a time)
COMPANIONS = {".onnx": ("{name}.data",), ".engine": ("{name}.json",), ".plan": ("{name}.json",)}
EXIT_BUG = 1  # exit code of an error that is not a FlexunetError (a local run would show a traceback)


def model_files(model: Path, config: Path | None = None) -> dict[str, Path]:
    """File name (as the actor writes it) -> file on the driver: the model and its companions."""
    files = {model.name: model}
    for pattern in COMPANIONS.get(model.suffix.lower(), ()):
        companion = model.with_name(pattern.format(name=model.name))
        if companion.is_file():
            files[companion.name] = companion
    if model.suffix.lower() == ".keras":
        config = config if config is not None else model.with_name(CONFIG_FILENAME)
        if config.is_file():
            files[CONFIG_FILENAME] = config
    elif model.suffix.lower() == ".h5":  # its config is beside it or in the parent folder
        from flexunet.architectures.seed_h5 import find_seed_config

        files[CONFIG_FILENAME] = find_seed_config(model, config)
    return files


def ship_model(model: Path, config: Path | None = None) -> dict[str, Any]:
    """Put the model's files in the object store: ``{"model", "config", "sha256", "size", "ref"}``
    (``ref``: the ObjectRef of ``{name: bytes}``; ``config``: the name of a .keras model's config)."""
    import ray

    files = {name: path.read_bytes() for name, path in model_files(model, config).items()}
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode("utf-8") + b"\0" + hashlib.sha256(files[name]).digest())
    return {"model": model.name, "config": CONFIG_FILENAME if CONFIG_FILENAME in files else None,
            "sha256": digest.hexdigest(), "size": sum(map(len, files.values())), "ref": ray.put(files)}


def cache_folder(sha256: str) -> Path:
    """Where the actors of a node keep the shipped model files with this digest."""
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"flexunet-ray-{user}" / sha256[:32]


def materialize(shipped: dict[str, Any]) -> tuple[Path, Path | None]:
    """The shipped model (and config) as local files: ``(model, config or None)``; fetched from
    the object store only when this node does not have them yet (written atomically)."""
    folder = cache_folder(shipped["sha256"])
    marker = folder / ".complete"
    if not marker.is_file():
        import ray

        files = ray.get(shipped["ref"])
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            write_bytes(folder / name, data)
        write_bytes(marker, b"")
    return folder / shipped["model"], folder / shipped["config"] if shipped["config"] else None


def _clean(text: str) -> str:
    """``text`` as valid UTF-8 (Arrow columns): undecodable file-name bytes escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _error(exc: BaseException) -> tuple[str, int]:
    """The one-line reason and the exit code of an error that stops the run."""
    if isinstance(exc, FlexunetError):
        return str(exc), exc.exit_code
    return f"{type(exc).__name__}: {first_line(exc)}", EXIT_BUG


class OneBatchAtATime(RunnerBackend):
    """One call's view of its actor's model, which the actor's other calls share: batches run one at
    a time (one inference per actor, as in the local pipeline, while another call decodes, blends
    and writes); ``waited``: seconds this call's batches waited for the others'."""

    def __init__(self, backend: Backend, lock: threading.Lock):
        super().__init__(backend, backend.path)
        self._lock, self.waited = lock, 0.0

    def predict(self, batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        with self._lock:
            self.waited += time.perf_counter() - start
            return self.runner.predict(batch)

    def accepts(self, height: int, width: int) -> bool:
        return self.runner.accepts(height, width)

    def close(self) -> None:
        """Nothing: the actor's model outlives its calls."""


class SegmentActor:
    """A Ray Data callable class: loads the model once, then segments the slides of each batch
    with a Segmenter of the run's options.

    Ray Data runs :data:`CALLS_PER_ACTOR` calls at once in each actor (threads), which share the
    model one batch at a time (:class:`OneBatchAtATime`).

    Args:
        shipped: :func:`ship_model`'s description of the model files.
        options: Segmenter options (backend, threads, batch size, tile...; ``config`` is replaced
            by the shipped config).
        tasks: every slide of the run; batches name them by ``index``.
        layout: the run's layout (its tile fitted on the driver).
        outputs: the run's writer (output folder, resume record of the driver's model and options).
    """

    def __init__(self, shipped: dict[str, Any], options: dict, tasks: Sequence[SlideTask], layout: Layout,
                 outputs: Outputs):
        self._tasks = {task.index: task for task in tasks}
        self._layout, self._outputs = layout, outputs
        self._backend, self._options, self._failure = None, {}, None
        self._lock = threading.Lock()
        try:
            if not outputs.out_dir.is_dir():  # created by the driver: this node does not share its file system
                raise FlexunetError(f"{outputs.out_dir}: no such folder on {socket.gethostname()}; a --ray run needs "
                                    "the inputs and the output folder on a file system every node shares")
            model, config = materialize(shipped)
            options = {k: v for k, v in options.items() if k != "config"}
            self._backend = load_backend(model, options.pop("backend", "auto"), threads=options.pop("threads", None),
                                         config=config)
            self._options = options
            self._segmenter()  # options the model does not allow fail here, once
        except Exception as exc:  # reported on the driver with the first batch (an error row)
            self._failure = _error(exc)

    def _segmenter(self) -> tuple[Segmenter, OneBatchAtATime]:
        shared = OneBatchAtATime(self._backend, self._lock)
        return Segmenter(shared, **self._options), shared

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tasks = [self._tasks[int(i)] for i in batch["index"]]
        rows: dict[int, tuple[str, str, int]] = {}
        seconds = dict.fromkeys(STAGES, 0.0)
        if self._failure is not None:
            rows = {task.index: ("error", *self._failure) for task in tasks}
            return _columns(tasks, rows, seconds, "")

        def on_slide(status: str, task: SlideTask, reason: str | None) -> None:
            rows[task.index] = (status, reason or "", 0)

        segmenter, shared = self._segmenter()
        try:
            seconds.update(segmenter.run_tasks(tasks, self._layout, self._outputs, on_slide=on_slide).stage_seconds)
        except Exception as exc:  # stops the run on the driver, like the same error in a local run
            failure = _error(exc)
            rows.update({t.index: ("error", *failure) for t in tasks if t.index not in rows})
        seconds["inference"] = max(0.0, seconds["inference"] - shared.waited)  # busy, not waiting
        return _columns(tasks, rows, seconds, self._backend.name)


def _columns(tasks: Sequence[SlideTask], rows: dict[int, tuple[str, str, int]], seconds: dict[str, float],
             backend: str) -> dict[str, np.ndarray]:
    """One row per task (stage seconds on the first row of the batch, 0 on the others)."""
    n = len(tasks)
    out = {"index": np.array([t.index for t in tasks], dtype=np.int64),
           "status": np.array([rows[t.index][0] for t in tasks], dtype=object),
           "reason": np.array([_clean(rows[t.index][1]) for t in tasks], dtype=object),
           "code": np.array([rows[t.index][2] for t in tasks], dtype=np.int64),
           "backend": np.array([backend] * n, dtype=object)}
    for stage, value in seconds.items():
        out[f"seconds_{stage}"] = np.array([value] + [0.0] * (n - 1), dtype=np.float64)
    return out
