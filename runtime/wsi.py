"""Whole-slide runs: ``flexunet infer MODEL slide.svs -o OUT`` and folders mixing images and slides.

A slide (:func:`~flexunet.runtime.wsi_reader.is_slide`) is read lazily at the resolution the model
works at (:class:`~flexunet.runtime.wsi_reader.SlideView`, from ``--mpp``/the model's ``mpp`` and
the slide's own or ``--slide-mpp``), cut into a grid of regions (cores of about :data:`REGION`
pixels, each read with a margin of the tile overlap on every side, sized to a whole number of tile
strides), and the regions that touch tissue (:mod:`~flexunet.runtime.wsi_tissue`; all of them with
``--no-tissue-mask``) go through the same tiled engine as plain images
(:class:`~flexunet.runtime.pipeline.Pipeline`: the model's pre-processing, tiles batched across
regions, blended with the model's window, then threshold/argmax and clean-up).  Each region's core
goes to the :class:`~flexunet.runtime.wsi_writer.SlideWriter` as soon as it is done; regions without
tissue are background.  At most :data:`REGIONS_IN_FLIGHT` regions are held at a time, so memory does
not grow with the slide.

A slide no bigger than one region is segmented exactly as the plain path would segment the same
pixels; on a larger slide, pixels near region borders see the margin instead of the whole slide.

Skips, resume and exit codes are those of plain images: an unreadable slide (or region) skips the
slide (exit 3, nothing written for it); ``--resume`` skips slides whose outputs and record are
complete for the same content, model and options.
"""
from __future__ import annotations

import json
import os
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from flexunet.core.atomic import write_text
from flexunet.core.errors import FlexunetError, ImageReadError, first_line
from flexunet.runtime.layout import Layout
from flexunet.runtime.outputs import Outputs, model_digest, output_names, producer
from flexunet.runtime.pipeline import InputSkipped, Pipeline, SlideTask
from flexunet.runtime.segmenter import ProgressEvent, RunSummary, Segmenter
from flexunet.runtime.wsi_reader import SCANNER_EXTENSIONS, SlideView, is_slide, open_slide
from flexunet.runtime.wsi_tissue import detect_tissue, has_tissue, load_tissue_mask
from flexunet.runtime.wsi_writer import SlideWriter

REGION = 2048             # target side of a region's core, analysed pixels
REGIONS_IN_FLIGHT = 2     # regions read but not yet written, at most
PROGRESS_SECONDS = 10.0   # a long slide reports its regions done at most this often

log = logging.getLogger("flexunet")
THUMBNAIL_SIDE = 2048     # the thumbnail the tissue is detected on
PREVIEW_SIDE = 1024       # the preview PNG


@dataclass(frozen=True)
class SlideOptions:
    """The options of slides: ``mpp`` of the model (default: its metadata's), ``slide_mpp``
    (default: the slide's metadata), ``tissue_mask`` (an image, or a folder of ``<stem>.png``
    masks), ``tissue`` (False: compute every region), ``region`` (core side, pixels)."""

    mpp: float | None = None
    slide_mpp: float | None = None
    tissue_mask: Path | None = None
    tissue: bool = True
    region: int = REGION


@dataclass
class SlideReport:
    """What one slide run did (printed, and kept in the summary's ``slides``)."""

    name: str
    level: int
    downsample: float
    mpp: float | None
    size: tuple[int, int]
    regions: int
    computed: int
    tissue_fraction: float | None
    skipped_fraction: float
    features: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        mpp = f", {self.mpp:.3f} µm/px" if self.mpp else ""
        tissue = "no tissue mask" if self.tissue_fraction is None else f"tissue {100 * self.tissue_fraction:.1f}%"
        return (f"slide {self.name}: level {self.level} (x{self.downsample:.2f}{mpp}), "
                f"{self.size[1]}x{self.size[0]} px, "
                f"{self.computed}/{self.regions} regions computed, {tissue}, {100 * self.skipped_fraction:.1f}% of "
                f"the area skipped, {self.features} polygons, {self.seconds:.1f} s")


