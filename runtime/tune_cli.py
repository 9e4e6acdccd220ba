"""``flexunet tune``: the CLI of :func:`flexunet.runtime.tune.run_tune`; progress on stderr, the
table and what ``--backend auto`` now runs on stdout, the record beside the model."""
from __future__ import annotations

from pathlib import Path

import click

from flexunet.core.compare import RETENTION
from flexunet.core.console import handle_errors
from flexunet.runtime.infer_cli import THREADS_HELP, TileSize
from flexunet.runtime.tune import record_table, run_tune

EPILOG = (
    "Paths measured: model.onnx on ONNX Runtime (CPU, FP32: the exact reference), model.int8.onnx on ONNX Runtime "
    "when the export wrote it, OpenVINO FP32 (both files) and BF16 (CPUs with AVX512_BF16 or AMX) when openvino is "
    "installed, and the folder's TensorRT engines where TensorRT runs; a path that cannot run here is recorded as "
    "unavailable. Verdict: agreement with the FP32 reference (the parity tolerances); with --masks, BF16/FP16/INT8 "
    "paths by accuracy retention (dice vs truth >= 99% of the reference's, the MLPerf rule), FP32 paths still by "
    "agreement. The record (tune.json, tune.md beside the model, written atomically) holds each path's tiles/s and "
    "verdict, this CPU, the engines' versions and the files' sha256: --backend auto (infer, bench, the Python "
    "Segmenter) then runs the fastest path that passed, never one that failed, and falls back to the exact FP32 "
    "ONNX Runtime path when the record is missing or stale (model, CPU or engine versions changed). "
    "Exit codes: 0 recorded; 2 bad input (model, option, no images, a reference that cannot run); 130 interrupted."
)


@click.command("tune", epilog=EPILOG)
@click.argument("model", type=click.Path(exists=True, path_type=Path), metavar="MODEL_DIR_OR_ONNX")
@click.option("--images", "images", required=True, multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Images (files or folders; repeatable) to time and judge each path on: real slides of the task.")
@click.option("--masks", "masks_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Their ground-truth masks (named like the images): reduced precisions are then judged by "
                   "accuracy retention.")
@click.option("--min-retention", type=click.FloatRange(0.0, 1.0), default=RETENTION, show_default=True,
              help="With --masks: share of the FP32 reference's dice vs truth a reduced precision must keep.")
@click.option("--tile", type=TileSize(), help="Tile size N or HxW [default: the model's].")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Tiles per batch.")
@click.option("--repeat", type=click.IntRange(min=1), default=10, show_default=True,
              help="Timed predict calls per path.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True,
              help="Untimed predict calls per path before the timed ones.")
@click.option("--threads", type=click.IntRange(min=1), help=THREADS_HELP)
@handle_errors
def tune_cmd(model, images, masks_dir, min_retention, tile, batch_size, repeat, warmup, threads):
    """Measure every engine and precision that can run MODEL (an export folder or its model.onnx) on
    this machine, judge each against the exact FP32 path, and record speed and verdict beside the
    model for --backend auto.
    """
    record = run_tune(model, images, masks_dir=masks_dir, tile=tile, batch_size=batch_size, repeat=repeat,
                      warmup=warmup, threads=threads, min_retention=min_retention,
                      progress=lambda line: click.echo(line, err=True))
    click.echo("\n".join(record_table(record)))
    click.echo(record["choice"])
