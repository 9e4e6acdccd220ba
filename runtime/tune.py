"""``flexunet tune``: measure every engine and precision that can run an exported model on this
machine, judge each, and record speed and verdict beside the model for ``--backend auto``.

The paths measured, for an export folder holding ``model.onnx`` (the FP32 reference):

* ``model.onnx`` on ONNX Runtime (CPU), the exact FP32 path every other path is judged against;
* ``model.int8.onnx`` on ONNX Runtime, when the export wrote one;
* ``model.onnx`` (and ``model.int8.onnx``) on OpenVINO in FP32, and ``model.onnx`` in BF16 on a CPU
  with BF16 instructions, when openvino is installed;
* TensorRT engines (``model.*.engine``) of the folder, where TensorRT can run them.

A path that cannot run here is recorded as ``unavailable`` with the reason.  Each runnable path is
timed in turn in this process (``predict`` on batches of real tiles of the reference's layout,
warm-up excluded: tiles/s at the p50), then judged by one parity run
(:func:`~flexunet.runtime.parity.run_parity`) against the reference on the images: by agreement,
or with ``masks`` by accuracy retention for reduced precisions (:func:`flexunet.core.compare.judge`).

The record, ``tune.json`` beside the model (written atomically, with ``tune.md``), holds each path's
speed and verdict, this machine's CPU and engine versions, and each file's sha256;
:mod:`flexunet.runtime.autoselect` reads it and ignores it once any of those changed.
"""
from __future__ import annotations

import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from flexunet.core.atomic import write_text
from flexunet.core.compare import RETENTION
from flexunet.core.errors import FlexunetError, MissingDependencyError, ModelError, first_line
from flexunet.core.imageio import expand_inputs
from flexunet.core.machine import cpu_has_bf16, cpu_threads, sha256_file
from flexunet.runtime.autoselect import RECORD, SCHEMA, choose, fastest_passed, machine_key
from flexunet.runtime.ground_truth import truth_index
from flexunet.runtime.measure import flexunet_version

REFERENCE_BACKEND = "onnxruntime-cpu"
FP32_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
MARKDOWN = "tune.md"

Say = Callable[[str], None]


@dataclass(frozen=True)
class TunePath:
    """One way to run the model: a file of the export and a backend."""

    file: Path
    backend: str

    @property
    def label(self) -> str:
        return f"{self.file.name}@{self.backend}"


def resolve_model(target: str | os.PathLike) -> Path:
    """The FP32 ``.onnx`` of an export folder (its ``model.onnx``) or the ``.onnx`` given.

    Raises:
        FlexunetError: neither an export folder with model.onnx nor an .onnx file.
    """
    path = Path(target)
    if path.is_dir():
        path = path / FP32_FILE
        if not path.is_file():
            raise FlexunetError(f"{path.parent}: no {FP32_FILE} in this folder (an export folder holds one)")
    elif path.suffix.lower() != ".onnx":
        raise FlexunetError(f"{path}: tune measures an exported .onnx model or its folder")
    elif not path.is_file():
        raise FlexunetError(f"{path}: no such model file")
    return path


def tune_paths(model: Path) -> tuple[list[TunePath], list[dict]]:
    """The paths to measure for ``model`` (the reference first), and those that cannot run here
    with the reason (``{"file", "backend", "reason"}``)."""
    paths, skipped = [TunePath(model, REFERENCE_BACKEND)], []
    int8 = model.parent / INT8_FILE
    files = [model] + ([int8] if int8.is_file() and int8 != model else [])
    paths += [TunePath(f, REFERENCE_BACKEND) for f in files[1:]]
    if importlib.util.find_spec("openvino") is None:
        skipped.append({"file": model.name, "backend": "openvino",
                        "reason": "openvino is not installed (pip install 'flexunet[openvino]')"})
    else:
        paths += [TunePath(f, "openvino") for f in files]
        if cpu_has_bf16():
            paths.append(TunePath(model, "openvino-bf16"))
        else:
            skipped.append({"file": model.name, "backend": "openvino-bf16",
                            "reason": "this CPU has no BF16 instructions (AVX512_BF16 or AMX)"})
    paths += [TunePath(e, "tensorrt") for e in sorted(model.parent.glob("model.*.engine"))]
    return paths, skipped


def default_timer(tiles, batch_size: int, repeat: int, warmup: int, threads: int | None) -> Callable[[TunePath], float]:
    """A timer of paths: tiles/s at the p50 of ``repeat`` ``predict`` calls on ``batch_size`` tiles."""
    from flexunet.runtime.backends import load_backend
    from flexunet.runtime.bench_timing import latency_sweep

    def timer(path: TunePath) -> float:
        with load_backend(path.file, path.backend, threads=threads) as backend:
            return latency_sweep(backend, tiles, [batch_size], repeat, warmup)[0]["tiles_per_s"]

    return timer


