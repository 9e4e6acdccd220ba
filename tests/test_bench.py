"""``flexunet bench``: statistics helpers, a run on a tiny model producing every field and file, the
seed baseline, errors.  Nothing here asserts a speed: figures are checked for presence and sense."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from flexunet.core.errors import EXIT_OK, EXIT_SKIPPED, EXIT_USAGE, FlexunetError
from flexunet.core.imageio import read_image
from flexunet.runtime.bench_cli import bench_cmd
from flexunet.runtime.bench_report import write_chart
from flexunet.runtime.bench_timing import parse_batch_sizes
from flexunet.runtime.measure import PeakRSS, machine, percentiles

REPO = Path(__file__).resolve().parents[1]


def bench(*args):
    return CliRunner().invoke(bench_cmd, [str(a) for a in args])


def test_percentiles_interpolate_and_handle_no_samples():
    p = percentiles([4.0, 1.0, 3.0, 2.0, 5.0])
    assert p["p50"] == 3.0 and p["p90"] == pytest.approx(4.6) and p["p99"] == pytest.approx(4.96)
    assert (p["mean"], p["min"], p["max"], p["n"]) == (3.0, 1.0, 5.0, 5)
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None, "mean": None, "min": None, "max": None, "n": 0}


def test_parse_batch_sizes():
    assert parse_batch_sizes("8,1, 2,4,2") == [1, 2, 4, 8]
    for bad in ("", "0,1", "a,b", "1;2"):
        with pytest.raises(FlexunetError, match="--batch-sizes"):
            parse_batch_sizes(bad)


def test_machine_description():
    m = machine()
    assert {"platform", "python", "cores", "usable_cores", "cpu", "simd", "ram_gb", "versions"} <= set(m)
    assert "numpy" in m["versions"] and "onnx" in m["versions"]
    assert 1 <= m["usable_cores"] <= m["cores"] and m["ram_gb"] > 0


def test_peak_rss_sees_memory_held_only_inside_the_block():
    size = 128 * 2**20
    with PeakRSS(interval=0.01) as rss:
        block = np.ones(size // 8)  # 128 MiB, every page touched
        assert rss.wait_samples(2, timeout=120), "the sampling thread took no sample"
        del block  # freed before the block ends: only the thread's samples saw it
    grown = rss.peak - rss.start
    assert 0.9 * size <= grown <= 2 * size, grown / 2**20
    assert rss.peak - rss.current() >= 0.8 * size  # the peak is not the memory held at the end


def test_bench_run_produces_every_field_and_file(make_onnx, make_images, tmp_path):
    make_images(tmp_path / "in", [(90, 120), (64, 64), (40, 70)])
    out = tmp_path / "report"
    result = bench(make_onnx(), tmp_path / "in", "-o", out, "--batch-sizes", "1,2", "--repeat", 3, "--warmup", 1,
                   "--runs", 2, "--tile", 64)  # the model's tile (a dynamic-size model defaults to fit)
    assert result.exit_code == EXIT_OK, (result.stdout, result.stderr)
    assert "latency batch 1:" in result.stderr and "end to end run 2/2" in result.stderr
    assert "end to end (batch" in result.stdout and "slides/s" in result.stdout
    data = json.loads((out / "bench.json").read_text())

    assert [r["batch_size"] for r in data["latency"]] == [1, 2]
    for r in data["latency"]:
        assert r["seconds"]["n"] == 3
        assert 0 < r["seconds"]["p50"] <= r["seconds"]["p90"] <= r["seconds"]["p99"]
        assert r["tiles_per_s"] == pytest.approx(r["batch_size"] / r["seconds"]["p50"])
        assert r["ms_per_tile"]["p50"] == pytest.approx(1000 * r["seconds"]["p50"] / r["batch_size"])
    e2e = data["end_to_end"]
    assert e2e["slides"] == 3 and e2e["skipped"] == [] and len(e2e["runs"]) == 2
    assert e2e["tiles"] == 6 + 1 + 2  # 90x120 -> 2x3 tiles of 64 (overlap 16), 64x64 -> 1, 40x70 -> 1x2
    assert e2e["wall_seconds"] == min(r["wall_seconds"] for r in e2e["runs"])
    assert e2e["slides_per_s"] == pytest.approx(3 / e2e["wall_seconds"])
    assert e2e["tiles_per_s"] == pytest.approx(9 / e2e["wall_seconds"])
    assert "inference" in e2e["stage_seconds"] and all(v >= 0 for v in e2e["stage_seconds"].values())
    assert e2e["peak_rss_bytes"] == max(r["peak_rss_bytes"] for r in e2e["runs"]) and e2e["rss_before_bytes"] > 0
    assert {"cpu", "cores", "ram_gb", "simd", "versions"} <= set(data["machine"])
    assert data["versions"]["onnxruntime-gpu" if "onnxruntime-gpu" in data["versions"] else "onnxruntime"]
    assert data["model"]["backend"].startswith("onnxruntime") and data["model"]["precision"] == "fp32"
    assert data["model"]["tile"] == [64, 64]
    opts = data["options"]
    assert opts["batch_sizes"] == [1, 2] and opts["repeat"] == 3 and opts["runs"] == 2
    assert opts["e2e_batch_size"] in (1, 2) and opts["latency_tiles"] == "image tiles"
    assert data["baseline"] is None

    md = (out / "bench.md").read_text()
    for heading in ("## Latency per batch", "## End to end", "| inference |", "peak RSS", "## Versions"):
        assert heading in md
    chart = read_image(out / "bench.png")
    assert chart.shape[1] > chart.shape[0] > 100


def test_memory_budget_bounds_fitted_tiles_as_in_infer(make_onnx, make_images, tmp_path):
    make_images(tmp_path / "in", [(90, 120)])
    model = make_onnx(activation_bytes=1000)  # ~1 KB per pixel: 1 MiB holds a tile of about 32x32
    tiles = {}
    for budget in ("1M", "1G"):
        out = tmp_path / budget
        result = bench(model, tmp_path / "in", "-o", out, "--batch-sizes", "1", "--repeat", 1, "--warmup", 0,
                       "--runs", 1, "--memory-budget", budget)
        assert result.exit_code == EXIT_OK, (result.stdout, result.stderr)
        tiles[budget] = json.loads((out / "bench.json").read_text())["end_to_end"]["tiles"]
    assert tiles["1G"] == 1 and tiles["1M"] >= (90 // 32) * (120 // 32), tiles  # one fitted tile vs <= 32 px ones
    result = bench(model, tmp_path / "in", "-o", tmp_path / "bad", "--memory-budget", "lots")
    lines = result.stderr.splitlines()
    assert result.exit_code == EXIT_USAGE and len(lines) == 1 and "memory budget" in lines[0], result.stderr
    assert not (tmp_path / "bad").exists()


def test_chart_is_skipped_without_matplotlib(monkeypatch, tmp_path):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    note = write_chart({}, tmp_path / "bench.png")
    assert "matplotlib is not installed" in note and not (tmp_path / "bench.png").exists()


def test_skipped_images_exit_3_and_bad_options_exit_2(make_onnx, make_images, tmp_path):
    make_images(tmp_path / "in", [(40, 50)])
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG junk" * 5)
    model = make_onnx()
    out = tmp_path / "report"
    result = bench(model, tmp_path / "in", "-o", out, "--batch-sizes", "1", "--repeat", 1, "--runs", 1)
    assert result.exit_code == EXIT_SKIPPED, (result.stdout, result.stderr)
    assert json.loads((out / "bench.json").read_text())["end_to_end"]["skipped"][0]["path"].endswith("broken.png")

    result = bench(model, tmp_path / "in", "--baseline", "seed", "-o", tmp_path / "r2")
    assert result.exit_code == EXIT_USAGE and "--keras" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "r2").exists()  # refused before measuring anything
    result = bench(model, tmp_path / "in", "--batch-sizes", "0,x", "-o", tmp_path / "r4")
    assert result.exit_code == EXIT_USAGE and "--batch-sizes" in result.stderr
    result = bench(tmp_path / "nope.onnx", tmp_path / "in", "-o", tmp_path / "r3")
    assert result.exit_code == EXIT_USAGE and "nope.onnx" in result.stderr


def test_cli_modules_do_not_import_tensorflow():
    code = ("import sys, flexunet.runtime.parity_cli, flexunet.runtime.bench_cli; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules, 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


KERAS_CONFIG = """\
[model]
image_width    = 32
image_height   = 32
image_channels = 3
num_classes    = 1
num_layers     = 2

