"""The ``flexunet`` command never shows a traceback for bad input: one ``error: ...`` line, exit 2.

Most cases run in-process through click's CliRunner (TensorFlow is imported once for the session);
a few run ``python -m flexunet`` for real to check the process's exit status and its stderr.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from flexunet.cli import cli
from flexunet.core.config import CONFIG_FILENAME
from flexunet.core.errors import EXIT_CODES_HELP
from flexunet.core.imageio import write_image
from seed_configs import BAD_VALUES, write


pytestmark = pytest.mark.usefixtures("isolate_cli")


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str, code: int = 2) -> str:
    """Exit ``code``, nothing but one ``error: ...`` line on stderr, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    err = result.stderr
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in result.output
    for frag in fragments:
        assert str(frag) in lines[0], (frag, lines[0])
    return lines[0]


TINY_MODEL = """\
[model]
image_width    = 64
image_height   = 64
image_channels = 3
num_layers     = 3
base_filters   = 4
"""


def write_config(folder: Path, text: str) -> Path:
    return write(folder, text, dedent=False)


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory) -> Path:
    """A valid config with an existing [test] split (2 random 64x64 images and masks) and a
    [train] split whose folders do not exist."""
    root = tmp_path_factory.mktemp("tiny_project")
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / "data" / "test" / sub).mkdir(parents=True)
    for i in range(2):
        write_image(root / "data" / "test" / "images" / f"{i}.png",
                    rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        write_image(root / "data" / "test" / "masks" / f"{i}.png",
                    ((rng.random((64, 64)) > 0.5) * 255).astype(np.uint8))
    return write_config(root, TINY_MODEL + """\
[train]
batch_size     = 2
model_dir      = "./models"
image_datapath = "../../../dataset/Tiny/train/images/"
mask_datapath  = "../../../dataset/Tiny/train/masks/"

[test] 
image_datapath = "./data/test/images"
mask_datapath  = "./data/test/masks"
""")


# ---------------------------------------------------------------------------------------------
# help


def test_help_lists_commands_and_exit_codes():
    for flag in ("--help", "-h"):
        result = run(flag)
        assert result.exit_code == 0, result.output
        out = result.stdout
        for cmd in ("synth", "summary", "train", "evaluate"):
            assert f"  {cmd} " in out
        flat = " ".join(out.split())
        assert " ".join(EXIT_CODES_HELP.split()) in flat
        for code in ("0 success", "1 verdict failed", "2 bad input", "3 finished but some inputs",
                     "130 interrupted"):
            assert code in flat


def test_unknown_command_is_usage_error():
    result = run("frobnicate")
    assert result.exit_code == 2
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------
# summary


def test_summary_missing_config(tmp_path):
    missing = tmp_path / "nope" / CONFIG_FILENAME
    assert_one_line_error(run("summary", missing), missing, "not found")


def test_summary_folder_without_config(tmp_path):
    assert_one_line_error(run("summary", tmp_path), tmp_path / CONFIG_FILENAME)


# Every value the config tests refuse, through the command line; plus one the reader accepts and the
# model builder refuses: still one line, still exit 2.
BAD_SUMMARY_CONFIGS = [(case, text, f"[{section}] {key}") for case, text, section, key in BAD_VALUES] + [
    ("dropout-times-depth", "[model]\ndropout_rate = 0.6\n", "[model] dropout_rate"),
]


@pytest.mark.parametrize("text, named", [c[1:] for c in BAD_SUMMARY_CONFIGS],
                         ids=[c[0] for c in BAD_SUMMARY_CONFIGS])
def test_summary_bad_value(tmp_path, text, named):
    path = write_config(tmp_path, TINY_MODEL + text)
    line = assert_one_line_error(run("summary", path), path, named)
    assert line.startswith(f"error: {path}")


@pytest.mark.parametrize("content, named", [
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "not a text file"),
    (b"epochs = 5\n[train]\n", ":1:"),
    (b"[model\nnum_layers = 3\n", ":1:"),
], ids=["binary", "outside-section", "bad-header"])
def test_summary_unreadable_config(tmp_path, content, named):
    path = tmp_path / CONFIG_FILENAME
    path.write_bytes(content)
    assert_one_line_error(run("summary", path), path, named)


def test_summary_warns_for_broken_values_and_still_runs(tmp_path):
    path = write_config(tmp_path, TINY_MODEL + "generator = Flase\n")
    result = run("summary", path)
    assert result.exit_code == 0, result.output
    assert f"warning: {path}:7: [model] generator" in result.stderr
    assert result.stdout.rstrip().splitlines()[-1].startswith("parameters: ")


