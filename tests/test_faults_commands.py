"""The bad-input table over every command (issue 15, "What to build"), odd images through
``infer``, and ``infer`` killed with SIGKILL then resumed.

:data:`ROWS` gives each command (synth, summary, train, evaluate, export, project, infer, parity, bench,
import, augment, tune) the bad inputs a user hits: a missing file, a folder where a file is expected, a corrupt or
truncated model (.onnx, .keras, .engine), a model that does not match its config or metadata, an
option out of range; each row states the exit code.  Every row checks: no traceback; stderr is the
one line ``error: ...`` naming the file (and the config section and key, or the option) -- or, for
what click refuses itself (an option's type or range, a folder given as MODEL), click's usage
message whose one ``error: ...`` line names it; nothing below the test's folder is written or changed:
no output folder, no partial file, and the earlier results each command would write over (made
beforehand) are byte for byte as they were.  A row whose command has an output folder (``OUT``)
runs twice: into a new folder, and into the folder of earlier results.

:data:`ODD_IMAGES` decides what ``infer`` does with each odd image: segment it when OpenCV decodes
it to an image (the mask has the size of what was decoded: a multi-page TIFF's first page), else
skip it by name (exit 3); odd names keep their name, a line break in one becomes ``_``, and every
report line stays one line.

Rows the other fault tests hold (test_faults_runtime, test_faults_models, test_faults_config,
test_cli_errors) are not repeated.  Runs are in process (click's CliRunner) but for the SIGKILL
test; rows that need a real Keras model are marked slow (one tiny model for the module).  Nothing
waits on the wall clock: a killed run is held at a chosen point by a file-based hook.
"""
from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from flexunet.cli import cli
from flexunet.core.errors import EXIT_OK, EXIT_SKIPPED, EXIT_USAGE
from flexunet.runtime.outputs import RECORD_DIR
from flexunet.runtime.segmenter import Segmenter
from flexunet.train.synth import make_dataset
from test_cli_errors import TINY_MODEL
from test_faults_config import fresh_cli_logging  # noqa: F401 -- autouse here too
from test_faults_models import with_metadata
from test_faults_runtime import (FLEXUNET, HANG_GUARD, HOLD_HOOK, assert_masks, png_bytes, temporary_files,
                                 wait_for)

pytestmark = pytest.mark.usefixtures("isolate_cli")


def _data(split: str) -> str:
    return f"image_datapath = './data/{split}/images'\nmask_datapath = './data/{split}/masks'\n"


#: proj's config: the 64x64 binary UNet of test_cli_errors, trained on proj/data, outputs in proj.
CONFIG = (TINY_MODEL + "[train]\nepochs = 1\nbatch_size = 2\nmodel_dir = './models'\neval_dir = './eval'\n"
          + _data("train") + "[eval]\n" + _data("valid") + "[test]\n" + _data("test"))

#: Earlier results each command would write over: file -> bytes (made in every scene).
EARLIER = {
    "earlier/img00.png": cv2.imencode(".png", np.full((50, 60), 255, np.uint8))[1].tobytes(),
    f"earlier/{RECORD_DIR}/img00.json": b'{"input": "img00.png"}\n',
    "earlier/parity.json": b'{"verdict": "pass"}\n',
    "earlier/bench.json": b'{"slides_per_s": 1.0}\n',
    "earlier/model.onnx": b"an earlier export\n",
    "earlier/export_report.json": b'{"artifacts": {}}\n',
    "proj/models/best_model.keras": b"an earlier model\n",
    "proj/eval/train_metrics.csv": b"epoch,dice_coef\n1,0.5\n",
    "proj/evaluation.csv": b"loss,0.5\n",
    "proj/results/results.json": b'{"earlier": true}\n',
    "proj/README.md": b"# earlier figures\n",
}
#: Where ``OUT`` points in a row's second run: that command's earlier results.
EARLIER_OUT = {"synth": "proj/data"}


