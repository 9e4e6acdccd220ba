"""``flexunet infer --ray [ADDRESS]``: a folder run on a Ray cluster, with Ray Data.

The driver (the ``flexunet infer`` process) plans the run as a local run does
(:meth:`~flexunet.runtime.segmenter.Segmenter.plan_files`: the inputs listed once, their output
names, the run's tile, the output folder, the inputs a ``--resume`` finds complete), with the model
opened once on its CPU.  Then Ray Data streams the remaining inputs, one slide per call, through a
pool of :class:`~flexunet.runtime.ray_actor.SegmentActor` s (``map_batches`` with an
``ActorPoolStrategy``): each actor loads the model once, from bytes shipped through the object
store, and decodes, segments and writes its slides with the local run's own code, so outputs,
names, atomic writes and resume records are the same.  OUT (and the inputs) must be on a file
system every worker sees.

Over Ray Client (``ray://``), where Ray Data cannot run in the client, a task on the cluster runs
it and passes the rows back through a queue.

Each slide comes back to the driver as one row (done / skipped with its reason / error), which
drives the progress line; skipped inputs are reported by name, and an error row (a full disk, a
model a node cannot load) ends the run with that error's one line and exit code.  Ctrl-C or
SIGTERM end the driver's connection, which stops the actors (every file is whole: writes are
atomic); ``--resume`` finishes the run.

Ray is imported only inside these functions: ``import flexunet`` and a plain ``flexunet infer``
never load it.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import math
import os
import re
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

from flexunet.core.errors import FlexunetError, MissingDependencyError, first_line
from flexunet.runtime.outputs import Outputs
from flexunet.runtime.pipeline import STAGES, SlideTask
from flexunet.runtime.ray_actor import CALLS_PER_ACTOR, SegmentActor, model_files, ship_model
from flexunet.runtime.segmenter import FolderPlan, ProgressCallback, ProgressEvent, RunSummary, Segmenter

LOCAL = "local"             # --ray without an address: a Ray instance started for this run
SLIDES_PER_CALL = 1         # slides per actor call: one row, one progress step, per slide
WAIT_FOR_ACTORS_S = 600     # seconds to wait for the first actors (resources) before giving up
MIN_OBJECT_STORE = 256 << 20  # object store of a local instance: this plus three times the model
ROW_QUEUE = 256             # result rows on their way from the cluster to a Ray Client driver
RAY_MISSING = "--ray needs Ray: pip install 'flexunet[ray]'"
_RAY_LOG_LINE = re.compile(r"\[\d{4}-\d\d-\d\d [\d:,.]+ [DIWEF] \d+ \d+\] \S+:\d+: ")  # Ray's C++ log format


def check_address(value: str) -> str:
    """``value`` if it can name a Ray cluster (``local``, ``auto``, ``ray://HOST:PORT``,
    ``HOST:PORT``), else FlexunetError."""
    host, sep, port = value.rpartition(":")
    if value in (LOCAL, "auto") or value.startswith("ray://") or (sep and host and port.isdigit()):
        return value
    raise FlexunetError(f"--ray {value!r}: not a Ray address; give auto, ray://HOST:PORT or HOST:PORT, "
                        "or put --ray after the inputs for a local Ray instance")


@dataclass(frozen=True)
class Pool:
    """The segmenter actors of a run: how many, CPU threads (and CPUs reserved) and GPUs each."""

    actors: int
    threads: int
    gpus: float = 0.0
    fits: int = 0  # actors the cluster holds now (the pool starts with these and grows with it)

    def describe(self) -> str:
        gpus = f", {self.gpus:g} GPU each" if self.gpus else ""
        return (f"{self.actors} actor{'s' * (self.actors != 1)} x {self.threads} CPU "
                f"thread{'s' * (self.threads != 1)}{gpus}")


def plan_pool(resources: dict, actors: int | None = None, threads: int | None = None) -> Pool:
    """The actor pool for a cluster with ``resources`` (``ray.cluster_resources()``).

    With GPUs: one actor per GPU (more actors share them), with the cluster's CPUs shared among
    them (up to 4 threads each).  CPUs only: 1 thread per actor and as many actors as CPUs (on
    this 2-core machine two 1-thread segmenters beat one 2-thread one; ``benchmarks/ray_scaling.py``).
    """
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    if gpus:
        actors = actors or gpus
        threads = threads or max(1, min(4, cpus // actors))
        share = 1.0 if actors <= gpus else gpus / actors
        return Pool(actors, threads, share, fits=min(actors, cpus // threads) if cpus else 0)
    threads = threads or 1
    actors = actors or max(1, cpus // threads)
    return Pool(actors, threads, 0.0, fits=min(actors, cpus // threads))


def import_ray():
    """``ray`` with Ray Data, or MissingDependencyError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401 -- the engine runs on Ray Data
    except ImportError as exc:
        raise MissingDependencyError(f"{RAY_MISSING} ({first_line(exc)})") from None
    return ray


