"""Faults on the training side: ``flexunet synth`` over folders it did not write, configs that give
no model, config values of any length, and models too large for this machine's memory.

Table-driven where it fits: each row names a case and the exit code it must give.  Every row checks
that there is no traceback, that a refusal is one ``error: ...`` line, and that no file flexunet did
not write was touched (bytes and modification time); a refused command changes nothing at all.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from flexunet.cli import cli
from flexunet.core.config import CONFIG_FILENAME, load_config
from flexunet.core.imageio import write_image
from flexunet.train import synth
from flexunet.train.synth import make_dataset

pytestmark = pytest.mark.usefixtures("isolate_cli")


@pytest.fixture(autouse=True)
def fresh_cli_logging(monkeypatch):
    """Start without the "flexunet" log handler a CLI run of an earlier test module may have left
    (one made without isolate_cli writes to that test's stderr, not to this test's)."""
    monkeypatch.setattr(logging.getLogger("flexunet"), "handlers", [])


RECORD_NAME = "flexunet-synth.json"  # synth's record of the files it wrote (synth.RECORD_NAME)
SMALL = ["--train", "2", "--valid", "1", "--test", "1", "--size", "32"]
SMALL_API = dict(kind="tiles", n_train=2, n_valid=1, n_test=1, size=32)
N_FILES = 2 * (2 + 1 + 1 + synth.DEFAULTS["tiles"]["n_mini"])  # images and masks of SMALL


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry below ``folder``: files by (bytes, mtime), folders as 'dir'."""
    if not folder.exists():
        return {}
    if folder.is_file():
        return {".": (folder.read_bytes(), folder.stat().st_mtime_ns)}
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def check_result(result, code: int, *fragments) -> None:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    if code == 2:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        for frag in fragments:
            assert str(frag) in lines[0], (frag, lines[0])