def _probe(model: Path, paths: Sequence[Path], tile, batch_size: int, threads: int | None, sample: bool):
    """The reference checked to be an FP32 model, and tiles of its layout for the timings (None
    when ``sample`` is false).

    Raises:
        FlexunetError: the model cannot be loaded, or is not FP32 (every path is judged against it).
    """
    from flexunet.runtime.bench_timing import sample_tiles
    from flexunet.runtime.segmenter import Segmenter

    with Segmenter(model, backend=REFERENCE_BACKEND, tile=tile, batch_size=1, threads=threads) as probe:
        if probe.info.precision != "fp32":
            raise FlexunetError(f"{model}: a {probe.info.precision} model; tune judges every path against the "
                                f"FP32 model: give the export folder or its {FP32_FILE}")
        return sample_tiles(paths, probe, batch_size)[0] if sample else None


def _time_paths(paths: list[TunePath], timer: Callable[[TunePath], float], say: Say) -> tuple[dict, list[dict]]:
    """tiles/s of each path that runs; those that cannot, with the reason."""
    speeds, unavailable = {}, []
    for path in paths:
        try:
            speeds[path] = float(timer(path))
        except (MissingDependencyError, ModelError) as exc:
            if path == paths[0]:
                raise
            unavailable.append({"file": path.file.name, "backend": path.backend, "reason": first_line(exc, 200)})
            say(f"{path.label}: cannot run here ({unavailable[-1]['reason']})")
            continue
        say(f"{path.label}: {speeds[path]:.1f} tiles/s")
    return speeds, unavailable


def _entry(path: TunePath, speed: float, reference_speed: float, digests: dict, result=None,
           reference_truth: float | None = None) -> dict:
    """A path's entry of the record: speed, and its verdict from the parity run (``result``, None
    for the reference itself, whose dice vs truth is ``reference_truth``)."""
    from flexunet.runtime.parity_report import candidate_summary

    entry = {"file": path.file.name, "sha256": digests[path.file], "backend": path.backend,
             "tiles_per_s": round(speed, 3), "speedup": round(speed / reference_speed, 3) if reference_speed else None}
    if result is None:
        return {**entry, "precision": "fp32", "verdict": "pass", "rule": "reference",
                "why": "the exact FP32 path the others are judged against", "failures": [],
                "dice_vs_reference": 1.0, "max_abs_diff": 0.0, "dice_vs_truth": reference_truth,
                "retention": 1.0 if reference_truth else None}
    s = candidate_summary(result)
    return {**entry, "precision": result.precision, "verdict": s["verdict"], "rule": s["rule"], "why": s["why"],
            "failures": s["failures"], "agreement": s["agreement"], "dice_vs_reference": s["overall"]["dice"],
            "max_abs_diff": s["overall"]["max_abs_diff"], "dice_vs_truth": s["overall"]["dice_vs_truth"],
            "retention": s["retention"], "retains_99_9": s.get("retains_99_9")}