@contextlib.contextmanager
def connected(address: str, object_store: int) -> Iterator:
    """Ray, connected to the cluster at ``address`` (``local``: a new instance on this machine, with
    ``object_store`` bytes of object store), quiet, and disconnected (local: stopped) on exit.
    Ctrl-C and SIGTERM keep flexunet's handlers (``ray.init`` installs its own)."""
    ray = import_ray()
    kwargs = dict(logging_level=logging.ERROR, log_to_driver=False)
    if address == LOCAL:
        kwargs.update(address="local", include_dashboard=False, object_store_memory=object_store)
    else:
        kwargs["address"] = address
    main = threading.current_thread() is threading.main_thread()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        ray.init(**kwargs)
    except (KeyboardInterrupt, SystemExit):
        ray.shutdown()
        raise
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError... one line, no traceback
        ray.shutdown()
        where = "start a local Ray instance" if address == LOCAL else f"connect to the Ray cluster at {address}"
        raise FlexunetError(f"--ray: cannot {where} ({first_line(exc)})") from None
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    logging.getLogger("ray.util.client").setLevel(logging.CRITICAL)  # Ctrl-C: "error in data channel"
    _quiet_ray_data(ray)
    try:
        yield ray
    finally:
        ray.shutdown()


def _quiet_ray_data(ray) -> None:
    """No progress bars or console logs from Ray Data (its log file keeps them)."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    context.wait_for_min_actors_s = WAIT_FOR_ACTORS_S
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.CRITICAL + 1)


@dataclass
class RaySummary(RunSummary):
    """A :class:`RunSummary` of a Ray run, with the actor pool and the backends the actors ran."""

    pool: Pool | None = None
    backends: list[str] = field(default_factory=list)


def _driver_plan(model: Path, paths: Sequence[Path], out_dir: Path, options: dict, outputs: dict
                 ) -> tuple[FolderPlan, str]:
    """The run planned with the model opened once on the driver's CPU (an .onnx model with ONNX
    Runtime's CPU provider, whatever the actors use): ``(plan, how images are cut)``."""
    planning = {**options, "threads": 1}
    if model.suffix.lower() == ".onnx":
        planning["backend"] = "onnxruntime-cpu"
    with Segmenter(model, **planning) as segmenter:
        plan = segmenter.plan_files(paths, out_dir, **outputs)
        return FolderPlan(plan.tasks, plan.layout, plan.outputs, plan.todo, plan.resumed), segmenter.describe()


