"""``flexunet project``: the whole chain on a tiny synthetic project (run once, then examined by
focused tests), what it writes and where, --skip-train, a run that fails part-way, the summary
table command, and one-line errors for missing data or a config outside the project."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from flexunet.cli import cli
from flexunet.core.compare import TOLERANCES
from flexunet.core.errors import EXIT_USAGE
from flexunet.core.imageio import read_image, read_mask
from flexunet.projects.report import README_BEGIN, README_END, SUMMARY_BEGIN, SUMMARY_END
from flexunet.projects.results import parity_failures
from flexunet.projects.runner import resolve_project
from flexunet.runtime.disagreement_figure import figure_size
from flexunet.train.synth import make_dataset

pytestmark = pytest.mark.usefixtures("isolate_cli")

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = ["0000.png", "0001.png", "0002.png"]

CONFIG = """\
; Tiny -- reduced variant for tests
[model]
image_width    = 64
image_height   = 64
image_channels = 3
num_layers     = 3
base_filters   = 8
base_kernels   = (3, 3)
learning_rate  = 0.003
dropout_rate   = 0.0

[train]
epochs         = 6
batch_size     = 4
patience       = 6
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
PROJECTS_README = f"# Projects\n\nintro\n\n{SUMMARY_BEGIN}\n_no table yet_\n{SUMMARY_END}\n\nafter\n"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def make_project(root: Path) -> Path:
    """``root/projects/Tiny`` with its reduced config and a README holding the results markers,
    beside a projects README holding the summary markers."""
    project = root / "projects" / "Tiny"
    (project / "reduced").mkdir(parents=True)
    (project / "reduced" / "train_eval_infer.config").write_text(CONFIG)
    (project / "README.md").write_text(f"# Tiny\n\nintro\n\n{README_BEGIN}\n_not run yet_\n{README_END}\n\nafter\n")
    (root / "projects" / "README.md").write_text(PROJECTS_README)
    return project


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_dataset(root / "Tiny", kind="tiles", size=64, n_train=12, n_valid=4, n_test=4, n_mini=1, seed=5)
    return root


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, data_root):
    """One whole run of the tiny project, as a user runs it (its own process): the project, its
    reduced folder, the process's outcome, results.json, and the files outside the project before
    the run."""
    root = tmp_path_factory.mktemp("run")
    project = make_project(root)
    outside = {k: v for k, v in tree(root).items() if not k.startswith("projects/Tiny/")}
    proc = subprocess.run([sys.executable, "-m", "flexunet", "project", project, "--data-root", data_root],
                          capture_output=True, text=True, cwd=root)
    base = project / "reduced"
    results_json = base / "results" / "results.json"
    assert results_json.is_file(), proc.stdout + proc.stderr
    return SimpleNamespace(root=root, project=project, base=base, proc=proc, outside=outside,
                           results=json.loads(results_json.read_text()))


def copy_of(first_run, tmp_path) -> Path:
    """A copy of the project as the first run left it (for runs that change it)."""
    project = tmp_path / "projects" / "Tiny"
    shutil.copytree(first_run.project, project)
    return project


# -- the first run -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_exit_code_and_error_lines_follow_the_parity_verdicts(first_run):
    r, proc = first_run.results, first_run.proc
    assert proc.returncode == (0 if r["parity"]["passed"] else 1), proc.stderr
    fp32, int8 = r["parity"]["candidates"]["model.onnx"], r["parity"]["candidates"]["model.int8.onnx"]
    assert fp32["verdict"] == "pass" and fp32["dice_vs_keras"] >= TOLERANCES["fp32"].min_dice
    assert fp32["min_dice"] == TOLERANCES["fp32"].min_dice and int8["min_dice"] == TOLERANCES["int8"].min_dice
    judged = next(c for c in json.loads((first_run.base / "parity" / "parity.json").read_text())["candidates"]
                  if c["model"].endswith("model.int8.onnx"))
    if judged["rule"] == "retention":  # ground truth given: accuracy retention decides INT8, not agreement
        assert (int8["verdict"] == "pass") == (judged["retention"] >= judged["min_retention"])
    else:
        assert (int8["verdict"] == "pass") == (int8["dice_vs_keras"] >= int8["min_dice"])
    assert r["parity"]["passed"] == (int8["verdict"] == "pass")
    # a failed check ends the run with one line naming the model, and only then
    said = "keeps" if int8["rule"] == "retention" else "mask dice vs Keras"
    assert (f"error: model.int8.onnx fails parity: {said}" in proc.stderr) == (int8["verdict"] != "pass")
    assert set(r["throughput"]) >= {"keras", "onnx_fp32", "onnx_int8", "machine"}
    for key, label in (("openvino_fp32", "model.onnx@openvino"), ("openvino_bf16", "model.onnx@openvino-bf16")):
        # each OpenVINO path measured (images/s, verdict, rule) or named with the reason it is not
        measured = key in r["throughput"] and label in r["parity"]["candidates"]
        assert measured != (key in r["parity"]["unavailable"]), key
        if measured:
            assert r["throughput"][key]["images_per_s"] > 0 and r["parity"]["candidates"][label]["rule"]
    assert "model.onnx fails parity" not in proc.stderr