def test_summary_prints_parameter_count_of_build_unet(tmp_path):
    from flexunet.architectures.unet import build_unet

    path = write_config(tmp_path, TINY_MODEL + """\
num_classes    = 3
base_kernels   = (5,5)
dilation       = (2,2)
normalization  = True
input_normalize = False
[mask]
rgb_map = {(0,0,0):0, (0,255,0):1, (255,0,0):2}
""")
    result = run("summary", path)
    assert result.exit_code == 0, (result.output, result.exception)
    expected = build_unet(image_height=64, image_width=64, image_channels=3, num_classes=3,
                          base_filters=4, base_kernels=(5, 5), num_layers=3, dilation=(2, 2),
                          dropout_rate=0.05, normalization=True, input_normalize=False).count_params()
    assert result.stdout.rstrip("\n").splitlines()[-1] == f"parameters: {expected}"
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------
# train


def test_train_missing_data_root(tiny_project, tmp_path):
    missing = tmp_path / "no_such_data"
    assert_one_line_error(run("train", tiny_project, "--data-root", missing), missing, "--data-root")


def test_train_missing_image_folder_suggests_data_root(tiny_project):
    folder = Path(os.path.normpath(tiny_project.parent / "../../../dataset/Tiny/train/images"))
    line = assert_one_line_error(run("train", tiny_project), tiny_project, "[train] image_datapath")
    assert str(folder) in line
    assert "does not exist" in line and "--data-root" in line


def test_train_data_root_without_the_dataset(tiny_project, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    line = assert_one_line_error(run("train", tiny_project, "--data-root", root),
                                 tiny_project, "[train] image_datapath")
    assert str(root / "Tiny" / "train" / "images") in line


def test_train_bad_epochs_option(tiny_project):
    result = run("train", tiny_project, "--epochs", "0")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "--epochs" in result.output


# ---------------------------------------------------------------------------------------------
# evaluate


def test_evaluate_missing_model(tiny_project, tmp_path):
    missing = tmp_path / "missing.keras"
    assert_one_line_error(run("evaluate", tiny_project, "--model", missing), missing)


def test_evaluate_default_model_missing(tiny_project):
    expected = tiny_project.parent / "models" / "best_model.keras"
    assert_one_line_error(run("evaluate", tiny_project), expected, "--model")


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)))


def _bad_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "{not json")
        z.writestr("model.weights.h5", b"junk")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("make", [_garbage, _bad_zip, _empty], ids=["garbage", "bad-zip", "empty"])
def test_evaluate_corrupt_model(tiny_project, tmp_path, make):
    model = tmp_path / "x.keras"
    make(model)
    assert_one_line_error(run("evaluate", tiny_project, "--model", model), model, "cannot load model")


def test_evaluate_model_of_other_input_size(tiny_project, tmp_path):
    from flexunet.architectures.unet import build_unet

    model = tmp_path / "small.keras"
    build_unet(32, 32, 3, num_layers=3, base_filters=2).save(model)
    assert_one_line_error(run("evaluate", tiny_project, "--model", model), model, "(32, 32, 3)",
                          "(64, 64, 3)")


def test_evaluate_without_test_split(tmp_path):
    path = write_config(tmp_path, TINY_MODEL)
    model = tmp_path / "x.keras"
    _garbage(model)
    assert_one_line_error(run("evaluate", path, "--model", model), path, "[test] image_datapath")


def test_evaluate_test_folder_missing(tmp_path):
    path = write_config(tmp_path, TINY_MODEL + '[test]\nimage_datapath = "./t/images"\n'
                                               'mask_datapath = "./t/masks"\n')
    assert_one_line_error(run("evaluate", path), path, "[test] image_datapath",
                          tmp_path / "t" / "images", "--data-root")


# ---------------------------------------------------------------------------------------------
# real processes


def _python(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


def test_importing_the_cli_does_not_import_tensorflow(tmp_path):
    proc = _python(["-c", "import sys, flexunet, flexunet.cli, flexunet.train.cli; print('tensorflow' in sys.modules)"],
                   tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False", (proc.stdout, proc.stderr)

    proc = _python(["-c", "import sys\nfrom click.testing import CliRunner\nfrom flexunet.cli import cli\n"
                          "r = CliRunner().invoke(cli, ['--help'])\n"
                          "print(r.exit_code, 'tensorflow' in sys.modules)"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0 False", (proc.stdout, proc.stderr)


def _process_cases(tmp_path: Path):
    bad = write_config(tmp_path / "bad", TINY_MODEL + "[model]\nbase_kernels = (4,4)\n")
    ok = write_config(tmp_path / "ok", TINY_MODEL)
    missing = tmp_path / "nope" / CONFIG_FILENAME
    return {
        "summary-missing-config": (["summary", str(missing)], [str(missing)]),
        "summary-bad-value": (["summary", str(bad)], [str(bad), "[model] base_kernels"]),
        "train-missing-data-root": (["train", str(ok), "--data-root", str(tmp_path / "nodata")],
                                    [str(tmp_path / "nodata")]),
    }


@pytest.mark.parametrize("case", ["summary-missing-config", "summary-bad-value", "train-missing-data-root"])
def test_process_exit_status_and_single_error_line(tmp_path, case):
    args, fragments = _process_cases(tmp_path)[case]
    proc = _python(["-m", "flexunet", *args], tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for frag in fragments:
        assert frag in lines[0]
    assert proc.stdout == ""