# -- inputs --------------------------------------------------------------------------------------------
def add_folder_slides(inputs: Iterable[str | os.PathLike], paths: Sequence[Path]) -> list[Path]:
    """``paths`` (the images :func:`flexunet.core.imageio.expand_inputs` lists for ``inputs``) plus
    the scanner-format slides directly inside the folders among ``inputs``; a folder's files in name
    order, inputs in their order, no repeats."""
    out: list[Path] = []
    seen: set[str] = set()

    def add(found: Iterable[Path]) -> None:
        for path in found:
            if os.path.realpath(path) not in seen:
                seen.add(os.path.realpath(path))
                out.append(path)

    for item in inputs:
        if not os.path.isdir(item):
            add(p for p in paths if p == Path(item))
            continue
        folder = os.path.realpath(item)
        with os.scandir(item) as entries:
            slides = [Path(item) / e.name for e in entries if not e.name.startswith(".")
                      and Path(e.name).suffix.lower() in SCANNER_EXTENSIONS and e.is_file()]
        images = [p for p in paths if os.path.realpath(p.parent) == folder]
        add(sorted(images + slides, key=lambda p: p.name))
    add(paths)  # anything not matched above, in its order
    return out


class SlideOutputs(Outputs):
    """The files of slides: ``<name>.tif``, ``.geojson``, ``_preview.png`` and (with a tissue mask)
    ``_tissue.png``, and the same resume records as plain images."""

    def __init__(self, out_dir: Path, producer: dict, tissue: bool):
        super().__init__(out_dir, producer, colorize=False, overlay=False, probabilities=False)
        self.tissue = tissue

    def files(self, task: SlideTask) -> dict[str, Path]:
        files = {"mask": self.out_dir / f"{task.name}.tif", "geojson": self.out_dir / f"{task.name}.geojson",
                 "preview": self.out_dir / f"{task.name}_preview.png"}
        if self.tissue:
            files["tissue"] = self.out_dir / f"{task.name}_tissue.png"
        return files


# -- regions -------------------------------------------------------------------------------------------
Box = tuple[int, int, int, int]  # y, x, height, width


def _axis(length: int, tile: int | None, overlap: int, region: int) -> list[tuple[int, int, int, int]]:
    """``(core start, core end, read start, read end)`` along one axis: cores of about ``region``
    pixels, read with ``overlap`` pixels more on each side, the read length a whole number of tile
    strides plus the overlap (no partial tile) where the slide allows."""
    margin = overlap
    if tile is None:
        core = region
    else:
        stride = tile - overlap
        strides = max(1, round((region + 2 * margin - overlap) / stride))
        core = max(1, strides * stride + overlap - 2 * margin)
    spans = []
    for start in range(0, length, core):
        end = min(length, start + core)
        spans.append((start, end, max(0, start - margin), min(length, end + margin)))
    return spans


def region_grid(height: int, width: int, layout: Layout, region: int = REGION) -> list[tuple[Box, Box]]:
    """``(core, read box)`` of every region of a ``height x width`` image, row-major."""
    tile = layout.tile or (None, None)
    ys = _axis(height, tile[0], layout.overlap, region)
    xs = _axis(width, tile[1], layout.overlap, region)
    return [((y0, x0, y1 - y0, x1 - x0), (ry0, rx0, ry1 - ry0, rx1 - rx0))
            for y0, y1, ry0, ry1 in ys for x0, x1, rx0, rx1 in xs]


def slide_layout(segmenter: Segmenter, size: tuple[int, int], region: int = REGION) -> Layout:
    """The segmenter's layout for a slide of ``size``: a ``fit`` tile fitted to a region (to the
    slide when it is smaller, as for the same pixels as a plain image)."""
    side = region + 2 * (segmenter.overlap or 0)
    return segmenter.layout((min(size[0], side), min(size[1], side)))


# -- one slide -----------------------------------------------------------------------------------------
def _tissue(options: SlideOptions, task: SlideTask, thumbnail):
    """The tissue mask of a slide (None: every region is computed)."""
    if not options.tissue:
        return None
    if options.tissue_mask is None:
        return detect_tissue(thumbnail)
    mask = options.tissue_mask
    if mask.is_dir():
        found = [mask / f"{task.path.stem}{ext}" for ext in (".png", ".tif", ".tiff", ".jpg")]
        mask = next((m for m in found if m.is_file()), None)
        if mask is None:
            raise InputSkipped(f"{task.path}: no tissue mask {task.path.stem}.png in {options.tissue_mask}")
    return load_tissue_mask(mask, thumbnail.shape[:2])