@pytest.mark.slow
def test_tiled_dice_vs_truth_is_that_of_the_written_masks(first_run, data_root):
    """Recomputed here from the masks the infer step wrote and the dataset's truth (pooled over
    the held-out images), it equals results.json's figure and beats marking every pixel."""
    inter = pred_sum = truth_sum = pixels = 0
    for name in HELD_OUT:
        pred = read_mask(first_run.base / "out" / name) > 127
        truth = read_mask(data_root / "Tiny" / "test" / "masks" / name) > 127
        inter += int(np.count_nonzero(pred & truth))
        pred_sum, truth_sum, pixels = pred_sum + int(pred.sum()), truth_sum + int(truth.sum()), pixels + truth.size
    dice = 2 * inter / (pred_sum + truth_sum)
    assert first_run.results["tiled_dice_vs_truth"]["fp32"] == pytest.approx(dice, abs=1e-3)
    everything = 2 * truth_sum / (truth_sum + pixels)  # the dice of a mask covering the whole image
    assert dice > everything + 0.05, (dice, everything)


@pytest.mark.slow
def test_steps_and_records(first_run):
    r, out = first_run.results, first_run.proc.stdout
    for step in ("train", "evaluate", "export", "infer", "parity", "bench"):
        assert f"] {step}: done" in out
    assert r["training"]["epochs_run"] == 6 and 1 <= r["training"]["best_epoch"] <= 6
    assert r["split"] == {"train_images": 12, "held_out": HELD_OUT}
    assert set(r["evaluation"]["metrics"]) >= {"loss", "dice_coef"}
    for key in ("keras", "onnx_fp32", "onnx_int8"):
        assert r["throughput"][key]["images_per_s"] > 0
    assert r["throughput"]["onnx_fp32"]["vs_seed_loop"] > 0
    assert r["export"]["model.int8.onnx"]["tuning"]["target_dice"] == TOLERANCES["int8"].min_dice
    assert "INT8 mixed precision:" in (first_run.base / "results" / "results.md").read_text()


@pytest.mark.slow
def test_artifacts_and_reports_are_written_inside_the_project_only(first_run):
    base = first_run.base
    for rel in ("models/best_model.keras", "export/model.onnx", "export/model.int8.onnx", "out/0000.png",
                "out/0000_color.png", "parity/parity.json", "results/results.md", "results/parity.md",
                "results/worst.png", "results/train_losses.png", "evaluation.csv"):
        assert (base / rel).is_file(), rel
    picture = read_image(base / "results" / "comparison.png")
    assert picture.shape[:2] == figure_size([(64, 64)] * 3)  # three rows of four panels
    # nothing outside the project changed: not the projects README with its summary markers
    after = {k: v for k, v in tree(first_run.root).items() if not k.startswith("projects/Tiny/")}
    assert after == first_run.outside
    assert f"flexunet project --summary {first_run.project.parent.resolve()}" in first_run.proc.stdout


@pytest.mark.slow
def test_readme_block_is_replaced_and_the_rest_kept(first_run):
    readme = (first_run.project / "README.md").read_text()
    assert "_not run yet_" not in readme and readme.startswith("# Tiny\n\nintro") and readme.endswith("after\n")
    block = readme.split(README_BEGIN)[1].split(README_END)[0]
    assert "ONNX FP32" in block and "(reduced/results/comparison.png)" in block
    assert (first_run.base / "results" / "results.md").read_text().strip() in block


# -- later runs on a copy ------------------------------------------------------------------------------
@pytest.mark.slow
def test_skip_train_reuses_the_model_and_the_record_of_the_run_that_trained_it(first_run, data_root, tmp_path):
    project = copy_of(first_run, tmp_path)
    base, r = project / "reduced", first_run.results
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


@pytest.mark.slow
def test_a_run_failing_part_way_leaves_the_earlier_results(first_run, data_root, tmp_path, monkeypatch):
    import flexunet.projects.runner as runner
    from flexunet.core.errors import FlexunetError

    project = copy_of(first_run, tmp_path)
    before = tree(project / "reduced" / "results")
    readme_before = (project / "README.md").read_text()

    def broken(*args, **kwargs):
        raise FlexunetError("parity broke")

    monkeypatch.setattr(runner, "run_parity", broken)
    failed = run("project", project, "--data-root", data_root, "--skip-train")
    assert failed.exit_code == EXIT_USAGE and "error: parity broke" in failed.output
    assert tree(project / "reduced" / "results") == before
    assert (project / "README.md").read_text() == readme_before


