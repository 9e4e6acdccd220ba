"""``flexunet tune`` and ``--backend auto``: the record beside the model (written atomically), the
fastest path that passed chosen (timings through the ``timer`` seam, so nothing here depends on
this machine's speed), never a failed or unavailable one, stale and unreadable records ignored with
a message, the exact FP32 path without a record."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from flexunet.cli import cli
from flexunet.core.atomic import is_temporary
from flexunet.core.errors import EXIT_OK, MissingDependencyError
from flexunet.core.imageio import write_image
from flexunet.runtime import autoselect, tune
from flexunet.runtime.backends import load_backend
from flexunet.runtime.segmenter import Segmenter
#: The tiny models' tile in every run here (the runs do not depend on the default layout).
TILE = 64


def fake_timer(speeds: dict[str, float]):
    """tiles/s by ``file@backend`` (paths not named: 1.0); a name mapped to an exception raises it."""

    def timer(path: tune.TunePath) -> float:
        value = speeds.get(path.label, 1.0)
        if isinstance(value, BaseException):
            raise value
        return value

    return timer


@pytest.fixture
def export_dir(make_onnx, make_images, tmp_path):
    """An export folder (model.onnx, and a model.int8.onnx with the same weights) and three images."""
    folder = tmp_path / "export"
    folder.mkdir()
    make_onnx("export/model.onnx")
    make_images(tmp_path / "in", [(64, 80), (48, 64), (40, 40)])
    return folder


def _add(make_onnx, folder, **kwargs):
    """``folder/model.int8.onnx``: a tiny model (``make_onnx`` options) with INT8 metadata."""
    return make_onnx(f"{folder.name}/model.int8.onnx", precision="int8", **kwargs)


def test_tune_records_every_path_and_auto_picks_the_fastest_that_passed(make_onnx, export_dir, tmp_path):
    _add(make_onnx, export_dir)
    speeds = {"model.onnx@onnxruntime-cpu": 10.0, "model.int8.onnx@onnxruntime-cpu": 30.0,
              "model.onnx@openvino": 12.0, "model.onnx@openvino-bf16": 20.0, "model.int8.onnx@openvino": 5.0}
    record = tune.run_tune(export_dir, [tmp_path / "in"], tile=TILE, timer=fake_timer(speeds))
    on_disk = json.loads((export_dir / "tune.json").read_text())
    assert on_disk["paths"] == record["paths"] and (export_dir / "tune.md").is_file()
    assert not [p for p in export_dir.iterdir() if is_temporary(p.name)]  # renamed into place, nothing left over
    entries = {f"{e['file']}@{e['backend']}": e for e in record["paths"]}
    ref = entries["model.onnx@onnxruntime-cpu"]
    assert ref["rule"] == "reference" and ref["speedup"] == 1.0 and ref["sha256"] == on_disk["reference"]["sha256"]
    int8 = entries["model.int8.onnx@onnxruntime-cpu"]
    assert int8["verdict"] == "pass" and int8["rule"] == "agreement" and int8["speedup"] == 3.0
    assert set(on_disk["machine"]) == {"cpu", "cpu_flags_sha256", "versions"}
    assert any(name.startswith("onnxruntime") for name in on_disk["machine"]["versions"])
    assert record["fastest_passed"] == {"file": "model.int8.onnx", "backend": "onnxruntime-cpu"}
    choice = autoselect.choose(export_dir / "model.onnx")
    assert (choice.path.name, choice.backend, choice.found) == ("model.int8.onnx", "onnxruntime-cpu", True)
    assert choice.line.startswith("auto: onnxruntime-cpu on model.int8.onnx") and "3.00x" in choice.line
    assert record["choice"] == choice.line and "\n" not in choice.line
    with load_backend(export_dir / "model.onnx") as backend:  # the Python API follows the record too
        assert backend.path.name == "model.int8.onnx" and backend.info.precision == "int8"
    with Segmenter(export_dir / "model.onnx", tile=TILE) as seg:
        assert seg.backend.path.name == "model.int8.onnx"
    # given the INT8 file itself, only its own paths may be chosen
    assert autoselect.choose(export_dir / "model.int8.onnx").backend == "onnxruntime-cpu"
    # the CLIs say what auto chose and why, in one line
    result = CliRunner().invoke(cli, ["infer", str(export_dir / "model.onnx"), str(tmp_path / "in"),
                                      "-o", str(tmp_path / "out"), "--tile", str(TILE)])
    assert result.exit_code == EXIT_OK, (result.stdout, result.stderr)
    assert choice.line in result.stderr.splitlines() and "backend: onnxruntime" in result.stderr
    bench = CliRunner().invoke(cli, ["bench", str(export_dir / "model.onnx"), str(tmp_path / "in"), "-o",
                                     str(tmp_path / "bench"), "--batch-sizes", "1", "--repeat", "1", "--warmup", "0",
                                     "--runs", "1", "--tile", str(TILE)])
    assert bench.exit_code == EXIT_OK and choice.line in bench.stderr.splitlines(), (bench.stdout, bench.stderr)
    benched = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert benched["model"]["path"].endswith("model.int8.onnx") and benched["options"]["backend"] == "onnxruntime-cpu"


def test_auto_never_picks_a_failed_or_unavailable_path(make_onnx, export_dir, tmp_path):
    _add(make_onnx, export_dir, seed=1)  # other weights: fails agreement
    speeds = {"model.onnx@onnxruntime-cpu": 10.0, "model.int8.onnx@onnxruntime-cpu": 100.0,
              "model.int8.onnx@openvino": 90.0, "model.onnx@openvino-bf16": 8.0,
              "model.onnx@openvino": MissingDependencyError("cannot run here")}
    record = tune.run_tune(export_dir, [tmp_path / "in"], tile=TILE, timer=fake_timer(speeds))
    entries = {f"{e['file']}@{e['backend']}": e for e in record["paths"]}
    assert entries["model.int8.onnx@onnxruntime-cpu"]["verdict"] == "fail"
    assert entries["model.int8.onnx@onnxruntime-cpu"]["failures"]
    unavailable = {f"{u['file']}@{u['backend']}": u["reason"] for u in record["unavailable"]}
    assert "model.onnx@openvino" in unavailable and "model.onnx@openvino" not in entries  # installed or not
    choice = autoselect.choose(export_dir / "model.onnx")
    assert (choice.path.name, choice.backend) == ("model.onnx", "onnxruntime-cpu")  # 10 tiles/s beats 8
    assert "| **FAIL** |" in (export_dir / "tune.md").read_text()
    # the failed file alone: nothing of it passed, so the exact path, and why
    alone = autoselect.choose(export_dir / "model.int8.onnx")
    assert alone.backend == autoselect.UNTUNED and "no path" in alone.line and "passed" in alone.line


def test_retention_decides_reduced_precision_paths_with_masks(make_onnx, export_dir, tmp_path):
    _add(make_onnx, export_dir)
    with Segmenter(export_dir / "model.onnx", backend="onnxruntime-cpu", tile=TILE) as seg:
        for p in sorted((tmp_path / "in").iterdir()):
            write_image(tmp_path / "masks" / f"{p.stem}.png", seg.segment(p).mask)
    record = tune.run_tune(export_dir / "model.onnx", [tmp_path / "in"], tile=TILE, masks_dir=tmp_path / "masks",
                           timer=fake_timer({"model.int8.onnx@onnxruntime-cpu": 5.0}))
    entries = {f"{e['file']}@{e['backend']}": e for e in record["paths"]}
    assert entries["model.int8.onnx@onnxruntime-cpu"]["rule"] == "retention"
    assert entries["model.onnx@onnxruntime-cpu"]["dice_vs_truth"] == 1.0 and record["truth"]
    if "model.onnx@openvino" in entries:
        assert entries["model.onnx@openvino"]["rule"] == "agreement"  # FP32 stays judged by agreement
    assert "accuracy retention" in (export_dir / "tune.md").read_text()


def test_a_stale_or_unreadable_record_is_ignored_with_a_message(make_onnx, export_dir, tmp_path, monkeypatch):
    _add(make_onnx, export_dir)
    tune.run_tune(export_dir, [tmp_path / "in"], tile=TILE, timer=fake_timer({"model.int8.onnx@onnxruntime-cpu": 50.0}))
    assert autoselect.choose(export_dir / "model.onnx").path.name == "model.int8.onnx"
    # another CPU, or other engine versions
    key = autoselect.machine_key()
    monkeypatch.setattr(autoselect, "machine_key", lambda: {**key, "cpu": "another CPU"})
    assert "tuned on another CPU" in autoselect.choose(export_dir / "model.onnx").line
    monkeypatch.setattr(autoselect, "machine_key", lambda: {**key, "versions": {**key["versions"], "openvino": "0.1"}})
    assert "openvino" in autoselect.choose(export_dir / "model.onnx").line
    monkeypatch.undo()
    # the INT8 file replaced: its entry no longer applies, the next fastest that passed does
    shutil.copy(make_onnx("changed.onnx", precision="int8", seed=3), export_dir / "model.int8.onnx")
    assert autoselect.choose(export_dir / "model.onnx").path.name == "model.onnx"
    # the model changed since: the record is stale, auto runs the exact FP32 path and says why
    shutil.copy(make_onnx("retrained.onnx", seed=2), export_dir / "model.onnx")
    stale = autoselect.choose(export_dir / "model.onnx")
    assert stale.backend == autoselect.UNTUNED and stale.path == export_dir / "model.onnx" and stale.found
    assert "stale" in stale.line and "model.onnx changed since it was tuned" in stale.line
    with load_backend(export_dir / "model.onnx") as backend:
        assert backend.path.name == "model.onnx" and backend.name.startswith("onnxruntime")
    result = CliRunner().invoke(cli, ["infer", str(export_dir / "model.onnx"), str(tmp_path / "in"),
                                      "-o", str(tmp_path / "out"), "--tile", str(TILE)])
    assert result.exit_code == EXIT_OK and stale.line in result.stderr.splitlines(), result.stderr
    (export_dir / "tune.json").write_text("{not json")
    broken = autoselect.choose(export_dir / "model.onnx")
    assert broken.backend == autoselect.UNTUNED and "unreadable" in broken.line


def test_without_a_record_auto_is_the_exact_fp32_path_and_quiet(make_onnx, export_dir, tmp_path):
    choice = autoselect.choose(export_dir / "model.onnx")
    assert choice.backend == autoselect.UNTUNED == "onnxruntime" and not choice.found
    assert "no tune.json" in choice.line and "flexunet tune" in choice.line
    assert autoselect.resolve(export_dir / "model.onnx", "openvino") is None  # an explicit backend stays
    assert autoselect.untuned(export_dir / "model.onnx", "auto") == "onnxruntime"
    result = CliRunner().invoke(cli, ["infer", str(export_dir / "model.onnx"), str(tmp_path / "in"),
                                      "-o", str(tmp_path / "out"), "--tile", str(TILE)])
    assert result.exit_code == EXIT_OK and "auto:" not in result.stderr, result.stderr


def test_an_interrupted_tune_leaves_the_earlier_record(make_onnx, export_dir, tmp_path):
    tune.run_tune(export_dir, [tmp_path / "in"], tile=TILE, timer=fake_timer({}))
    before = (export_dir / "tune.json").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        tune.run_tune(export_dir, [tmp_path / "in"], tile=TILE,
                      timer=fake_timer({"model.onnx@onnxruntime-cpu": KeyboardInterrupt()}))
    assert (export_dir / "tune.json").read_bytes() == before
    assert not [p for p in export_dir.iterdir() if is_temporary(p.name)]


def test_parity_compares_the_file_named_whatever_the_record_says(make_onnx, export_dir, tmp_path):
    _add(make_onnx, export_dir, seed=1)
    tune.run_tune(export_dir, [tmp_path / "in"], tile=TILE,
                  timer=fake_timer({"model.onnx@openvino": 50.0, "model.int8.onnx@onnxruntime-cpu": 99.0}))
    from flexunet.runtime.parity import run_parity

    report = run_parity(export_dir / "model.onnx", [export_dir / "model.onnx"], [tmp_path / "in"], tile=TILE)
    assert report.reference_backend.startswith("onnxruntime") and report.candidates[0].backend.startswith("onnxruntime")


def test_the_tune_command(make_onnx, export_dir, tmp_path):
    result = CliRunner().invoke(cli, ["tune", str(export_dir), "--images", str(tmp_path / "in"), "--repeat", "1",
                                      "--warmup", "0", "--batch-size", "2", "--tile", str(TILE)])
    assert result.exit_code == EXIT_OK, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| path | precision | tiles/s") and lines[-1].startswith("auto: ")
    assert "model.onnx@onnxruntime-cpu" in result.stdout and (export_dir / "tune.json").is_file()
    before = (export_dir / "tune.json").read_bytes()
    (tmp_path / "other_masks").mkdir()
    write_image(tmp_path / "other_masks" / "unrelated.png", np.zeros((8, 8), np.uint8))
    int8 = make_onnx("export/model.int8.onnx", precision="int8")
    for args, fragment in (([str(tmp_path / "in")], "no model.onnx"),
                           ([str(int8)], "a int8 model; tune judges every path against the FP32 model"),
                           ([str(export_dir), "--masks", str(tmp_path / "other_masks")], "named like"),
                           ([str(tmp_path / "in" / "img00.png")], "tune measures an exported .onnx")):
        bad = CliRunner().invoke(cli, ["tune", *args, "--images", str(tmp_path / "in"), "--tile", str(TILE)])
        lines = bad.stderr.splitlines()
        assert bad.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), bad.stderr
        assert fragment in lines[0], (fragment, lines[0])
    assert (export_dir / "tune.json").read_bytes() == before  # refused input leaves the earlier record