def run_tune(target: str | os.PathLike, images: Sequence[str | os.PathLike], *, masks_dir=None, tile=None,
             batch_size: int = 4, repeat: int = 10, warmup: int = 2, threads: int | None = None,
             min_retention: float = RETENTION, timer: Callable[[TunePath], float] | None = None,
             progress: Say | None = None) -> dict:
    """Measure, judge and record every path of ``target`` (an export folder or its ``.onnx``); the
    record written beside the model (see the module docstring) is returned.

    Args:
        images: image files and folders the paths are timed and judged on.
        masks_dir: their ground-truth masks (reduced precisions are then judged by retention).
        tile, batch_size, threads: the layout, batch and threads of the timings and parity run.
        repeat, warmup: timed and untimed ``predict`` calls per path.
        timer: ``timer(path) -> tiles/s`` (default: :func:`default_timer`); a seam for tests.

    Raises:
        FlexunetError: no model, no images, the reference cannot run, the record cannot be written.
    """
    from flexunet.runtime.parity import ModelSpec, run_parity

    say = progress or (lambda line: None)
    model = resolve_model(target)
    image_paths = expand_inputs(images)
    if not image_paths:
        raise FlexunetError(f"no images in {', '.join(map(str, images)) or '(none given)'}")
    if masks_dir is not None:
        truth_index(masks_dir, image_paths)  # a folder with no mask named like an image: refused before timing
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    paths, skipped = tune_paths(model)
    digests = {f: sha256_file(f) for f in {p.file for p in paths}}  # of the files measured
    tiles = _probe(model, image_paths, tile, batch_size, threads, sample=timer is None)
    if timer is None:
        timer = default_timer(tiles, batch_size, repeat, warmup, threads)
    speeds, unavailable = _time_paths(paths, timer, say)
    runnable = [p for p in paths if p in speeds]
    report = run_parity(ModelSpec(model, REFERENCE_BACKEND), [ModelSpec(p.file, p.backend) for p in runnable[1:]],
                        image_paths, masks_dir=masks_dir, tile=tile, batch_size=batch_size, threads=threads,
                        min_retention=min_retention, progress=say) if len(runnable) > 1 else None
    ref_speed = speeds[paths[0]]
    ref_truth = report.reference_truth.dice if report is not None and report.reference_truth is not None else None
    entries = [_entry(paths[0], ref_speed, ref_speed, digests, reference_truth=ref_truth)]
    entries += [_entry(p, speeds[p], ref_speed, digests, r) for p, r in zip(runnable[1:], report.candidates)] \
        if report else []
    options = {"images": [str(p) for p in images], "image_files": len(image_paths),
               "masks": str(masks_dir) if masks_dir is not None else None,
               "tile": report.layout["tile"] if report else tile, "batch_size": batch_size,
               "threads": threads or cpu_threads(), "repeat": repeat, "warmup": warmup, "min_retention": min_retention}
    fastest = fastest_passed(entries)
    record = {"tool": "flexunet tune", "schema": SCHEMA, "flexunet_version": flexunet_version(), "date": started,
              "reference": {"file": model.name, "sha256": digests[model], "backend": REFERENCE_BACKEND},
              "machine": machine_key(), "options": options,
              "truth": None if ref_truth is None else {"reference_dice_vs_truth": ref_truth},
              "paths": entries, "unavailable": skipped + unavailable,
              "fastest_passed": {"file": fastest[0]["file"], "backend": fastest[0]["backend"]} if fastest else None}
    write_record(model.parent, record)
    record["choice"] = choose(model).line
    return record


def write_record(folder: Path, record: dict) -> dict[str, Path]:
    """``tune.json`` and ``tune.md`` in ``folder``, each written atomically."""
    files = {"json": folder / RECORD, "markdown": folder / MARKDOWN}
    write_text(files["json"], json.dumps(record, indent=2) + "\n")
    write_text(files["markdown"], record_markdown(record))
    return files


def _num(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def record_table(record: dict) -> list[str]:
    """The record's paths as a markdown table, fastest first, then those unavailable."""
    lines = ["| path | precision | tiles/s | vs FP32 ORT | dice vs FP32 | max \\|Δp\\| | dice vs truth | retention | "
             "rule | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for e in sorted(record["paths"], key=lambda e: -(e.get("tiles_per_s") or 0)):
        kept = None if e.get("retention") is None else 100 * e["retention"]
        lines.append(f"| `{e['file']}@{e['backend']}` | {e.get('precision')} | {_num(e.get('tiles_per_s'), '.1f')} | "
                     f"{_num(e.get('speedup'), '.2f')}x | {_num(e.get('dice_vs_reference'), '.5f')} | "
                     f"{_num(e.get('max_abs_diff'), '.2g')} | {_num(e.get('dice_vs_truth'), '.5f')} | "
                     f"{_num(kept, '.2f')}{'%' if kept is not None else ''} | {e.get('rule')} | "
                     f"{'**pass**' if e['verdict'] == 'pass' else '**FAIL**'} |")
    lines += [f"| `{u['file']}@{u['backend']}` | — | — | — | — | — | — | — | — | "
              f"unavailable: {u['reason']} |"
              for u in record.get("unavailable", [])]
    return lines


def record_markdown(record: dict) -> str:
    """tune.md: what was measured, on what, the table and what ``auto`` runs."""
    o, m = record["options"], record["machine"]
    truth = record.get("truth")
    lines = ["# Tune record", "",
             f"`{record['reference']['file']}` on {m['cpu']} ({record['date']}); {o['image_files']} image(s), batch "
             f"{o['batch_size']}, {o['threads']} thread(s); engines: "
             + ", ".join(f"{k} {v}" for k, v in sorted(m["versions"].items())) + ".",
             "Verdicts: " + (f"with ground truth ({o['masks']}, reference dice vs truth "
                             f"{truth['reference_dice_vs_truth']:.5f}): BF16/FP16/INT8 by accuracy retention "
                             f">= {100 * o['min_retention']:g}%, FP32 by agreement." if truth else
                             "no ground truth: every path by agreement with the FP32 reference."), ""]
    lines += record_table(record)
    best = record.get("fastest_passed")
    lines += ["", f"`--backend auto` runs {best['file']}@{best['backend']}, the fastest path that passed, while the "
                  "model files, this CPU and the engines' versions are those recorded." if best else
              "`--backend auto` runs the exact FP32 ONNX Runtime path.", ""]
    return "\n".join(lines)