def _thumbnail(view: SlideView, side: int, task: SlideTask):
    """The slide's thumbnail; ImageReadError when its tiles cannot be decoded."""
    try:
        return view.thumbnail(side)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 -- a corrupt tile: the slide is skipped
        raise ImageReadError(f"{task.path}: cannot read a thumbnail ({first_line(exc, 120)})") from None


def _run_regions(segmenter: Segmenter, view: SlideView, layout: Layout, regions: list[tuple[Box, Box]],
                 writer: SlideWriter, task: SlideTask) -> dict[str, float]:
    """Segment ``regions`` of the slide with the tiled engine and hand their cores to ``writer``."""
    boxes = {Path(f"{task.path}#region{i}"): region for i, region in enumerate(regions)}
    failures: list[str] = []

    def read(key: Path):
        y, x, h, w = boxes[key][1]
        try:
            return view.read(y, x, h, w)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 -- a corrupt tile: the slide is skipped
            raise ImageReadError(f"{task.path}: cannot read the region at x={x}, y={y} "
                                 f"({first_line(exc, 120)})") from None

    done, last = [0], [time.perf_counter()]

    def write(region: SlideTask, result) -> None:
        (cy, cx, ch, cw), (ry, rx, _, _) = boxes[region.path]
        writer.add(cy, cx, result.labels[cy - ry:cy - ry + ch, cx - rx:cx - rx + cw])
        done[0] += 1
        if time.perf_counter() - last[0] >= PROGRESS_SECONDS and done[0] < len(boxes):
            last[0] = time.perf_counter()
            log.info("%s: %d/%d regions with tissue segmented", task.path.name, done[0], len(boxes))

    pipeline = Pipeline(segmenter.backend, layout, read=read, prepare=segmenter.info.preprocess,
                        finish=lambda _task, image, probs: segmenter._finish(image, probs), write=write,
                        batch_size=segmenter.batch_for(layout), max_in_flight=REGIONS_IN_FLIGHT, readers=1,
                        on_slide=lambda status, _t, reason: failures.append(reason) if status == "skipped" else None)
    result = pipeline.run([SlideTask(i, key, task.name) for i, key in enumerate(boxes)])
    if failures:
        raise InputSkipped(failures[0])
    return result.stage_seconds


def segment_slide(segmenter: Segmenter, task: SlideTask, outputs: SlideOutputs,
                  options: SlideOptions) -> tuple[SlideReport, dict[str, float]]:
    """Segment one slide and write its outputs and record.

    Raises:
        ImageReadError, InputSkipped: the slide (or a region of it) cannot be read.
    """
    start = time.perf_counter()
    with open_slide(task.path) as reader:
        view = SlideView(reader, options.mpp or segmenter.info.mpp, options.slide_mpp)
        thumbnail, preview = _thumbnail(view, THUMBNAIL_SIDE, task), _thumbnail(view, PREVIEW_SIDE, task)
        tissue = _tissue(options, task, thumbnail)
        size = (view.height, view.width)
        layout = slide_layout(segmenter, size, options.region)
        regions = region_grid(*size, layout, options.region)
        todo = [r for r in regions if tissue is None or has_tissue(tissue, r[0], size)]
        info = segmenter.info
        writer = SlideWriter(outputs.files(task), size, view.downsample, view.mpp, info.class_names,
                             info.class_colors[:info.labels], info.num_classes == 1, preview, tissue)
        try:
            stages = _run_regions(segmenter, view, layout, todo, writer, task)
            writer.finish()
        finally:
            writer.close()
    write_text(outputs.record_file(task), json.dumps(outputs.record(task), indent=1, sort_keys=True))
    computed = sum(r[0][2] * r[0][3] for r in todo)
    report = SlideReport(task.path.name, view.level, view.downsample, view.mpp, size, len(regions), len(todo),
                         None if tissue is None else float(tissue.mean()),
                         1.0 - computed / float(size[0] * size[1]), writer.features,
                         time.perf_counter() - start)
    return report, stages