# -- the scene: a folder of inputs, models, a project and earlier results ----------------------------------
def keras_archive_cut(path: Path) -> None:
    """A ``.keras`` archive (a zip of config.json and weights) cut in half, as a copy interrupted."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("config.json", json.dumps({"class_name": "Functional", "config": {}}))
        archive.writestr("model.weights.h5", np.random.default_rng(0).bytes(4096))
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2])


def build_scene(root: Path, make_onnx, make_images) -> None:
    """m.onnx and its damaged relatives, images in in/, a project in proj/ (config, data, earlier
    training results), earlier outputs in earlier/, and a file, a FIFO and folders with model names."""
    model = make_onnx("m.onnx")
    make_onnx("m4.onnx", classes=4)
    make_onnx("fixed.onnx", fixed=(64, 64))
    with_metadata(model, "two.onnx", num_classes=2, class_colors=[[0, 0, 0], [0, 0, 255]])  # the graph gives 1
    data = model.read_bytes()
    (root / "cut.onnx").write_bytes(data[: len(data) // 2])
    (root / "empty.onnx").write_bytes(b"")
    (root / "m.h5").write_bytes(data)
    (root / "m.pt").write_bytes(data)
    (root / "junk.engine").write_bytes(b"not a TensorRT engine")
    keras_archive_cut(root / "cut.keras")
    for name in ("mdir.onnx", "mdir.keras"):
        (root / name).mkdir()
    os.mkfifo(root / "pipe.config")
    (root / "afile").write_text("not a folder\n")
    make_images(root / "in", [(50, 60), (40, 30)])
    make_dataset(root / "proj" / "data", kind="tiles", size=64, n_train=2, n_valid=1, n_test=1, n_mini=0)
    (root / "proj" / "train_eval_infer.config").write_text(CONFIG)
    for name, content in EARLIER.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)


@pytest.fixture
def scene(tmp_path, make_onnx, make_images, monkeypatch) -> Path:
    """The scene's folder, also the working folder (rows name files relative to it)."""
    monkeypatch.chdir(tmp_path)
    build_scene(tmp_path, make_onnx, make_images)
    return tmp_path


@pytest.fixture(scope="module")
def keras_models(tmp_path_factory) -> list[Path]:
    """Two tiny Keras UNets for 64x64 inputs: k1.keras matches proj's config, k4.keras has 4
    output channels where the config says num_classes = 1."""
    from flexunet.core.console import import_tensorflow_quietly

    import_tensorflow_quietly()
    from flexunet.architectures.unet import build_unet

    folder = tmp_path_factory.mktemp("keras")
    for classes in (1, 4):
        build_unet(64, 64, 3, num_classes=classes, num_layers=2, base_filters=2).save(folder / f"k{classes}.keras")
    return sorted(folder.iterdir())


