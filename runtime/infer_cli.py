"""``flexunet infer``: segment slides with an exported (or Keras) model, the CLI of :class:`Segmenter`.

Progress goes to stderr (one rewritten line on a terminal, a line per slide otherwise); the
per-stage timing table and the summary go to stdout at the end.  SIGTERM stops a run like Ctrl-C:
the slides in flight are dropped, every file written is whole, exit 130.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import TextIO

import click

from flexunet.core.console import handle_errors
from flexunet.core.errors import EXIT_CODES_HELP, EXIT_SKIPPED, FlexunetError, one_line
from flexunet.core.imageio import expand_inputs, max_image_pixels
from flexunet.core.modelinfo import ModelInfo
from flexunet.core.tiling import BLEND_MODES
from flexunet.runtime.autoselect import resolve
from flexunet.runtime.backends.base import BACKENDS
from flexunet.core.tiling import DEFAULT_OVERLAP
from flexunet.runtime.layout import DEFAULT_MEMORY_BUDGET, FIT, FIT_MAX_SIDE, MAX_BUDGET_BATCH, parse_bytes
from flexunet.runtime.outputs import check_output_folder
from flexunet.runtime.segmenter import ProgressEvent, RunSummary, Segmenter
from flexunet.runtime.wsi_cli import run_inputs, slide_inputs, slide_options


class TileSize(click.ParamType):
    """``512``, ``512x768`` (height x width) or ``fit`` (the least computed area for the image size)."""

    name = "N|HxW|fit"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple) or value == FIT:
            return value
        parts = str(value).lower().split("x")
        try:
            size = tuple(int(p) for p in parts)
        except ValueError:
            size = ()
        if len(size) not in (1, 2) or min(size) < 1:
            self.fail(f"{value!r} is not a tile size like 512, 512x768 or fit", param, ctx)
        return size if len(size) == 2 else (size[0], size[0])


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressLine:
    """Slides finished / total, slides per second and ETA on ``stream``.

    On a terminal one line is rewritten in place; otherwise one line is printed per slide.
    Resumed slides count as finished but not towards the rate.
    """

    def __init__(self, total: int, stream: TextIO):
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self.start = time.perf_counter()
        self.processed = 0
        self._open = False
        self._width = 0  # longest line written in place, to blank out the previous one

    def __call__(self, event: ProgressEvent) -> None:
        if event.status != "resumed":
            self.processed += 1
        elapsed = time.perf_counter() - self.start
        rate = self.processed / elapsed if elapsed > 0 else 0.0
        left = self.total - event.finished
        eta = _duration(left / rate) if rate > 0 else "?"
        width = len(str(self.total))
        line = f"[{event.finished:{width}d}/{self.total}] {rate:.2f} slides/s, ETA {eta}"
        if self.tty:
            self._width = max(self._width, len(line))
            self.stream.write(f"\r{line.ljust(self._width)}")
            self._open = True
        else:
            self.stream.write(f"{line}  {event.status} {one_line(event.path.name)}\n")
        self.stream.flush()

    def close(self) -> None:
        """End the rewritten line, if any."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


def format_report(summary: RunSummary) -> str:
    """The stage timing table and the summary lines printed at the end of a run."""
    wall = summary.wall_seconds
    lines = [f"{'stage':<12}{'busy s':>9}{'% wall':>9}"]
    for stage, seconds in summary.stage_seconds.items():
        share = 100.0 * seconds / wall if wall > 0 else 0.0
        lines.append(f"{stage:<12}{seconds:>9.2f}{share:>8.1f}%")
    lines.append(f"{'wall':<12}{wall:>9.2f}")
    rate = f" ({len(summary.done) / wall:.2f} slides/s)" if wall > 0 and summary.done else ""
    lines.append(f"done {len(summary.done)}, skipped {len(summary.skipped)}, "
                 f"resumed {len(summary.resumed)}{rate}")
    lines += [f"skipped: {reason}" for _, reason in summary.skipped]
    return "\n".join(lines)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within this block (in the main thread), the first SIGTERM raises KeyboardInterrupt, so a run
    stops as on Ctrl-C (exit 130) instead of dying mid-write; later ones are ignored while it stops."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def handler(signum, frame):
        if not received:
            received.append(signum)
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def model_default(field: str) -> str:
    """Where the default of an option read from the model's metadata comes from, for help texts:
    ``the model's, else <ModelInfo's default>`` (the value used when the metadata does not say)."""
    return f"the model's, else {next(f.default for f in fields(ModelInfo) if f.name == field)}"