[tiledinfer]
overlapping = 8
"""


@pytest.mark.slow
def test_seed_baseline_reports_a_ratio_and_loads_the_model_once(make_images, tmp_path, monkeypatch):
    keras = pytest.importorskip("keras")
    from flexunet.runtime.backends import keras as keras_backend

    loads = []
    load = keras_backend.load_keras_model
    monkeypatch.setattr(keras_backend, "load_keras_model",
                        lambda path, cfg=None: loads.append(path) or load(path, cfg))
    folder = tmp_path / "models"
    folder.mkdir()
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid")(keras.layers.Rescaling(1 / 255)(inputs))
    keras.Model(inputs, outputs).save(folder / "best_model.keras")
    (folder / "train_eval_infer.config").write_text(KERAS_CONFIG, encoding="utf-8")
    make_images(tmp_path / "in", [(40, 50)])
    out = tmp_path / "report"
    result = bench(folder / "best_model.keras", tmp_path / "in", "-o", out, "--batch-sizes", "1,2", "--repeat", 2,
                   "--runs", 1, "--baseline", "seed")
    assert result.exit_code == EXIT_OK, (result.stdout, result.stderr)
    assert len(loads) == 1  # the benchmarked .keras model is the baseline's: loaded once
    assert "ratio ours/seed" in result.stdout
    b = json.loads((out / "bench.json").read_text())["baseline"]
    assert b["kind"] == "seed" and b["slides"] == 1 and b["settings"]["batch_size"] == 1
    assert b["settings"] == {**b["settings"], "tile": 32, "margin": 8}
    assert b["seconds_per_slide"] > 0 and b["ours_slides_per_s"] > 0 and b["ratio"] > 0
    assert "## Seed baseline" in (out / "bench.md").read_text()