def tree(folder: Path) -> dict[str, object]:
    """Every entry below ``folder``: a regular file as (bytes, mtime), anything else by its type
    (a FIFO is never read)."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        regular = stat.S_ISREG(info.st_mode)
        entries[str(path.relative_to(folder))] = (path.read_bytes(), info.st_mtime_ns) if regular else \
            stat.S_IFMT(info.st_mode)
    return entries


def flexunet(*words):
    """``flexunet WORDS`` in this process."""
    return CliRunner().invoke(cli, [str(w) for w in words], prog_name="flexunet")


# -- the table ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """``line``: the command line, run in the scene (``OUT``: its output folder); ``named``: what the
    error line must contain; ``click``: refused by click itself; ``make``: a change to the scene;
    ``keras``: needs the tiny Keras models (copied to k1.keras and k4.keras; slow)."""

    case: str
    line: str
    named: tuple[str, ...]
    code: int = EXIT_USAGE
    click: bool = False
    make: Callable[[Path], None] | None = None
    keras: bool = False

    @property
    def command(self) -> str:
        return self.line.split()[0]


def _remove(name: str) -> Callable[[Path], None]:
    return lambda root: (root / name).unlink()


def _mask_40x40(name: str) -> Callable[[Path], None]:
    return lambda root: cv2.imwrite(str(root / name), np.zeros((40, 40), np.uint8))


def _garbage(name: str) -> Callable[[Path], None]:
    return lambda root: (root / name).write_bytes(b"\x89PNG\r\n\x1a\n garbage")


def _undecodable(name: str) -> Callable[[Path], None]:
    """A PNG whose header says 64x64 but whose data cannot be decoded: found only while reading."""
    return lambda root: (root / name).write_bytes(png_bytes(64, 64, zlib.compress(b"\0" * 10)))


def _config_elsewhere(root: Path) -> None:
    (root / "other").mkdir()
    (root / "other" / "train_eval_infer.config").write_text(CONFIG)


QUICK_BENCH = "--repeat 1 --warmup 0 --runs 1 --batch-sizes 1"
CFG = "proj/train_eval_infer.config"
K4 = "k4.keras: the model gives 4 output channels"

ROWS = [
    # synth OUT
    Row("parent-is-a-file", "synth afile/ds", ("afile/ds", "Not a directory")),
    Row("size-out-of-range", "synth OUT --size 8", ("'--size'", "8"), click=True),
    Row("count-out-of-range", "synth OUT --valid 0", ("'--valid'", "0"), click=True),
    Row("unknown-kind", "synth OUT --kind cells", ("'--kind'", "cells"), click=True),
    # summary CONFIG
    Row("config-in-the-folder-is-a-folder", "summary cfg", ("cfg/train_eval_infer.config", "Is a directory"),
        make=lambda root: (root / "cfg" / "train_eval_infer.config").mkdir(parents=True)),
    Row("parent-is-a-file", "summary afile/train_eval_infer.config", ("afile/train_eval_infer.config",
                                                                    "Not a directory")),
    Row("config-is-a-fifo", "summary pipe.config", ("pipe.config", "not a regular file")),
    # train CONFIG
    Row("missing-config", "train nope.config", ("nope.config", "config file not found")),
    Row("config-is-a-fifo", "train pipe.config", ("pipe.config", "not a regular file")),
    Row("image-without-mask", "train proj", ("proj/train_eval_infer.config", "[train] mask_datapath",
                                             "train/images/0001.png", "no mask"),
        make=_remove("proj/data/train/masks/0001.png")),
    Row("mask-of-another-size", "train proj", ("train/masks/0001.png", "mask size 40x40", "64x64"),
        make=_mask_40x40("proj/data/train/masks/0001.png")),
    Row("validation-image-corrupt", "train proj", ("valid/images/0000.png", "cannot decode"),
        make=_garbage("proj/data/valid/images/0000.png")),
    Row("data-root-is-a-file", "train proj --data-root afile", ("afile", "--data-root")),
    Row("epochs-out-of-range", "train proj --epochs 0", ("'--epochs'",), click=True),
    # evaluate CONFIG
    Row("model-is-a-folder", "evaluate proj --model mdir.keras", ("mdir.keras", "a folder, not a model file")),
    Row("truncated-keras", "evaluate proj --model cut.keras", ("cut.keras", "not a Keras archive")),
    Row("onnx-given-as-model", "evaluate proj --model m.onnx", ("m.onnx", "not a Keras archive")),
    Row("config-is-a-fifo", "evaluate pipe.config --model cut.keras", ("pipe.config", "not a regular file")),
    Row("test-image-corrupt", "evaluate proj --model cut.keras", ("test/images/0000.png", "cannot decode"),
        make=_garbage("proj/data/test/images/0000.png")),
    Row("test-mask-of-another-size", "evaluate proj --model cut.keras", ("test/masks/0000.png", "mask size"),
        make=_mask_40x40("proj/data/test/masks/0000.png")),
    Row("test-image-undecodable-past-its-header", "evaluate proj --model k1.keras",
        ("test/images/0000.png", "cannot decode"), make=_undecodable("proj/data/test/images/0000.png"), keras=True),
    Row("model-classes-vs-config", "evaluate proj --model k4.keras",
        ("k4.keras", "4 output channels", "num_classes = 1", "train_eval_infer.config"), keras=True),
    # export MODEL -o OUT
    Row("missing-model", "export nope.keras -o OUT", ("nope.keras", "no such model file")),
    Row("model-is-a-folder", "export mdir.keras -o OUT", ("mdir.keras", "a folder, not a model file")),
    Row("truncated-keras", "export cut.keras -o OUT --config proj", ("cut.keras", "not a Keras archive")),
    Row("onnx-given-as-model", "export m.onnx -o OUT --config proj", ("m.onnx", "not a Keras archive")),
    Row("no-config-beside-the-model", "export cut.keras -o OUT", ("cut.keras", "--config")),
    Row("config-is-a-fifo", "export cut.keras -o OUT --config pipe.config", ("pipe.config", "not a regular file")),
    Row("batch-sizes-out-of-order", "export cut.keras -o OUT --min-batch 4 --max-batch 2",
        ("--min-batch", "--max-batch", "4, 4, 2")),
    Row("opset-out-of-range", "export cut.keras -o OUT --opset 12", ("'--opset'", "12"), click=True),
    Row("int8-without-calibration", "export cut.keras -o OUT --int8", ("--int8", "--calibration-images")),
    Row("calibration-folder-missing", "export cut.keras -o OUT --int8 --calibration-images nope",
        ("nope", "calibration folder")),
    Row("out-is-a-file", "export cut.keras -o afile", ("afile", "output folder")),
    Row("model-classes-vs-config", "export k4.keras -o OUT --config proj",
        ("k4.keras", "does not match", "4 output channels vs num_classes 1"), keras=True),
    # project PROJECT
    Row("missing-folder", "project nope", ("nope/train_eval_infer.config", "no such config")),
    Row("config-outside-the-project", "project proj --config other/train_eval_infer.config",
        ("other/train_eval_infer.config", "outside the project folder"), make=_config_elsewhere),
    Row("data-root-missing", "project proj --data-root nope", ("nope", "--data-root")),
    Row("corrupt-model-with-skip-train", "project proj --skip-train",
        ("proj/models/best_model.keras", "not a Keras archive")),
    Row("epochs-out-of-range", "project proj --epochs 0", ("'--epochs'",), click=True),
    Row("summary-and-a-project", "project proj --summary proj", ("--summary",), click=True),
    # infer MODEL INPUT -o OUT
    Row("missing-model", "infer nope.onnx in -o OUT", ("nope.onnx", "no such model file")),
    Row("model-is-a-folder", "infer mdir.onnx in -o OUT", ("'MODEL'", "mdir.onnx", "is a directory"), click=True),
    Row("truncated-onnx", "infer cut.onnx in -o OUT", ("cut.onnx", "not a readable ONNX model")),
    Row("empty-onnx", "infer empty.onnx in -o OUT", ("empty.onnx", "not a readable ONNX model")),
    Row("truncated-keras", f"infer cut.keras in -o OUT --config {CFG}", ("cut.keras", "not a Keras archive")),
    Row("corrupt-engine", "infer junk.engine in -o OUT", ("junk.engine",)),
    Row("unsupported-model-type", "infer m.pt in -o OUT", ("m.pt", "unsupported model type")),
    Row("h5-not-hdf5", f"infer m.h5 in -o OUT --config {CFG}", ("m.h5", "not an HDF5 file")),
    Row("h5-without-config", "infer m.h5 in -o OUT", ("m.h5", "pass --config")),
    Row("backend-for-another-model-type", "infer m.onnx in -o OUT --backend keras", ("m.onnx", ".keras models only")),
    Row("config-with-an-onnx-model", f"infer m.onnx in -o OUT --config {CFG}", ("--config", ".keras models only")),
    Row("keras-config-missing", "infer cut.keras in -o OUT --config nope.config", ("nope.config", "not found")),
    Row("metadata-classes-vs-graph", "infer two.onnx in -o OUT", ("two.onnx", "1 output channels", "2 class(es)")),
    Row("keras-classes-vs-config", f"infer k4.keras in -o OUT --config {CFG}", (K4, "1 class(es)"), keras=True),
    Row("tile-of-a-fixed-model", "infer fixed.onnx in -o OUT --tile 32", ("fixed.onnx", "fixed at 64x64")),
    Row("whole-with-a-fixed-model", "infer fixed.onnx in -o OUT --whole", ("fixed.onnx", "--whole")),
    Row("overlap-not-below-the-tile", "infer m.onnx in -o OUT --tile 64 --overlap 64", ("m.onnx", "overlap", "64")),
    Row("batch-size-out-of-range", "infer m.onnx in -o OUT --batch-size 0", ("'--batch-size'",), click=True),
    Row("threshold-out-of-range", "infer m.onnx in -o OUT --threshold 1.5", ("'--threshold'",), click=True),
    Row("tile-malformed", "infer m.onnx in -o OUT --tile 0x64", ("'--tile'", "0x64"), click=True),
    Row("out-is-a-file", "infer m.onnx in -o afile", ("afile", "is a file"), click=True),
    # parity IMAGES --reference M --candidate M -o OUT
    Row("missing-reference", "parity in --reference nope.onnx --candidate m.onnx -o OUT",
        ("nope.onnx", "no such model file")),
    Row("reference-is-a-folder", "parity in --reference mdir.onnx --candidate m.onnx -o OUT",
        ("mdir.onnx", "a folder, not a model file")),
    Row("truncated-candidate", "parity in --reference m.onnx --candidate cut.onnx -o OUT",
        ("cut.onnx", "not a readable ONNX model")),
    Row("corrupt-engine-candidate", "parity in --reference m.onnx --candidate junk.engine -o OUT", ("junk.engine",)),
    Row("classes-differ", "parity in --reference m.onnx --candidate m4.onnx -o OUT", ("m4.onnx", "4 classes")),
    Row("metadata-classes-vs-graph", "parity in --reference m.onnx --candidate two.onnx -o OUT",
        ("two.onnx", "2 class(es)")),
    Row("keras-reference-vs-config", f"parity in --reference k4.keras --candidate m.onnx --config {CFG} -o OUT",
        (K4,), keras=True),
    Row("min-dice-out-of-range", "parity in --reference m.onnx --candidate m.onnx --min-dice 1.5 -o OUT",
        ("--min-dice", "1.5")),
    Row("min-dice-unknown-precision", "parity in --reference m.onnx --candidate m.onnx --min-dice int4=0.9 -o OUT",
        ("--min-dice int4=", "no candidate has precision 'int4'", "fp32, fp16, int8")),
    Row("masks-is-a-file", "parity in --reference m.onnx --candidate m.onnx --masks afile -o OUT",
        ("'--masks'", "afile"), click=True),
    # bench MODEL IMAGES -o OUT
    Row("missing-model", f"bench nope.onnx in -o OUT {QUICK_BENCH}", ("nope.onnx", "no such model file")),
    Row("model-is-a-folder", f"bench mdir.onnx in -o OUT {QUICK_BENCH}", ("'MODEL'", "mdir.onnx"), click=True),
    Row("truncated-onnx", f"bench cut.onnx in -o OUT {QUICK_BENCH}", ("cut.onnx", "not a readable ONNX model")),
    Row("corrupt-engine", f"bench junk.engine in -o OUT {QUICK_BENCH}", ("junk.engine",)),
    Row("metadata-classes-vs-graph", f"bench two.onnx in -o OUT {QUICK_BENCH}", ("two.onnx", "2 class(es)")),
    Row("keras-classes-vs-config", f"bench k4.keras in -o OUT --config {CFG} {QUICK_BENCH}", (K4,), keras=True),
    Row("seed-baseline-without-keras", f"bench m.onnx in -o OUT --baseline seed {QUICK_BENCH}",
        ("--baseline seed", "--keras")),
    Row("keras-option-not-keras", f"bench m.onnx in -o OUT --baseline seed --keras m.onnx {QUICK_BENCH}",
        ("m.onnx", "--keras")),
    Row("overlap-not-below-the-tile", f"bench m.onnx in -o OUT {QUICK_BENCH} --tile 64 --overlap 64",
        ("m.onnx", "overlap")),
    Row("batch-sizes-out-of-range", f"bench m.onnx in -o OUT {QUICK_BENCH} --batch-sizes 0",
        ("'--batch-sizes'", "'0'"), click=True),
    # import MODEL -o OUT.keras
    Row("missing-model", f"import nope.h5 -o new.keras --config {CFG}", ("nope.h5", "no such model file")),
    Row("not-a-seed-model-suffix", f"import m.onnx -o new.keras --config {CFG}", ("m.onnx", ".h5")),
    Row("h5-not-hdf5", f"import m.h5 -o new.keras --config {CFG}", ("m.h5", "not an HDF5 file")),
    Row("h5-without-config", "import m.h5 -o new.keras", ("m.h5", "pass --config")),
    Row("output-not-keras", f"import m.h5 -o new.onnx --config {CFG}", ("new.onnx", ".keras")),
    # augment CONFIG
    Row("missing-config", "augment nope.config", ("nope.config", "config file not found")),
    Row("config-is-a-fifo", "augment pipe.config", ("pipe.config", "not a regular file")),
    Row("samples-out-of-range", "augment proj -n 0", ("'-n'",), click=True),
    # tune MODEL --images DIR
    Row("truncated-onnx", "tune cut.onnx --images in", ("cut.onnx", "not a readable ONNX model")),
    Row("images-missing", "tune m.onnx --images nope", ("'--images'", "nope"), click=True),
]
COMMANDS = ("synth", "summary", "train", "evaluate", "export", "project", "infer", "parity", "bench",
            "import", "augment", "tune")


def _params() -> list:
    return [pytest.param(row, id=f"{row.command}-{row.case}", marks=[pytest.mark.slow] if row.keras else [])
            for row in ROWS]


def test_the_table_covers_every_command():
    assert {row.command for row in ROWS} == set(COMMANDS)
    assert len({(row.command, row.case) for row in ROWS}) == len(ROWS)


def check_refused(result, row: Row) -> str:
    """Exit code, no traceback, and stderr: one ``error:`` line naming what the row says (a usage
    error also says where the command's help is); returns that line."""
    assert result.exit_code == row.code, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.rstrip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    if row.click:
        assert lines[0].endswith(f"(see 'flexunet {row.command} --help')"), lines[0]
    for fragment in row.named:
        assert fragment in lines[-1], (fragment, lines[-1])
    return lines[-1]


@pytest.mark.parametrize("row", _params())
def test_bad_input_to_every_command(row: Row, scene: Path, request):
    """Refused in one line naming the file; nothing below the scene's folder changes, into a new
    output folder or into one of earlier results."""
    for model in request.getfixturevalue("keras_models") if row.keras else ():
        (scene / model.name).write_bytes(model.read_bytes())
    if row.make is not None:
        row.make(scene)
    outs = ("fresh", EARLIER_OUT.get(row.command, "earlier")) if " OUT" in row.line else (None,)
    for out in outs:
        before = tree(scene)
        words = [out if word == "OUT" else word for word in row.line.split()]
        check_refused(flexunet(*words), row)
        assert tree(scene) == before, f"{row.line} (OUT={out}) changed files"
    for name, content in EARLIER.items():
        assert (scene / name).read_bytes() == content


@pytest.mark.slow
def test_an_image_undecodable_past_its_header_stops_training_in_one_line(scene: Path):
    """Found only when training reads it (TensorFlow wraps the error in one of its own, with a
    traceback): one line naming the file, exit 2; the earlier model and curves are kept (the run's
    record and config copy are written when training starts)."""
    _undecodable("proj/data/train/images/0001.png")(scene)
    check_refused(flexunet("train", "proj"), Row("", "train proj", ("train/images/0001.png", "cannot decode")))
    for name in ("proj/models/best_model.keras", "proj/eval/train_metrics.csv"):
        assert (scene / name).read_bytes() == EARLIER[name], name


# -- odd images through infer ----------------------------------------------------------------------------------
def _pixels(seed: int = 3, size=(40, 50)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _cv2_write(ext: str, convert=lambda bgr: bgr) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(cv2.imencode(ext, convert(_pixels()))[1].tobytes())


def _pil_save(mode: str, fmt: str) -> Callable[[Path], None]:
    from PIL import Image

    return lambda path: Image.fromarray(_pixels()[..., ::-1]).convert(mode).save(path, format=fmt)


def _multi_page_tiff(path: Path) -> None:
    pages = [_pixels(1, (40, 50)), _pixels(2, (30, 20))]  # the first page decides the mask's size
    assert cv2.imwritemulti(str(path), pages)


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


SEGMENTED, SKIPPED = "segmented", "skipped"
#: case: (file name, how it is made, what infer does: SEGMENTED or SKIPPED plus the skip reason;
#: None: segmented when OpenCV decodes it, else skipped as undecodable).
ODD_IMAGES = {
    "png-16-bit": ("deep.png", _cv2_write(".png", lambda im: im.astype(np.uint16) * 257), SEGMENTED),
    "png-16-bit-gray": ("deep_gray.png", _cv2_write(".png", lambda im: im[..., 0].astype(np.uint16) * 257),
                        SEGMENTED),
    "png-rgba": ("alpha.png", _cv2_write(".png", lambda im: np.dstack([im, np.full(im.shape[:2], 9, np.uint8)])),
                 SEGMENTED),
    "png-gray": ("gray.png", _cv2_write(".png", lambda im: im[..., 1]), SEGMENTED),
    "jpeg-gray": ("gray.jpg", _cv2_write(".jpg", lambda im: im[..., 1]), SEGMENTED),
    "png-palette": ("palette.png", _pil_save("P", "PNG"), SEGMENTED),
    "png-1-bit": ("bilevel.png", _pil_save("1", "PNG"), SEGMENTED),
    "one-pixel": ("dot.png", _cv2_write(".png", lambda im: im[:1, :1]), SEGMENTED),
    "one-row": ("row.png", _cv2_write(".png", lambda im: im[:1]), SEGMENTED),
    "tiff-multi-page": ("pages.tif", _multi_page_tiff, SEGMENTED),
    "gif-named-png": ("anim.png", _pil_save("P", "GIF"), None),
    "zero-bytes": ("zero.png", _bytes(b""), (SKIPPED, "zero.png: empty file")),
    "text-named-jpg": ("notes.jpg", _bytes(b"hello, I am not a JPEG\n"), (SKIPPED, "notes.jpg: cannot decode")),
    "name-with-spaces": ("a slide 01.png", _cv2_write(".png"), SEGMENTED),
    "name-unicode": ("細胞 ünïcødé.png", _cv2_write(".png"), SEGMENTED),
    "name-leading-dash": ("-slide.png", _cv2_write(".png"), SEGMENTED),
    "name-with-a-line-break": ("two\nlines.png", _cv2_write(".png"), SEGMENTED),
    "corrupt-with-a-line-break": ("bad\nname.png", _bytes(b"\x89PNG\r\n\x1a\n junk"),
                                  (SKIPPED, r"bad\nname.png: cannot decode")),
}


def _expected(path: Path, outcome):
    """(SEGMENTED, decoded (h, w)) or (SKIPPED, reason fragment) for an input."""
    if outcome is None:  # what OpenCV makes of it decides
        decoded = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
        outcome = SEGMENTED if decoded is not None else (SKIPPED, f"{path.name}: cannot decode")
    if outcome == SEGMENTED:
        return SEGMENTED, cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR).shape[:2]
    return outcome


def _mask_name(name: str) -> str:
    return Path(name).stem.replace("\n", "_") + ".png"


def assert_no_broken_lines(result) -> None:
    """No line of the output is the tail of a file name broken by its line break."""
    lines = result.stdout.splitlines() + result.stderr.splitlines()
    assert not [line for line in lines if line.startswith(("name.png", "lines.png"))], result.output


@pytest.mark.parametrize("case", list(ODD_IMAGES))
def test_odd_images_are_segmented_or_skipped_by_name(case, make_onnx, make_images, tmp_path):
    """A folder of one good image and the odd one: exit 0 with a mask of the decoded size, or exit
    3 with the odd one skipped in one line naming it; the good image is done either way; every
    line of the report is one line; no temporary file."""
    name, make, outcome = ODD_IMAGES[case]
    inp = tmp_path / "in"
    make_images(inp, [(36, 44)])
    make(inp / name)
    kind, detail = _expected(inp / name, outcome)
    result = flexunet("infer", make_onnx(), inp, "-o", tmp_path / "out")
    assert result.exit_code == (EXIT_OK if kind == SEGMENTED else EXIT_SKIPPED), (result.output, result.exception)
    assert "Traceback" not in result.output and "libpng" not in result.stderr
    assert_masks(tmp_path / "out", ["img00.png"], [(36, 44)])
    progress = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert len(progress) == 2, result.stderr  # one line per input, whatever its name
    assert_no_broken_lines(result)
    if kind == SEGMENTED:
        assert_masks(tmp_path / "out", [_mask_name(name)], [detail])
        assert "done 2, skipped 0" in result.stdout
    else:
        skipped = [line for line in result.stdout.splitlines() if line.startswith("skipped: ")]
        assert len(skipped) == 1 and detail in skipped[0], (detail, result.stdout)
        assert not (tmp_path / "out" / _mask_name(name)).exists()
    assert temporary_files(tmp_path / "out") == []


def test_a_name_with_a_leading_dash_on_the_command_line(make_onnx, tmp_path, monkeypatch):
    """After ``--`` a name starting with a dash is an input, not an option."""
    monkeypatch.chdir(tmp_path)
    _cv2_write(".png")(tmp_path / "-x.png")
    result = flexunet("infer", make_onnx(), "-o", "out", "--", "-x.png")
    assert result.exit_code == EXIT_OK, result.output
    assert_masks(tmp_path / "out", ["-x.png"], [(40, 50)])


def _palette_pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))[..., ::-1]