def _image(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


# -- flexunet synth: a folder it did not write --------------------------------------------------------
# prepare(out) makes the folder and returns the relative paths of files synth must not touch (for a
# refused run: everything) and the extra arguments of the run; expected counts are parsed from the
# "files:" line (new, replaced, already identical, removed, left untouched).


def _user_flat(out: Path):
    for i in range(5):
        write_image(out / f"{i:04d}.png", _image(i))
    return "all", []


def _user_seed_layout(out: Path):
    for split in ("train", "test"):
        for i in range(3):
            write_image(out / split / "images" / f"{i:04d}.png", _image(i))
            write_image(out / split / "masks" / f"{i:04d}.png", _image(i)[..., 0])
    return "all", []


def _user_notes(out: Path):
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    return "all", []


def _a_file(out: Path):
    out.write_text("not a folder")
    return "all", []


def _empty(out: Path):
    out.mkdir()
    return set(), []


def _new(out: Path):
    return set(), []


def _own_again(out: Path):
    make_dataset(out, **SMALL_API)
    return set(), []


def _own_fewer(out: Path):
    make_dataset(out, **{**SMALL_API, "n_train": 4})
    return set(), []


def _own_plus_user_files(out: Path):
    make_dataset(out, **{**SMALL_API, "n_train": 4})
    (out / "notes.txt").write_text("mine")
    write_image(out / "train" / "images" / "9999.png", _image(9))
    write_image(out / "extra" / "0000.png", _image(8))
    return {"notes.txt", "train/images/9999.png", "extra/0000.png"}, []


def _own_file_edited(out: Path):
    make_dataset(out, **SMALL_API)
    write_image(out / "train" / "images" / "0001.png", _image(7))
    return "all", []


def _own_stale_file_edited(out: Path):
    make_dataset(out, **{**SMALL_API, "n_train": 4})
    write_image(out / "train" / "images" / "0003.png", _image(7))
    return {"train/images/0003.png"}, []


def _record_corrupt(out: Path):
    make_dataset(out, **SMALL_API)
    (out / RECORD_NAME).write_text("{not json")
    return "all", []


def _record_lost(out: Path):
    make_dataset(out, **SMALL_API)
    (out / RECORD_NAME).unlink()
    return set(), []


def _record_lost_other_seed(out: Path):
    make_dataset(out, **SMALL_API)
    (out / RECORD_NAME).unlink()
    return "all", ["--seed", "1"]


def _folder_became_file(out: Path):
    make_dataset(out, **SMALL_API)
    for f in (out / "valid" / "images").iterdir():
        f.unlink()
    (out / "valid" / "images").rmdir()
    (out / "valid" / "images").write_text("mine")
    return "all", []


SYNTH_CASES = [
    # (case, prepare, exit code, expected counts or the fragments of the error line)
    ("new-folder", _new, 0, dict(new=N_FILES, replaced=0, same=0, removed=0, left=0)),
    ("empty-folder", _empty, 0, dict(new=N_FILES, replaced=0, same=0, removed=0, left=0)),
    ("user-images-named-like-synth", _user_flat, 2, ["not empty", RECORD_NAME]),
    ("user-dataset-in-synth-layout", _user_seed_layout, 2, ["not empty", RECORD_NAME]),
    ("user-file-only", _user_notes, 2, ["not empty"]),
    ("out-is-a-file", _a_file, 2, ["not a folder"]),
    ("own-output-again", _own_again, 0, dict(new=0, replaced=N_FILES, same=0, removed=0, left=0)),
    ("own-output-fewer-samples", _own_fewer, 0, dict(new=0, replaced=N_FILES, same=0, removed=4, left=0)),
    ("own-output-plus-user-files", _own_plus_user_files, 0,
     dict(new=0, replaced=N_FILES, same=0, removed=4, left=3)),
    ("own-file-edited-by-user", _own_file_edited, 2, ["train/images/0001.png", "not written by"]),
    ("own-stale-file-edited-by-user", _own_stale_file_edited, 0,
     dict(new=0, replaced=N_FILES, same=0, removed=3, left=1)),
    ("record-corrupt", _record_corrupt, 2, [RECORD_NAME]),
    ("record-lost-same-options", _record_lost, 0, dict(new=0, replaced=0, same=N_FILES, removed=0, left=0)),
    ("record-lost-other-seed", _record_lost_other_seed, 2, ["not empty", RECORD_NAME]),
    ("split-folder-became-a-file", _folder_became_file, 2, ["valid/images", "not a folder"]),
]


def _counts(stdout: str) -> dict[str, int]:
    m = re.search(r"files: (\d+) new, (\d+) replaced, (\d+) already identical, (\d+) removed .*?, "
                  r"(\d+) not its own left untouched", stdout)
    assert m, stdout
    return dict(zip(("new", "replaced", "same", "removed", "left"), map(int, m.groups())))


@pytest.mark.parametrize("prepare, code, expected", [c[1:] for c in SYNTH_CASES],
                         ids=[c[0] for c in SYNTH_CASES])
def test_synth_never_touches_files_it_did_not_write(tmp_path, prepare, code, expected):
    out = tmp_path / "mydata"
    protected, extra = prepare(out)
    before = snapshot(out)
    result = run("synth", out, *SMALL, *extra)
    check_result(result, code, *(expected if code else [out]))
    after = snapshot(out)
    if code:
        assert after == before, "a refused synth changed the folder"
        return
    for rel in protected:
        assert after[rel] == before[rel], f"{rel} was touched"
    assert _counts(result.stdout) == expected
    record = out / RECORD_NAME
    assert record.is_file()
    for split, n in (("train", 2), ("valid", 1), ("test", 1), ("mini_test", 4)):
        for sub in ("images", "masks"):
            names = {p.name for p in (out / split / sub).iterdir()} - {Path(p).name for p in protected
                                                                         if p.startswith(f"{split}/{sub}/")}
            assert names == {f"{i:04d}.png" for i in range(n)}, (split, sub, names)


def test_synth_twice_gives_the_same_files_and_the_record_lists_them(tmp_path):
    """``make demo`` runs synth on the same folder again and again: each run replaces its own files."""
    out = tmp_path / "dataset"
    for _ in range(2):
        check_result(run("synth", out, *SMALL), 0)
    again = tmp_path / "again"
    make_dataset(again, **SMALL_API)
    files = {p.relative_to(out) for p in out.rglob("*.png")}
    assert files == {p.relative_to(again) for p in again.rglob("*.png")} and len(files) == N_FILES
    assert all((out / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert (out / synth.RECORD_NAME).is_file() and synth.RECORD_NAME == RECORD_NAME


def test_interrupted_synth_can_run_again(tmp_path, monkeypatch):
    """Files of an interrupted run are its own: the next run replaces them (the record is written
    before the first file)."""
    out = tmp_path / "ds"
    real_write = synth.write_bytes
    written = []

    def write_then_stop(path, data):
        if len(written) == 5:
            raise KeyboardInterrupt
        written.append(path)
        return real_write(path, data)

    monkeypatch.setattr(synth, "write_bytes", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        make_dataset(out, **SMALL_API)
    monkeypatch.setattr(synth, "write_bytes", real_write)
    summary = make_dataset(out, **SMALL_API)
    assert summary["files"]["replaced"] == 5 and summary["files"]["new"] == N_FILES - 5


def test_disk_full_during_synth_is_one_line_and_the_next_run_recovers(tmp_path, monkeypatch):
    import errno

    out = tmp_path / "ds"
    real_write = synth.write_bytes
    calls = []

    def full_after_three(path, data):
        calls.append(path)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, data)

    monkeypatch.setattr(synth, "write_bytes", full_after_three)
    check_result(run("synth", out, *SMALL), 2, "No space left on device", out / "train")
    monkeypatch.setattr(synth, "write_bytes", real_write)
    result = run("synth", out, *SMALL)
    check_result(result, 0)
    assert _counts(result.stdout) == dict(new=N_FILES - 3, replaced=3, same=0, removed=0, left=0)


# -- configs that give no model -----------------------------------------------------------------------

TINY_MODEL = "[model]\nimage_width = 64\nimage_height = 64\nnum_layers = 3\nbase_filters = 4\n"

NO_MODEL_CASES = [
    # (case, config text, command, exit code, fragments of the error line)
    ("empty-file", "", "summary", 2, ["empty", "[model]"]),
    ("only-comments", "; nothing here\n# nor here\n", "summary", 2, ["empty", "[model]"]),
    ("no-model-section", "[train]\nepochs = 3\n", "summary", 2, ["no [model] section"]),
    ("empty-model-section", "[model]\n[train]\nepochs = 3\n", "summary", 2, ["[model] is empty"]),
    ("no-model-section-train", "[train]\nepochs = 3\n", "train", 2, ["no [model] section"]),
    ("empty-file-evaluate", "", "evaluate", 2, ["empty", "[model]"]),
    ("model-section", TINY_MODEL, "summary", 0, []),
]


@pytest.mark.parametrize("text, command, code, fragments", [c[1:] for c in NO_MODEL_CASES],
                         ids=[c[0] for c in NO_MODEL_CASES])
def test_a_config_without_a_model_is_an_error(tmp_path, text, command, code, fragments):
    path = tmp_path / CONFIG_FILENAME
    path.write_text(text)
    before = snapshot(tmp_path)
    result = run(command, path)
    check_result(result, code, path, *fragments)
    if code:
        assert snapshot(tmp_path) == before


# -- config values of any length ----------------------------------------------------------------------

LONG = "x" * 5000


LONG_VALUE_CASES = [
    # (case, config text, exit code of summary, section and key named)
    ("unparsable-value-warning", TINY_MODEL + f"generator = Flase{LONG}\n", 0, "[model] generator"),
    ("unparsable-multiline-warning", TINY_MODEL + "loss = [\n" + "  1 2,\n" * 800 + "  ]\n", 0,
     "[model] loss"),
    ("wrong-type-error", TINY_MODEL + f"metrics = {list(range(3000))}\n", 2, "[model] metrics"),
    ("wrong-string-error", TINY_MODEL + f"activation = '{LONG}'\n", 2, "[model] activation"),
    ("outside-section-error", f"epochs = {LONG}\n" + TINY_MODEL, 2, ":1:"),
    ("no-separator-error", TINY_MODEL + f"{LONG}\n", 2, ":6:"),
]


@pytest.mark.parametrize("text, code, named", [c[1:] for c in LONG_VALUE_CASES],
                         ids=[c[0] for c in LONG_VALUE_CASES])
def test_config_values_are_cut_in_warnings_and_errors(tmp_path, text, code, named):
    path = tmp_path / CONFIG_FILENAME
    path.write_text(text)
    result = run("summary", path)
    check_result(result, code, path, named)
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith(("warning: ", "error: "))]
    assert lines and all(named in ln for ln in lines[:1]), result.stderr
    for line in lines:
        assert len(line) < len(str(path)) + 250 and "..." in line, line


# -- models too large for this machine ----------------------------------------------------------------

HUGE = "[model]\nimage_width = 2048\nimage_height = 2048\nbase_filters = 1024\nnum_layers = 12\n"
# builds in 8 MB but needs at least 8.4 GiB to train: a machine with 4 GiB available refuses it
TALL = ("[model]\nimage_width = 1024\nimage_height = 1024\nbase_filters = 32\nnum_layers = 4\n"
        "[train]\nbatch_size = 4\nmodel_dir = './models'\neval_dir = './eval'\n"
        "image_datapath = './data/images'\nmask_datapath = './data/masks'\n")


@pytest.fixture
def four_gib(monkeypatch):
    from flexunet.train import memory

    monkeypatch.setattr(memory, "available_memory", lambda: (4 << 30, 8 << 30))


def _no_build(monkeypatch):
    from flexunet.train import trainer

    def refuse(*_, **__):
        raise AssertionError("the model was built")

    monkeypatch.setattr(trainer, "build_model", refuse)


MEMORY_CASES = [
    # (case, config text, command, exit code, fragments of the error line or of the output)
    ("huge-summary", HUGE, "summary", 2, ["[model] base_filters", "num_layers", "GiB", "available"]),
    ("huge-train", HUGE, "train", 2, ["[model] base_filters", "num_layers", "GiB", "available"]),
    ("tall-train", TALL, "train", 2, ["[train] batch_size", "image_width", "GiB", "available"]),
    ("tall-summary", TALL, "summary", 0, ["too large to train here"]),
]


@pytest.mark.parametrize("text, command, code, fragments", [c[1:] for c in MEMORY_CASES],
                         ids=[c[0] for c in MEMORY_CASES])
def test_models_too_large_for_memory_are_refused_before_building(tmp_path, monkeypatch, four_gib,
                                                                 text, command, code, fragments):
    path = tmp_path / CONFIG_FILENAME
    path.write_text(text)
    if code:
        _no_build(monkeypatch)
    before = snapshot(tmp_path)
    result = run(command, path)
    check_result(result, code, path, *fragments)
    if code:
        assert snapshot(tmp_path) == before  # no model or eval folder made
    else:
        for frag in fragments:
            assert frag in result.stdout
        assert result.stdout.rstrip().splitlines()[-1].startswith("parameters: ")


@pytest.mark.parametrize("model", [
    dict(image_channels=3, num_classes=1, base_filters=4, base_kernels=(3, 3), num_layers=2),
    dict(image_channels=1, num_classes=1, base_filters=8, base_kernels=(7, 7), num_layers=4),
    dict(image_channels=3, num_classes=4, base_filters=6, base_kernels=(9, 9), num_layers=5,
         dilation=(2, 2), rgb=True),
    dict(image_channels=3, num_classes=1, base_filters=4, base_kernels=(5, 5), num_layers=4,
         normalization=True, input_normalize=False),
    dict(image_channels=2, num_classes=7, base_filters=5, base_kernels=(3, 3), num_layers=3,
         normalization=True, dropout_rate=0.0, rgb=True),
])
def test_estimate_counts_the_built_models_parameters_and_layer_outputs(tmp_path, model):
    """The estimate is computed from the config alone; it must agree with the model it describes:
    the same parameters, and as activations the outputs of every layer (one sample)."""
    from flexunet.train import memory
    from flexunet.train.trainer import build_model

    keys = {k: v for k, v in model.items() if k != "rgb"}
    text = "[model]\nimage_width = 64\nimage_height = 64\n"
    text += "".join(f"{k} = {v!r}\n" for k, v in keys.items())
    if model.get("rgb"):
        colours = ", ".join(f"({c},0,0): {c}" for c in range(model["num_classes"]))
        text += "[mask]\nrgb_map = {" + colours + "}\n"
    path = tmp_path / CONFIG_FILENAME
    path.write_text(text)
    cfg = load_config(path)
    est = memory.estimate(cfg)
    built = build_model(cfg)
    assert est.parameters == built.count_params()
    outputs = sum(int(np.prod(layer.output.shape[1:])) for layer in built.layers)
    assert est.activations_per_sample == outputs


PROJECT_CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("projects/**/" + CONFIG_FILENAME))


def test_every_project_config_fits_and_summary_prints_its_estimate(monkeypatch):
    """The projects' configs (seed settings, reduced, demo) are not refused on a machine with 4 GiB
    available (the seeds' 125 M-parameter models need at least 2.5 GiB to train); ``flexunet
    summary`` of the small ones prints the estimate and the parameter count."""
    from flexunet.train import memory

    assert len(PROJECT_CONFIGS) >= 11, PROJECT_CONFIGS
    with monkeypatch.context() as patched:
        patched.setattr(memory, "available_memory", lambda: (4 << 30, 8 << 30))
        for path in PROJECT_CONFIGS:
            est = memory.check_training_memory(load_config(path))
            assert est.training_bytes < 3 << 30, (path, memory.gib(est.training_bytes))
    for path in PROJECT_CONFIGS:
        if "reduced" in path.parts or "demo" in path.parts:
            result = run("summary", path)
            check_result(result, 0)
            assert re.search(r"memory: .* GiB to train a batch of \d+", result.stdout), result.stdout
            assert result.stdout.rstrip().splitlines()[-1].startswith("parameters: ")


def test_running_out_of_memory_while_training_is_one_line(tmp_path, monkeypatch):
    """The estimate is a floor: if TensorFlow still runs out of memory, training ends with one line
    naming the config key to lower, exit 2, and the data is untouched."""
    from flexunet.train import trainer

    make_dataset(tmp_path / "data", kind="tiles", n_train=2, n_valid=1, n_test=1, size=32, n_mini=0)
    path = tmp_path / CONFIG_FILENAME
    path.write_text("[model]\nimage_width = 32\nimage_height = 32\nnum_layers = 3\nbase_filters = 2\n"
                    "[train]\nbatch_size = 2\nimage_datapath = './data/train/images'\n"
                    "mask_datapath = './data/train/masks'\n[eval]\nimage_datapath = './data/valid/images'\n"
                    "mask_datapath = './data/valid/masks'\n")
    data = snapshot(tmp_path / "data")

    class ResourceExhaustedError(Exception):
        pass

    def exhausted(*_, **__):
        raise ResourceExhaustedError("OOM when allocating tensor with shape[2,2,32,32]")

    monkeypatch.setattr(trainer, "_fit", exhausted)
    result = run("train", path)
    check_result(result, 2, path, "[train] batch_size", "out of memory", "OOM when allocating")
    assert snapshot(tmp_path / "data") == data


@pytest.mark.parametrize("what", ["loss", "metrics"])
def test_unknown_loss_or_metric_of_any_length_is_cut(what):
    """An unknown loss or metric is refused when training compiles the model, quoting the name cut."""
    from flexunet.train.losses import get_loss, get_metrics

    with pytest.raises(ValueError) as info:
        (get_loss if what == "loss" else get_metrics)("n" * 5000)
    assert "..." in str(info.value) and len(str(info.value)) < 400
