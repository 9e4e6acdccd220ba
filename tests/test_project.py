"""``flexunet project``: the whole chain on a tiny synthetic project, its reports and README blocks,
and a clear error when the data is missing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from flexunet.export.project import (README_BEGIN, README_END, SUMMARY_BEGIN, SUMMARY_END, project_name, resolve_config,
                            summary_table)
from flexunet.cli import cli
from flexunet.core.imageio import read_image
from flexunet.train.synth import make_dataset

pytestmark = pytest.mark.usefixtures("isolate_cli")

CONFIG = """\
; Tiny -- reduced variant for tests
[model]
image_width    = 64
image_height   = 64
image_channels = 3
num_layers     = 3
base_filters   = 4
base_kernels   = (3, 3)
learning_rate  = 0.003
dropout_rate   = 0.0

[train]
epochs         = 2
batch_size     = 4
patience       = 0
max_minutes    = 5
model_dir      = "./models"
eval_dir       = "./eval"
image_datapath = "../../../dataset/Tiny/train/images/"
mask_datapath  = "../../../dataset/Tiny/train/masks/"

[eval]
image_datapath = "../../../dataset/Tiny/valid/images/"
mask_datapath  = "../../../dataset/Tiny/valid/masks/"

[test]
image_datapath = "../../../dataset/Tiny/test/images/"
mask_datapath  = "../../../dataset/Tiny/test/masks/"
files          = ["0000.png", "0001.png", "0002.png"]
"""


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_dataset(root / "Tiny", kind="tiles", size=64, n_train=12, n_valid=4, n_test=4, n_mini=1, seed=5)
    return root


def make_project(tmp_path: Path) -> Path:
    project = tmp_path / "projects" / "Tiny"
    (project / "reduced").mkdir(parents=True)
    (project / "reduced" / "train_eval_infer.config").write_text(CONFIG)
    (project / "README.md").write_text(f"# Tiny\n\nintro\n\n{README_BEGIN}\n_not run yet_\n{README_END}\n\nafter\n")
    return project


def test_resolve_config_and_name(tmp_path):
    project = make_project(tmp_path)
    path = resolve_config(project)
    assert path == project / "reduced" / "train_eval_infer.config"
    assert project_name(path) == "Tiny"
    assert resolve_config(project, project / "reduced" / "train_eval_infer.config") == path


@pytest.mark.slow
def test_project_runs_the_whole_chain(tmp_path, data_root, monkeypatch):
    project = make_project(tmp_path)
    result = run("project", project, "--data-root", data_root)
    out = result.output
    base = project / "reduced"
    r = json.loads((base / "results" / "results.json").read_text())
    # verdict and exit code agree; FP32 ONNX always matches Keras
    assert result.exit_code == (0 if r["parity"]["passed"] else 1), out
    fp32, int8 = r["parity"]["candidates"]["model.onnx"], r["parity"]["candidates"]["model.int8.onnx"]
    assert fp32["verdict"] == "pass" and fp32["dice_vs_keras"] >= 0.999
    # a failed check ends the run with one line naming the model, and only then
    assert ("error: model.int8.onnx fails parity: mask dice vs Keras" in result.stderr) == (int8["verdict"] != "pass")
    assert "model.onnx fails parity" not in result.stderr
    assert int8["precision"] == "int8" and 0.0 <= int8["dice_vs_keras"] <= 1.0
    for step in ("train", "evaluate", "export", "infer", "parity", "bench"):
        assert f"] {step}: done" in out
    assert r["training"]["epochs_run"] == 2
    assert r["split"]["held_out"] == ["0000.png", "0001.png", "0002.png"]
    assert set(r["evaluation"]["metrics"]) >= {"loss", "dice_coef"}
    for key in ("keras", "onnx_fp32", "onnx_int8"):
        assert r["throughput"][key]["images_per_s"] > 0
    assert r["throughput"]["onnx_fp32"]["vs_seed_loop"] > 0
    # artifacts and reports
    for rel in ("models/best_model.keras", "export/model.onnx", "export/model.int8.onnx", "out/0000.png",
                "out/0000_color.png", "parity/parity.json", "results/results.md", "results/parity.md",
                "results/worst.png", "results/train_losses.png"):
        assert (base / rel).is_file(), rel
    picture = read_image(base / "results" / "comparison.png")
    assert picture.shape[1] == 1600 and picture.shape[0] > 3 * 394  # three rows of four panels
    # the README block is replaced, the rest kept
    readme = (project / "README.md").read_text()
    assert "_not run yet_" not in readme and readme.startswith("# Tiny\n\nintro") and readme.endswith("after\n")
    assert "ONNX FP32" in readme and "reduced/results/comparison.png" in readme
    # the summary table reads the results
    table = summary_table(tmp_path / "projects")
    assert "[Tiny](Tiny/README.md)" in table and ("pass" in table or "FAIL" in table)

    assert r["export"]["model.int8.onnx"]["tuning"]["target_dice"] == 0.99
    assert "INT8 mixed precision:" in (base / "results" / "results.md").read_text()

    # --skip-train reuses the model and the record of the run that trained it
    again = run("project", project, "--data-root", data_root, "--skip-train")
    assert "train: skipped" in again.output
    r2 = json.loads((base / "results" / "results.json").read_text())
    assert r2["keras_weights_sha256"] == r["keras_weights_sha256"]
    assert r2["training"] == {**r["training"], "reused_from": r["started"]}
    assert "reused with --skip-train" in (base / "results" / "results.md").read_text()
    # ... but not a record of another model
    r2["keras_weights_sha256"] = "0" * 64
    (base / "results" / "results.json").write_text(json.dumps(r2))
    run("project", project, "--data-root", data_root, "--skip-train")
    assert json.loads((base / "results" / "results.json").read_text())["training"] is None

    # a run that fails part-way leaves the earlier results as they were
    import flexunet.export.project as project_module
    from flexunet.core.errors import FlexunetError

    before = {p.name: p.read_bytes() for p in (base / "results").iterdir()}
    readme_before = (project / "README.md").read_text()

    def broken(*args, **kwargs):
        raise FlexunetError("parity broke")

    monkeypatch.setattr(project_module.par, "run_parity", broken)
    failed = run("project", project, "--data-root", data_root, "--skip-train")
    assert failed.exit_code == 2 and "error: parity broke" in failed.output
    assert {p.name: p.read_bytes() for p in (base / "results").iterdir()} == before
    assert (project / "README.md").read_text() == readme_before


def test_parity_failures_name_each_failing_model():
    from flexunet.export.project import parity_failures

    results = {"config": "/p/Lizard/reduced/train_eval_infer.config", "parity": {"candidates": {
        "model.onnx": {"precision": "fp32", "dice_vs_keras": 1.0, "min_dice": 0.999, "verdict": "pass"},
        "model.int8.onnx": {"precision": "int8", "dice_vs_keras": 0.9508, "min_dice": 0.99, "verdict": "fail"}}}}
    lines = parity_failures(results)
    assert len(lines) == 1 and lines[0].startswith("model.int8.onnx fails parity: mask dice vs Keras 0.9508 < 0.99")
    assert "/p/Lizard/reduced/results/parity.md" in lines[0] and "weight_headroom.py --model /p/Lizard/reduced/export/model.onnx" in lines[0]
    results["parity"]["candidates"]["model.int8.onnx"]["verdict"] = "pass"
    assert parity_failures(results) == []


def test_project_says_which_data_is_missing(tmp_path):
    project = make_project(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("project", project, "--data-root", empty)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(empty / "Tiny" / "train" / "images") in lines[0] and "does not exist" in lines[0]


def test_project_missing_held_out_file(tmp_path, data_root):
    project = make_project(tmp_path)
    cfg = project / "reduced" / "train_eval_infer.config"
    cfg.write_text(CONFIG.replace('"0002.png"]', '"0002.png", "nope.png"]'))
    result = run("project", project, "--data-root", data_root)
    assert result.exit_code == 2
    assert "nope.png" in result.output and "[test] files" in result.output


def test_project_skip_train_without_model(tmp_path, data_root):
    project = make_project(tmp_path)
    result = run("project", project, "--data-root", data_root, "--skip-train")
    assert result.exit_code == 2 and "no trained model" in result.output


def test_summary_markers_in_projects_readme():
    readme = Path(__file__).resolve().parents[1] / "projects" / "README.md"
    text = readme.read_text()
    assert SUMMARY_BEGIN in text and SUMMARY_END in text