# -- the summary table ---------------------------------------------------------------------------------
def committed_results(folder: Path) -> Path:
    """A projects folder holding copies of the repository's results.json files and README."""
    for src in (REPO / "projects").glob("*/reduced/results/results.json"):
        dest = folder / src.relative_to(REPO / "projects")
        dest.parent.mkdir(parents=True)
        shutil.copyfile(src, dest)
    shutil.copyfile(REPO / "projects" / "README.md", folder / "README.md")
    return folder


def test_summary_rebuilds_the_committed_table_from_the_committed_results(tmp_path):
    folder = committed_results(tmp_path / "projects")
    readme = (folder / "README.md").read_text()
    stale = readme.replace(readme.split(SUMMARY_BEGIN)[1].split(SUMMARY_END)[0], "\n_stale_\n")
    (folder / "README.md").write_text(stale)
    before = tree(folder)
    result = run("project", "--summary", folder)
    assert result.exit_code == 0, result.output
    assert (folder / "README.md").read_text() == readme  # the table in the repository is up to date
    assert {k: v for k, v in tree(folder).items() if k != "README.md"} == \
        {k: v for k, v in before.items() if k != "README.md"}  # the only file written
    rows = [line for line in result.stdout.splitlines() if line.startswith("| [")]
    assert len(rows) == len(list(folder.glob("*/reduced/results/results.json"))) > 0


def test_summary_without_markers_prints_only_and_without_results_is_an_error(tmp_path):
    folder = committed_results(tmp_path / "projects")
    (folder / "README.md").write_text("# no markers\n")
    result = run("project", "--summary", folder)
    assert result.exit_code == 0 and "| [IHC](IHC/README.md)" in result.stdout and "markers" in result.stderr
    assert (folder / "README.md").read_text() == "# no markers\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("project", "--summary", empty)
    assert result.exit_code == EXIT_USAGE and "run flexunet project first" in result.stderr


def test_summary_or_a_project_not_both(tmp_path):
    project = make_project(tmp_path)
    for args in (("--summary", project.parent, project), ()):
        result = run("project", *args)
        assert result.exit_code == EXIT_USAGE and "--summary" in result.output


def test_summary_markers_in_projects_readme():
    text = (REPO / "projects" / "README.md").read_text()
    assert SUMMARY_BEGIN in text and SUMMARY_END in text


# -- the project folder and errors -------------------------------------------------------------------------
def test_resolve_project_from_a_folder_or_a_config(tmp_path):
    project = make_project(tmp_path)
    config = project / "reduced" / "train_eval_infer.config"
    found = resolve_project(project)
    assert (found.folder, found.config, found.work) == (project, config, project / "reduced")
    assert resolve_project(config).folder == project and resolve_project(config).config == config
    assert resolve_project(project, config).config == config


def test_a_config_or_output_outside_the_project_is_refused(tmp_path, data_root):
    project = make_project(tmp_path)
    elsewhere = tmp_path / "elsewhere" / "train_eval_infer.config"
    elsewhere.parent.mkdir()
    elsewhere.write_text(CONFIG)
    result = run("project", project, "--config", elsewhere, "--data-root", data_root)
    assert result.exit_code == EXIT_USAGE and "outside the project folder" in result.output
    config = project / "reduced" / "train_eval_infer.config"
    config.write_text(CONFIG.replace('model_dir      = "./models"', 'model_dir      = "../../models"'))
    result = run("project", project, "--data-root", data_root)
    assert result.exit_code == EXIT_USAGE and "[train] model_dir" in result.output
    assert "outside the project folder" in result.output
    assert not (tmp_path / "projects" / "models").exists() and not (project / "reduced" / "export").exists()


def test_parity_failures_name_each_failing_model():
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
    assert result.exit_code == EXIT_USAGE
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(empty / "Tiny" / "train" / "images") in lines[0] and "does not exist" in lines[0]


def test_project_missing_held_out_file(tmp_path, data_root):
    project = make_project(tmp_path)
    cfg = project / "reduced" / "train_eval_infer.config"
    cfg.write_text(CONFIG.replace('"0002.png"]', '"0002.png", "nope.png"]'))
    result = run("project", project, "--data-root", data_root)
    assert result.exit_code == EXIT_USAGE
    assert "nope.png" in result.output and "[test] files" in result.output


def test_project_skip_train_without_model(tmp_path, data_root):
    project = make_project(tmp_path)
    result = run("project", project, "--data-root", data_root, "--skip-train")
    assert result.exit_code == EXIT_USAGE and "no trained model" in result.output