#: case: the 8-bit BGR pixels the file holds, known without OpenCV (16-bit: each value times 257).
SAME_PIXELS = {
    "png-16-bit": lambda path: _pixels(),
    "png-rgba": lambda path: _pixels(),
    "png-gray": lambda path: np.repeat(_pixels()[..., 1:2], 3, axis=2),
    "png-palette": _palette_pixels,
    "tiff-multi-page": lambda path: _pixels(1, (40, 50)),
}


def test_odd_formats_are_segmented_from_the_pixels_they_hold(make_onnx, tmp_path):
    """16 bits scaled to 8, alpha dropped, gray and palette made BGR, a TIFF's first page: each mask
    equals the mask of the 8-bit BGR pixels the file holds."""
    folder = tmp_path / "in"
    folder.mkdir()
    for case in SAME_PIXELS:
        name, make, _ = ODD_IMAGES[case]
        make(folder / name)
    model = make_onnx()
    assert flexunet("infer", model, folder, "-o", tmp_path / "out").exit_code == EXIT_OK
    with Segmenter(model) as seg:
        for case, pixels in SAME_PIXELS.items():
            name = ODD_IMAGES[case][0]
            written = cv2.imread(str(tmp_path / "out" / _mask_name(name)), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(written, seg.segment(pixels(folder / name)).mask), case


ODD_FOLDER = ("png-16-bit", "png-palette", "name-with-a-line-break", "zero-bytes", "corrupt-with-a-line-break")


def _odd_folder(folder: Path) -> None:
    folder.mkdir()
    for case in ODD_FOLDER:
        name, make, _ = ODD_IMAGES[case]
        make(folder / name)


def _one_line_skips(result) -> None:
    """The two unreadable inputs are reported by name, one line each."""
    skipped = [line for line in result.stdout.splitlines() if line.startswith("skipped: ")]
    assert [line.split(": ", 2)[1].rsplit("/", 1)[-1] for line in skipped] == ["bad\\nname.png", "zero.png"], \
        result.stdout
    assert_no_broken_lines(result)


def test_odd_images_through_parity(make_onnx, tmp_path):
    """Parity scores what decodes and skips the rest by name, in one line each (exit 3)."""
    _odd_folder(tmp_path / "in")
    model = make_onnx()
    result = flexunet("parity", tmp_path / "in", "--reference", model, "--candidate", model, "-o", tmp_path / "r")
    assert result.exit_code == EXIT_SKIPPED, (result.output, result.exception)
    _one_line_skips(result)
    images = json.loads((tmp_path / "r" / "parity.json").read_text())["images"]
    assert (images["total"], images["compared"], len(images["skipped"])) == (5, 3, 2)


def test_odd_images_through_bench(make_onnx, tmp_path):
    _odd_folder(tmp_path / "in")
    result = flexunet("bench", make_onnx(), tmp_path / "in", "-o", tmp_path / "r", *QUICK_BENCH.split())
    assert result.exit_code == EXIT_SKIPPED, (result.output, result.exception)
    _one_line_skips(result)
    assert json.loads((tmp_path / "r" / "bench.json").read_text())["end_to_end"]["slides"] == 3


# -- SIGKILL, then --resume ------------------------------------------------------------------------------------
RENAME_HOOK = '''
import os, time
from pathlib import Path

_rename_into_place = os.replace


def replace(src, dst, *args, **kwargs):
    """Stop for good once the temporary file of the output named $HOLD_AT is complete, before
    it gets its name (the test kills the process there)."""
    if Path(dst).name == os.environ["HOLD_AT"]:
        Path(os.environ["HELD"]).touch()
        while True:
            time.sleep(0.01)
    return _rename_into_place(src, dst, *args, **kwargs)


os.replace = replace
'''
#: where the run is when it is killed: (hook, HOLD_AT, file that must exist in OUT before the kill)
KILL_POINTS = {
    "reading-the-6th-input": (HOLD_HOOK, "img05.png", "img00.png"),
    "renaming-a-finished-temporary-file": (RENAME_HOOK, "img03.png", "img00.png"),
}
KILL_SIZE = (90, 90)


def records(out: Path) -> list[Path]:
    """The resume records in ``out`` (not their temporary files, which are hidden)."""
    return [p for p in (out / RECORD_DIR).glob("*.json") if not p.name.startswith(".")]


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_resume_gives_whole_masks_and_no_temporary_file(point, make_onnx, make_images, tmp_path):
    """``flexunet infer`` killed with SIGKILL mid-run (held at a chosen point, killed once its first
    mask exists): every mask on disk is whole or absent; ``--resume`` finishes the run, removes the
    temporary files left behind and gives the masks a clean run gives."""
    hook, hold_at, first = KILL_POINTS[point]
    make_images(tmp_path / "in", [KILL_SIZE] * 10)
    model = make_onnx()
    assert flexunet("infer", model, tmp_path / "in", "-o", tmp_path / "clean").exit_code == EXIT_OK
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(hook)
    out, held = tmp_path / "out", tmp_path / "held"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "hook"), "HOLD_AT": hold_at, "HELD": str(held),
           "RELEASE": str(tmp_path / "never")}
    command = [str(FLEXUNET)] if FLEXUNET.exists() else [sys.executable, "-m", "flexunet"]
    run = subprocess.Popen([*command, "infer", str(model), str(tmp_path / "in"), "-o", str(out),
                            "--batch-size", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(held, run)
        wait_for(out / first, run)
        run.send_signal(signal.SIGKILL)
        assert run.wait(HANG_GUARD) == -signal.SIGKILL
    finally:
        run.kill()
        run.stderr.close()
    left = sorted(p.name for p in out.glob("img*.png"))
    assert first in left and len(left) < 10
    assert_masks(out, left, [KILL_SIZE] * len(left))  # what has its name is whole
    if point.startswith("renaming"):
        assert [p.name.startswith(f".{hold_at}.") for p in temporary_files(out)] == [True]
    recorded = len(records(out))

    again = flexunet("infer", model, tmp_path / "in", "-o", out, "--batch-size", "1", "--resume")
    assert again.exit_code == EXIT_OK, again.output
    assert f"done {10 - recorded}, skipped 0, resumed {recorded}" in again.stdout, again.stdout
    assert temporary_files(out) == []
    names = [f"img{i:02d}.png" for i in range(10)]
    assert_masks(out, names, [KILL_SIZE] * 10)
    for name in names:
        assert np.array_equal(cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED),
                              cv2.imread(str(tmp_path / "clean" / name), cv2.IMREAD_UNCHANGED)), name
    assert len(records(out)) == 10