# -- a run of images and slides ------------------------------------------------------------------------
@dataclass
class MixedSummary(RunSummary):
    """A :class:`RunSummary` with the report of each slide written."""

    slides: list[SlideReport] = field(default_factory=list)


def segment_slides(segmenter: Segmenter, tasks: Sequence[SlideTask], out_dir: Path, options: SlideOptions, *,
                   resume: bool = False, on_slide: Callable[[str, SlideTask, str | None], None] | None = None,
                   echo: Callable[[str], None] | None = None) -> MixedSummary:
    """Segment slides one after another into ``out_dir`` (see the module's description)."""
    record = producer(model_digest(segmenter.backend), segmenter.layout(), threshold=segmenter.threshold,
                      fill_holes=segmenter.fill_holes, min_size=segmenter.min_size)
    record["options"].update(slide={k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()})
    outputs = SlideOutputs(out_dir, record, tissue=options.tissue)
    outputs.check_inputs(tasks)
    outputs.open(resume)
    summary = MixedSummary([], [], [], {}, 0.0)
    start = time.perf_counter()
    for task in tasks:
        if resume and outputs.is_complete(task):
            summary.resumed.append(task.path)
            status, reason = "resumed", None
        else:
            try:
                report, stages = segment_slide(segmenter, task, outputs, options)
            except (ImageReadError, InputSkipped) as exc:
                summary.skipped.append((task.path, str(exc)))
                status, reason = "skipped", str(exc)
            else:
                summary.done.append(task.path)
                summary.slides.append(report)
                for stage, seconds in stages.items():
                    summary.stage_seconds[stage] = summary.stage_seconds.get(stage, 0.0) + seconds
                status, reason = "done", None
                if echo is not None:
                    echo(report.line())
        if on_slide is not None:
            on_slide(status, task, reason)
    summary.wall_seconds = time.perf_counter() - start
    return summary


def run_inputs(segmenter: Segmenter, paths: Sequence[Path], out_dir: Path, options: SlideOptions, *,
               colorize: bool = False, overlay: bool = False, probabilities: bool = False, resume: bool = False,
               progress: Callable[[ProgressEvent], None] | None = None,
               echo: Callable[[str], None] | None = None) -> RunSummary:
    """``flexunet infer`` on files that may be slides: plain images first (the folder engine), then
    the slides; one summary.  Names are unique over both."""
    names = output_names(list(paths))
    slide = [is_slide(p) for p in paths]
    plain = [(p, n) for p, n, s in zip(paths, names, slide) if not s]
    slides = [SlideTask(i, p, n) for i, (p, n, s) in enumerate(zip(paths, names, slide)) if s]
    if not slides:
        return segmenter.segment_files(paths, out_dir, colorize=colorize, overlay=overlay,
                                       probabilities=probabilities, resume=resume, progress=progress)
    summary = MixedSummary([], [], [], {}, 0.0)
    if plain:
        summary = MixedSummary(**vars(segmenter.segment_files(
            [p for p, _ in plain], out_dir, names=[n for _, n in plain], colorize=colorize, overlay=overlay,
            probabilities=probabilities, resume=resume, progress=progress)))
    finished = [len(plain)]

    def report(status: str, task: SlideTask, reason: str | None) -> None:
        finished[0] += 1
        if progress is not None:
            progress(ProgressEvent(status, task.path, finished[0], len(paths), reason))

    part = segment_slides(segmenter, slides, out_dir, options, resume=resume, on_slide=report, echo=echo)
    summary.done += part.done
    summary.skipped += part.skipped
    summary.resumed += part.resumed
    summary.slides += part.slides
    for stage, seconds in part.stage_seconds.items():
        summary.stage_seconds[stage] = summary.stage_seconds.get(stage, 0.0) + seconds
    summary.wall_seconds += part.wall_seconds
    return summary


def check_slide_options(options: SlideOptions) -> None:
    """FlexunetError for options that contradict each other or name a missing mask."""
    if options.tissue_mask is not None and not options.tissue:
        raise FlexunetError("--tissue-mask and --no-tissue-mask contradict each other; give one")
    if options.tissue_mask is not None and not options.tissue_mask.exists():
        raise FlexunetError(f"{options.tissue_mask}: no such tissue mask file or folder")
