"""``flexunet bench``: how fast does a model segment slides on this machine?  The CLI of
:func:`flexunet.runtime.bench.run_bench`; progress on stderr, a summary on stdout, reports
(:mod:`flexunet.runtime.bench_report`) in ``--report-dir``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from flexunet.core.console import handle_errors
from flexunet.core.errors import EXIT_SKIPPED
from flexunet.core.tiling import BLEND_MODES
from flexunet.runtime.autoselect import resolve
from flexunet.runtime.backends.base import BACKENDS
from flexunet.runtime.bench import run_bench
from flexunet.runtime.bench_report import write_reports
from flexunet.runtime.bench_seed import BASELINES
from flexunet.runtime.bench_timing import DEFAULT_BATCH_SIZES, parse_batch_sizes
from flexunet.runtime.infer_cli import BACKEND_HELP, OVERLAP_HELP, THREADS_HELP, TILE_HELP, TileSize
from flexunet.runtime.layout import DEFAULT_MEMORY_BUDGET, parse_bytes

EPILOG = (
    "Measures (warm-up excluded): predict latency per batch (p50/p90/p99, tiles/s) for each --batch-sizes "
    "value; end-to-end folder runs (decode to written masks, --runs times, the fastest reported): "
    "slides/s, tiles/s, busy seconds per stage, peak RSS; with --baseline seed the seed API's tiled loop "
    "on the same Keras model and the ratio ours/seed in slides/s. Records the machine and library versions. "
    "Exit codes: 0 success; 2 bad input (model, option, missing dependency, no readable image: no report "
    "is written); 3 finished but some images were unreadable and skipped; 130 interrupted."
)


class BatchSizes(click.ParamType):
    """``1,2,4,8``."""

    name = "N,N,..."

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            return parse_batch_sizes(str(value))
        except Exception as exc:  # noqa: BLE001 -- reported as a usage error
            self.fail(str(exc), param, ctx)


@click.command("bench", epilog=EPILOG)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--report-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("bench_report"),
              show_default=True, help="Folder for bench.json, bench.md and bench.png.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True, help=BACKEND_HELP)
@click.option("--batch-sizes", type=BatchSizes(), default=",".join(map(str, DEFAULT_BATCH_SIZES)),
              show_default=True, help="Batch sizes of the latency sweep.")
@click.option("--repeat", type=click.IntRange(min=1), default=20, show_default=True,
              help="Timed predict calls per batch size.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True,
              help="Untimed predict calls before each batch size's timed ones.")
@click.option("--runs", type=click.IntRange(min=1), default=2, show_default=True,
              help="End-to-end folder runs (the fastest is reported).")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Batch size of the end-to-end runs [default: the fastest of the sweep].")
@click.option("--tile", type=TileSize(), help=TILE_HELP)
@click.option("--overlap", type=click.IntRange(min=0), help=OVERLAP_HELP)
@click.option("--memory-budget", metavar="SIZE",
              help=f"Memory for one batch, e.g. 1G, 800M [default: {DEFAULT_MEMORY_BUDGET // 2**30}G]; bounds 'fit' "
                   "tiles as in flexunet infer.")
@click.option("--blend", type=click.Choice(BLEND_MODES), help="Blending of overlapping tiles [default: the model's].")
@click.option("--threads", type=click.IntRange(min=1), help=THREADS_HELP)
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path),
              help="Training config of a .keras model [default: the one beside it].")
@click.option("--baseline", type=click.Choice(BASELINES),
              help="Also time the seed API's tiled loop (per-tile Keras predict, batch 1) and print ours/seed.")
@click.option("--keras", type=click.Path(dir_okay=False, path_type=Path),
              help="The .keras model for --baseline seed when MODEL is not .keras.")
@click.option("--baseline-slides", type=click.IntRange(min=1), default=4, show_default=True,
              help="Images (the first ones) the slow baseline runs on.")
@handle_errors
def bench_cmd(model, images, report_dir, backend, batch_sizes, repeat, warmup, runs, batch_size, tile, overlap,
              memory_budget, blend, threads, config, baseline, keras, baseline_slides):
    """Benchmark MODEL (.onnx, .keras, .engine/.plan) on IMAGES (files and folders).

    Writes REPORT_DIR/bench.json, bench.md and bench.png (the chart needs matplotlib).
    """
    choice = resolve(model, backend)  # auto: the fastest path `flexunet tune` recorded as passing
    if choice is not None and choice.found:
        model, backend = choice.path, choice.backend
        click.echo(choice.line, err=True)
    data = run_bench(model, images, backend=backend, batch_sizes=batch_sizes, repeat=repeat, warmup=warmup,
                     runs=runs, batch_size=batch_size, tile=tile, overlap=overlap, blend=blend, threads=threads,
                     config=config, baseline=baseline, keras=keras, baseline_slides=baseline_slides,
                     memory_budget=None if memory_budget is None else parse_bytes(memory_budget), progress=lambda line: click.echo(line, err=True))
    files, note = write_reports(data, report_dir)
    if note:
        click.echo(f"note: {note}", err=True)
    click.echo(summary(data))
    click.echo(f"reports: {', '.join(str(p) for p in files.values())}")
    if data["end_to_end"]["skipped"]:
        sys.exit(EXIT_SKIPPED)


def summary(data: dict) -> str:
    """The lines printed at the end of a run."""
    lines = [f"{'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'tiles/s':>9}"]
    for r in data["latency"]:
        s = r["seconds"]
        lines.append(f"{r['batch_size']:>5} {s['p50'] * 1000:>9.2f} {s['p90'] * 1000:>9.2f} "
                     f"{s['p99'] * 1000:>9.2f} {r['tiles_per_s']:>9.1f}")
    e = data["end_to_end"]
    lines.append(f"end to end (batch {data['options']['e2e_batch_size']}): {e['slides']} slides, {e['tiles']} tiles "
                 f"in {e['wall_seconds']:.2f} s: {e['slides_per_s'] or 0:.3f} slides/s, "
                 f"{e['tiles_per_s'] or 0:.1f} tiles/s, peak RSS {e['peak_rss_bytes'] / 2**20:.0f} MiB")
    lines.append("stages (busy s): " + ", ".join(f"{k} {v:.2f}" for k, v in e["stage_seconds"].items()))
    for item in e["skipped"]:
        lines.append(f"skipped: {item['reason']}")
    b = data.get("baseline")
    if b:
        ratio = f"{b['ratio']:.2f}x" if b["ratio"] else "n/a"
        lines.append(f"seed baseline: {b['seconds_per_slide'] or 0:.2f} s/slide over {b['slides']} slides "
                     f"({b['slides_per_s'] or 0:.3f} slides/s); ours {b['ours_slides_per_s'] or 0:.3f} slides/s; "
                     f"ratio ours/seed {ratio}")
    return "\n".join(lines)