TILE_HELP = (f"Tile size N or HxW, or 'fit' (dynamic-size models: the tile computing the least area for the "
             f"first image's size, up to {FIT_MAX_SIDE} px and what --memory-budget allows) [default: a fixed-size "
             "model's input size; fit for a dynamic-size model]; a dynamic-size model's tile is rounded up to a "
             "size it takes.")
OVERLAP_HELP = ("Tile overlap in pixels [default: the model's measured overlap (metadata 'measured_overlap': the "
                "smallest at which tiles agree with --whole, measured at export), else its config's "
                f"[tiledinfer] overlapping (metadata 'overlap'), else {DEFAULT_OVERLAP}; at most half the tile].")
BATCH_HELP = (f"Tiles per batch [default: the most tiles whose input, probabilities and network activations "
              f"(metadata 'activation_bytes') fit in --memory-budget, at most {MAX_BUDGET_BATCH}; 1 with --whole]; "
              "at most the model's fixed batch size, if it has one.")
BUDGET_HELP = (f"Memory for one batch, e.g. 1G, 800M [default: {DEFAULT_MEMORY_BUDGET // 2**30}G, which keeps a run "
               "of any number of slides under about 2 GiB]; sets the default --batch-size and bounds 'fit' tiles.")
BLEND_HELP = f"Blending of overlapping tiles [default: {model_default('blend')}]."
THRESHOLD_HELP = f"Foreground threshold of a binary model [default: {model_default('threshold')}]."
BACKEND_HELP = ("Inference backend; auto runs the fastest path `flexunet tune` recorded as passing for an .onnx "
                "(else the exact FP32 ONNX Runtime path) and picks by file type otherwise. openvino runs an .onnx "
                "with OpenVINO on the CPU in FP32, openvino-bf16 in BF16 (CPUs with AVX512_BF16 or AMX; "
                "pip install 'flexunet[openvino]').")
THREADS_HELP = "CPU threads for ONNX Runtime and OpenVINO [default: all cores]."
RAY_HELP = ("Run on Ray (pip install 'flexunet[ray]'): --ray alone starts a Ray instance on this machine, "
            "--ray ADDRESS (auto, ray://HOST:PORT, HOST:PORT) uses that cluster. This process lists the inputs "
            "and plans the run; a pool of actors, each loading the model once, decodes, segments and writes. "
            "The inputs and OUT must be on a file system every node sees (a shared mount on a cluster).")


@click.command("infer", epilog=EXIT_CODES_HELP)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (created if needed).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True, help=BACKEND_HELP)
@click.option("--tile", type=TileSize(), help=TILE_HELP)
@click.option("--overlap", type=click.IntRange(min=0), help=OVERLAP_HELP)
@click.option("--batch-size", type=click.IntRange(min=1), help=BATCH_HELP)
@click.option("--memory-budget", metavar="SIZE", help=BUDGET_HELP)
@click.option("--blend", type=click.Choice(BLEND_MODES), help=BLEND_HELP)
@click.option("--whole", is_flag=True, help="One padded pass over the whole image (dynamic-size models).")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), help=THRESHOLD_HELP)
@click.option("--colorize", is_flag=True, help="Also write <stem>_color.png in the class colours.")
@click.option("--overlay", is_flag=True, help="Also write <stem>_overlay.jpg|png over the input.")
@click.option("--probabilities", is_flag=True, help="Also write <stem>_prob.npy (HxWxK float32).")
@click.option("--fill-holes", is_flag=True, help="Fill background holes enclosed by one class.")
@click.option("--min-size", type=click.IntRange(min=0), default=0, show_default=True,
              help="Remove objects smaller than this many pixels.")
@click.option("--threads", type=click.IntRange(min=1), help=THREADS_HELP)
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path),
              help="Training config of a .keras model [default: the one beside it].")