def segment_on_ray(model: str | Path, paths: Sequence[str | Path], out_dir: str | Path, *, address: str = LOCAL,
                   actors: int | None = None, threads: int | None = None, options: dict | None = None,
                   colorize: bool = False, overlay: bool = False, probabilities: bool = False,
                   resume: bool = False, progress: ProgressCallback | None = None,
                   echo: Callable[[str], None] | None = None) -> RaySummary:
    """:meth:`Segmenter.segment_files` on a Ray cluster (module docstring).

    Args:
        model: the model file (read on the driver, shipped to the actors).
        paths: image files (listed already; on a file system the workers see).
        out_dir: the output folder (on a file system the workers share).
        address: ``local`` (a Ray instance started for this run), ``auto``, ``ray://HOST:PORT``,
            ``HOST:PORT``.
        actors, threads: the pool (default: :func:`plan_pool`).
        options: Segmenter options (backend, tile, overlap, batch_size...); ``threads`` there is
            the default of ``threads``.
        progress: called once per input, on the driver.
        echo: where the lines about the cluster go (default: stderr).
    """
    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    address = check_address(address)
    options = dict(options or {})
    default_threads = options.pop("threads", None)
    threads = threads or default_threads
    model, paths = Path(model), [Path(p) for p in paths]
    plan, tiling = _driver_plan(model, paths, Path(out_dir), options,
                                dict(colorize=colorize, overlay=overlay, probabilities=probabilities, resume=resume))
    echo(f"tiling: {tiling}")
    events = _Events(plan, progress)
    if not plan.todo:
        events.resumed()
        return events.summary(0.0, None)
    model_bytes = sum(p.stat().st_size for p in model_files(model, options.get("config")).values())
    object_store = MIN_OBJECT_STORE + 3 * model_bytes
    with connected(address, object_store) as ray:
        resources = ray.cluster_resources()
        pool = plan_pool(resources, actors, threads)
        where = "a local Ray instance" if address == LOCAL else f"the Ray cluster at {address}"
        echo(f"ray: {pool.describe()} on {where} ({resources.get('CPU', 0):g} CPUs, "
             f"{resources.get('GPU', 0):g} GPUs)")
        if pool.fits < pool.actors:
            echo(f"ray: the cluster holds {pool.fits} of these actors now; the pool grows if it does")
        start = time.perf_counter()
        try:
            for row in _rows(ray, plan, pool, ship_model(model, options.get("config")), options):
                events.row(row)
        except (FlexunetError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a Ray error (a node lost for good...): one line, no traceback
            raise FlexunetError(f"ray: {first_line(exc)}", exit_code=1) from None
        return events.summary(time.perf_counter() - start, pool)


def _rows(ray, plan: FolderPlan, pool: Pool, shipped: dict, options: dict) -> Iterator[dict]:
    """The result rows of the slides of ``plan.todo``, as the actors finish them.  Over Ray Client
    (``ray://``), where Ray Data cannot run, a task on the cluster runs it and passes the rows back
    through a queue."""
    from ray.util.client import ray as client

    if not client.is_connected():
        yield from _stream(ray, plan, pool, shipped, options)
        return
    from ray.util.queue import Empty, Queue

    rows = Queue(maxsize=ROW_QUEUE)
    task = ray.remote(num_cpus=0)(_stream_into).remote(rows, plan, pool, shipped, options)
    while True:
        try:
            row = rows.get(timeout=1.0)
        except Empty:
            if ray.wait([task], timeout=0)[0]:
                ray.get(task)  # raises what stopped it
                return
            continue
        if row is None:
            return
        yield row


def _stream_into(rows, plan: FolderPlan, pool: Pool, shipped: dict, options: dict) -> None:
    """:func:`_stream`'s rows put on the queue ``rows``, then None (a task on the cluster)."""
    import ray

    _quiet_ray_data(ray)
    for row in _stream(ray, plan, pool, shipped, options):
        rows.put(row)
    rows.put(None)


def _stream(ray, plan: FolderPlan, pool: Pool, shipped: dict, options: dict) -> Iterator[dict]:
    """The result rows of the slides of ``plan.todo``, from Ray Data on this driver."""
    calls = math.ceil(len(plan.todo) / SLIDES_PER_CALL)
    dataset = ray.data.from_items([{"index": t.index} for t in plan.todo], override_num_blocks=calls)
    strategy = ray.data.ActorPoolStrategy(min_size=max(1, min(pool.fits, pool.actors)), max_size=pool.actors,
                                          max_tasks_in_flight_per_actor=CALLS_PER_ACTOR + 1,
                                          max_concurrent_calls_per_actor=CALLS_PER_ACTOR,
                                          enable_true_multi_threading=True)
    remote = {"num_gpus": pool.gpus} if pool.gpus else {}
    tasks, outputs = _for_workers(plan)
    dataset = dataset.map_batches(
        SegmentActor, batch_size=SLIDES_PER_CALL, batch_format="numpy", compute=strategy,
        num_cpus=pool.threads, **remote,
        fn_constructor_kwargs=dict(shipped=shipped, options={**options, "threads": pool.threads},
                                   tasks=tasks, layout=plan.layout, outputs=outputs))
    batches = iter(dataset.iter_batches(batch_size=None, batch_format="numpy"))
    with _ray_log_lines_hidden():  # the actors start: Ray's C++ core worker warns about their restarts
        first = next(batches, None)
    for batch in itertools.chain([first] if first is not None else [], batches):
        for i in range(len(batch["index"])):
            yield {key: column[i] for key, column in batch.items()}


def _for_workers(plan: FolderPlan) -> tuple[list[SlideTask], Outputs]:
    """The slides to segment and the writer, with absolute paths (a worker's current folder is
    not the driver's)."""
    outputs = copy.copy(plan.outputs)
    outputs.out_dir = Path(os.path.abspath(plan.outputs.out_dir))
    return [replace(task, path=Path(os.path.abspath(task.path))) for task in plan.todo], outputs


def _as_given(reason: str, task: SlideTask) -> str:
    """An actor's reason for skipping ``task``, naming the input as it was given (not absolute)."""
    absolute = os.path.abspath(task.path)
    return f"{task.path}{reason[len(absolute):]}" if reason.startswith(absolute) else reason


@contextlib.contextmanager
def _ray_log_lines_hidden() -> Iterator[None]:
    """Ray's C++ log lines (``[2026-12-01 23:44:08,501 E 5105 5105] core_worker.cc:2465: ...``)
    kept off stderr while the block runs (the block writes nothing else there; what else reaches
    stderr meanwhile is shown when it ends).  Ray Data's actor pools are restartable, and the
    driver's core worker logs an error-level warning about that for each actor it creates."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not _RAY_LOG_LINE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _Events:
    """The driver's account of a Ray run: progress events, done / skipped / resumed, stage seconds."""

    def __init__(self, plan: FolderPlan, progress: ProgressCallback | None):
        self.plan, self.progress = plan, progress
        self.tasks = {t.index: t for t in plan.todo}
        self.finished = 0
        self.done, self.skipped, self.backends = [], [], []
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._resumed_reported = False

    def _report(self, status: str, path: Path, reason: str | None = None) -> None:
        self.finished += 1
        if self.progress is not None:
            self.progress(ProgressEvent(status, path, self.finished, len(self.plan.tasks), reason))

    def resumed(self) -> None:
        """Report the inputs whose outputs were complete (once, when the first slide is back, so
        that the lines about the cluster come first)."""
        if not self._resumed_reported:
            self._resumed_reported = True
            for task in self.plan.resumed:
                self._report("resumed", task.path)

    def row(self, row: dict) -> None:
        """One slide back from an actor; an error row raises it (FlexunetError)."""
        if row["status"] == "error":
            raise FlexunetError(str(row["reason"]), exit_code=int(row["code"]))
        self.resumed()
        task = self.tasks[int(row["index"])]
        for stage in self.seconds:
            self.seconds[stage] += float(row.get(f"seconds_{stage}", 0.0))
        if row["backend"] and row["backend"] not in self.backends:
            self.backends.append(str(row["backend"]))
        if row["status"] == "done":
            self.done.append(task)
            self._report("done", task.path)
        else:
            reason = _as_given(str(row["reason"]), task)
            self.skipped.append((task, reason))
            self._report("skipped", task.path, reason)

    def summary(self, wall: float, pool: Pool | None) -> RaySummary:
        return RaySummary(done=[t.path for t in sorted(self.done, key=lambda t: t.index)],
                          skipped=[(t.path, r) for t, r in sorted(self.skipped, key=lambda s: s[0].index)],
                          resumed=[t.path for t in self.plan.resumed], stage_seconds=self.seconds,
                          wall_seconds=wall, pool=pool, backends=self.backends)
