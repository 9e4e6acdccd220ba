"""The reports of ``flexunet bench`` from :func:`flexunet.runtime.bench.run_bench`'s record:
bench.json, bench.md (:func:`to_markdown`) and the chart bench.png (:func:`write_chart`; needs
matplotlib, skipped with a note without it), written together by :func:`write_reports`."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from flexunet.core.atomic import atomic_path, write_text


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.2f}"


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _latency_section(data: dict) -> list[str]:
    opts = data["options"]
    lines = [f"## Latency per batch ({opts['repeat']} timed calls after {opts['warmup']} warm-up, "
             f"{opts['latency_tiles']})", "",
             "| batch | p50 ms | p90 ms | p99 ms | ms/tile (p50) | tiles/s |", "|---|---|---|---|---|---|"]
    for r in data["latency"]:
        s = r["seconds"]
        lines.append(f"| {r['batch_size']}{' (split)' if r['split'] else ''} | {_ms(s['p50'])} | {_ms(s['p90'])} | "
                     f"{_ms(s['p99'])} | {_num(r['ms_per_tile']['p50'], '.2f')} | {_num(r['tiles_per_s'], '.1f')} |")
    return lines


def _end_to_end_section(data: dict) -> list[str]:
    opts, e2e = data["options"], data["end_to_end"]
    lines = [
        f"## End to end (batch {opts['e2e_batch_size']}, fastest of {opts['runs']} runs)", "",
        "| measure | value |", "|---|---|",
        f"| slides | {e2e['slides']} ({len(e2e['skipped'])} skipped) |",
        f"| tiles | {e2e['tiles']} |",
        f"| wall | {e2e['wall_seconds']:.3f} s |",
        f"| slides/s | {_num(e2e['slides_per_s'])} |",
        f"| tiles/s | {_num(e2e['tiles_per_s'], '.1f')} |",
        f"| peak RSS | {e2e['peak_rss_bytes'] / 2**20:.0f} MiB (before: {e2e['rss_before_bytes'] / 2**20:.0f} MiB) |",
        "", "Busy seconds per stage (stages run concurrently, so they may add up to more than the wall time):", "",
        "| stage | seconds | % of wall |", "|---|---|---|",
    ]
    wall = e2e["wall_seconds"] or float("nan")
    for stage, sec in e2e["stage_seconds"].items():
        lines.append(f"| {stage} | {sec:.3f} | {100 * sec / wall:.1f} |")
    return lines


def _baseline_section(b: dict) -> list[str]:
    ours = 1 / b["ours_slides_per_s"] if b["ours_slides_per_s"] else None
    return ["## Seed baseline", "",
            f"The seed API's loop (per-tile `keras_model.predict`, batch 1, resized margin crops of "
            f"{b['settings']['margin']} px, AND with a downscaled whole-image mask) on `{Path(b['model']).name}`, "
            f"{b['slides']} slides, decode to written mask:", "",
            "| measure | seed | ours |", "|---|---|---|",
            f"| seconds/slide | {_num(b['seconds_per_slide'])} | {_num(ours)} |",
            f"| slides/s | {_num(b['slides_per_s'])} | {_num(b['ours_slides_per_s'])} |", "",
            f"**Ratio ours/seed: {_num(b['ratio'], '.2f')}x** (slides/s, same images, same run)."]


def to_markdown(data: dict) -> str:
    """bench.md: the figures of :func:`~flexunet.runtime.bench.run_bench` as tables."""
    m, opts, mach = data["model"], data["options"], data["machine"]
    tile = ("fitted to the image size" if opts["tile"] == "fit" else
            "x".join(map(str, opts["tile"])) if opts["tile"] else "whole image")
    lines = [
        f"# Benchmark: `{Path(m['path']).name if m['path'] else m['backend']}`", "",
        f"{data['date']}; backend {m['backend']}, precision {m['precision']}; tiles {tile}, overlap "
        f"{opts['overlap']}, {opts['blend']} blend; {opts['images']} images; {opts['threads']} threads.",
        f"Machine: {mach.get('cpu', '?')}, {mach.get('cores')} cores ({mach.get('usable_cores')} usable), "
        f"{mach.get('ram_gb', '?')} GB RAM, SIMD {' '.join(mach.get('simd', [])) or '—'}; {mach['platform']}, "
        f"Python {mach['python']}.", "",
    ]
    lines += _latency_section(data) + [""] + _end_to_end_section(data)
    if data.get("baseline"):
        lines += [""] + _baseline_section(data["baseline"])
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in data["versions"].items()), ""]
    return "\n".join(lines)


# -- the chart -----------------------------------------------------------------------------------------
def _plot_latency(ax, lat: list[dict]) -> None:
    xs = np.arange(len(lat))
    p50 = [r["ms_per_tile"]["p50"] for r in lat]
    p90 = [r["ms_per_tile"]["p90"] for r in lat]
    p99 = [r["ms_per_tile"]["p99"] for r in lat]
    ax.bar(xs, p50, color="#4C72B0", label="p50")
    ax.errorbar(xs, p50, yerr=[np.zeros(len(xs)), np.subtract(p99, p50)], fmt="none", ecolor="black",
                capsize=4, label="to p99")
    ax.plot(xs, p90, "o", color="#DD8452", label="p90")
    ax.set_xticks(xs, [str(r["batch_size"]) for r in lat])
    ax.set_xlabel("batch size")
    ax.set_ylabel("ms per tile")
    ax.set_title("predict latency per tile")
    ax.set_ylim(0, 1.35 * max(p99 + [1e-9]))
    ax.legend(loc="upper left", fontsize=8, ncol=3)
    twin = ax.twinx()
    twin.plot(xs, [r["tiles_per_s"] for r in lat], "-s", color="#55A868")
    twin.set_ylabel("tiles/s (p50)", color="#55A868")


def _plot_stages(ax, e2e: dict) -> None:
    stages = list(e2e["stage_seconds"])
    ax.barh(stages[::-1], [e2e["stage_seconds"][s] for s in stages[::-1]], color="#8172B3")
    ax.axvline(e2e["wall_seconds"], color="black", linestyle="--", label=f"wall {e2e['wall_seconds']:.2f} s")
    ax.set_xlabel("busy seconds")
    ax.set_title(f"end to end: {_num(e2e['slides_per_s'])} slides/s")
    ax.legend(loc="lower right", fontsize=8)


def _plot_baseline(ax, b: dict) -> None:
    rates = [b["ours_slides_per_s"] or 0.0, b["slides_per_s"] or 0.0]
    ax.bar(["flexunet", "seed loop"], rates, color=["#4C72B0", "#C44E52"])
    ax.set_ylabel("slides/s")
    ax.set_title(f"ours / seed: {_num(b['ratio'], '.2f')}x")


def write_chart(data: dict, path: str | os.PathLike) -> str | None:
    """bench.png: latency per tile vs batch size, the stage breakdown (and the baseline ratio).
    Returns None when written, else why not (matplotlib is not installed)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "matplotlib is not installed; no chart (pip install matplotlib)"
    b = data.get("baseline")
    fig = Figure(figsize=(13 if b else 10, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3 if b else 2)
    _plot_latency(axes[0], data["latency"])
    _plot_stages(axes[1], data["end_to_end"])
    if b:
        _plot_baseline(axes[2], b)
    fig.suptitle(f"{data['model']['backend']}, {data['machine'].get('cpu', '')}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return None


def write_reports(data: dict, out_dir: str | os.PathLike) -> tuple[dict[str, Path], str | None]:
    """bench.json, bench.md and bench.png in ``out_dir``; returns the files and the note when the
    chart was skipped."""
    out = Path(out_dir)
    files = {"json": out / "bench.json", "markdown": out / "bench.md", "chart": out / "bench.png"}
    note = write_chart(data, files["chart"])
    if note is not None:
        files.pop("chart")
    data = {**data, "files": {k: str(v) for k, v in files.items()}, "chart_note": note}
    write_text(files["json"], json.dumps(data, indent=2) + "\n")
    markdown = to_markdown(data)
    if note is not None:
        markdown += f"\n({note})\n"
    write_text(files["markdown"], markdown)
    return files, note