@click.option("--resume", is_flag=True,
              help="Skip inputs whose outputs are complete (same input content, model, options and tile); "
                   "remove unfinished temporary files of a stopped run.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help=RAY_HELP)
@click.option("--ray-actors", type=click.IntRange(min=1),
              help="Segmenter actors of a --ray run [default: one per GPU, else one per CPU / --ray-threads].")
@click.option("--ray-threads", type=click.IntRange(min=1),
              help="CPU threads (and CPUs reserved) per actor of a --ray run [default: --threads, else 1 "
                   "(CPUs only) or the CPUs per GPU, at most 4].")
@slide_options  # --mpp, --slide-mpp, --tissue-mask, --no-tissue-mask (runtime.wsi_cli)
@handle_errors
def infer_cmd(model, inputs, out_dir, backend, tile, overlap, batch_size, memory_budget, blend, whole, threshold,
              colorize, overlay, probabilities, fill_holes, min_size, threads, config, resume,
              ray_address, ray_actors, ray_threads, **slides):
    """Segment INPUT images and folders of images with MODEL (.onnx, .keras, .engine/.plan).

    Writes OUT/<stem>.png (0/255, or class indices for a multiclass model) per input, plus the
    optional colourised mask, overlay and probabilities. Unreadable images, and images above
    $FLEXUNET_MAX_IMAGE_PIXELS pixels (default: what this machine's memory can segment, at most
    2^30), are reported and skipped; every file is written under a temporary name and renamed when
    complete. OUT may not be an input folder or inside one. Ctrl-C or SIGTERM stop the run (exit
    130); --resume then keeps what was complete and removes unfinished temporary files.

    Whole-slide images (.svs .ndpi .mrxs .scn and other OpenSlide formats, pyramidal .tif/.tiff; pip
    install 'flexunet[wsi]') are read region by region, background skipped by a tissue mask, and
    give OUT/<stem>.tif (pyramidal labels), <stem>.geojson (QuPath), <stem>_preview.png and
    <stem>_tissue.png.
    """
    with sigterm_as_interrupt():
        _infer(model, inputs, out_dir, dict(backend=backend, tile=tile, overlap=overlap, batch_size=batch_size,
                                            blend=blend, whole=whole, threshold=threshold, fill_holes=fill_holes,
                                            min_size=min_size, threads=threads, config=config,
                                            memory_budget=None if memory_budget is None else parse_bytes(memory_budget)),
               dict(colorize=colorize, overlay=overlay, probabilities=probabilities, resume=resume),
               dict(address=ray_address, actors=ray_actors, threads=ray_threads), slides)


def _infer(model: Path, inputs: tuple[Path, ...], out_dir: Path, options: dict, outputs: dict,
           ray: dict | None = None, slides: dict | None = None) -> None:
    """``flexunet infer``: inputs and output folder checked before the model is loaded."""
    ray = ray or {}
    if ray.get("address") is None and (ray.get("actors") or ray.get("threads")):
        raise FlexunetError("--ray-actors and --ray-threads apply to --ray runs only")
    max_image_pixels()  # a bad $FLEXUNET_MAX_IMAGE_PIXELS is an error before anything runs
    paths = expand_inputs(inputs)
    paths, slides = slide_inputs(inputs, paths, slides or {}, ray.get("address") is not None)  # + slides
    check_output_folder(inputs, out_dir)
    if not paths:
        raise FlexunetError(f"no images in {', '.join(map(str, inputs))}")
    choice = resolve(model, options.get("backend", "auto"))  # auto: the path `flexunet tune` recorded
    if choice is not None and choice.found:
        model, options = choice.path, {**options, "backend": choice.backend}
    else:
        choice = None
    if ray.get("address") is not None:
        if choice is not None:
            click.echo(choice.line, err=True)
        summary = _infer_on_ray(model, paths, out_dir, options, outputs, ray)
    else:
        with Segmenter(model, **options) as segmenter:
            if choice is not None:
                click.echo(choice.line, err=True)
            click.echo(f"backend: {segmenter.backend.name}", err=True)
            click.echo(f"tiling: {segmenter.describe()}", err=True)
            progress = ProgressLine(len(paths), sys.stderr)
            try:
                summary = run_inputs(segmenter, paths, out_dir, slides, progress=progress, **outputs,
                                     echo=lambda line: click.echo(line, err=True))
            finally:
                progress.close()
    click.echo(format_report(summary))
    if summary.skipped:
        sys.exit(EXIT_SKIPPED)


def _infer_on_ray(model: Path, paths: list[Path], out_dir: Path, options: dict, outputs: dict,
                  ray: dict) -> RunSummary:
    """The run on a Ray cluster (:mod:`flexunet.runtime.ray_engine`, which imports Ray)."""
    from flexunet.runtime.ray_engine import segment_on_ray

    progress = ProgressLine(len(paths), sys.stderr)
    try:
        summary = segment_on_ray(model, paths, out_dir, **ray, options=options, progress=progress,
                                 echo=lambda line: click.echo(line, err=True), **outputs)
    finally:
        progress.close()
    if summary.backends:
        click.echo(f"backend: {', '.join(summary.backends)} in each actor", err=True)
    return summary
