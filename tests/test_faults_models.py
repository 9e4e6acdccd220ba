"""Bad input and faults around models (issue 15): damaged and out-of-range ONNX metadata, tiles
too large for memory, ground truth that matches nothing, a benchmark with no readable image, an
empty ``.keras`` archive, and Ctrl-C at any moment of a run.

Each table row states the exit code; every row checks: no traceback, the error is one line naming
the file (and the metadata key or option), nothing is written by a refused command, and earlier
results are left as they were.  Runs that could allocate a huge tile are made in a process whose
address space is limited (:data:`LIMIT_AS`), so a regression fails with an error instead of eating
the machine's memory.  Nothing waits on the wall clock: subprocesses are waited for with
:data:`HANG_GUARD` only so that a hang fails instead of blocking the suite.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from flexunet.cli import cli
from flexunet.core import machine
from flexunet.core.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_SKIPPED, EXIT_USAGE, FlexunetError, ModelError
from flexunet.core.imageio import write_image
from flexunet.core.modelinfo import METADATA_KEY, ModelInfo
from flexunet.runtime.layout import FIT, check_memory, resolve_layout, tile_memory

pytestmark = pytest.mark.usefixtures("isolate_cli")

HANG_GUARD = 120.0        # seconds: never reached when the code works
LIMIT_AS = 4 << 30        # address space of the memory-limited runs (bytes)
TINY_CONFIG = "[model]\nimage_width = 64\nimage_height = 64\nimage_channels = 3\nnum_layers = 3\nbase_filters = 4\n"


# -- helpers ---------------------------------------------------------------------------------------------
def flexunet(*args):
    """``flexunet ARGS`` in this process (click's CliRunner)."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def flexunet_limited(*args, cwd: Path, available: int | None = None) -> subprocess.CompletedProcess:
    """``flexunet ARGS`` in a process whose address space is limited to :data:`LIMIT_AS` (and whose
    available memory is said to be ``available`` bytes, when given)."""
    code = ("import resource, sys\n"
            f"resource.setrlimit(resource.RLIMIT_AS, ({LIMIT_AS}, {LIMIT_AS}))\n"
            + (f"import flexunet.core.machine as m; m.available_memory = lambda: {available}\n" if available else "")
            + "from flexunet.cli import main\n"
            "main(sys.argv[1:])\n")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=HANG_GUARD, cwd=cwd)


def assert_one_line_error(code: int, stderr: str, expected: int, *fragments) -> str:
    """Exit ``expected``, the last stderr line is the only ``error:`` line and names ``fragments``."""
    assert code == expected, (code, stderr)
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and stderr.splitlines()[-1] == errors[0], stderr
    for fragment in fragments:
        assert str(fragment) in errors[0], (fragment, errors[0])
    return errors[0]


def with_metadata(model: Path, name: str, *, drop: tuple = (), document: str | None = None, **values) -> Path:
    """A copy of ``model`` whose flexunet metadata has ``values`` written as they are (``drop``:
    keys removed; ``document``: the whole metadata text) -- what a damaged or foreign file holds."""
    proto = onnx.load(str(model))
    props = {p.key: p.value for p in proto.metadata_props}
    info = json.loads(props[METADATA_KEY])
    info.update(values)
    for key in drop:
        info.pop(key)
    props[METADATA_KEY] = document if document is not None else json.dumps(info)
    del proto.metadata_props[:]
    helper.set_model_props(proto, props)
    path = model.with_name(name)
    onnx.save(proto, str(path))
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- item 8: metadata is checked on load -------------------------------------------------------------------
METADATA_CASES = {  # case: (metadata written as it is, the key the error names)
    "multiple-0": (dict(multiple=0), "'multiple'"),
    "overlap-negative": (dict(overlap=-5), "'overlap'"),
    "tile-0x0": (dict(tile=[0, 0]), "'tile'"),
    "tile-one-number": (dict(tile=[64]), "'tile'"),
    "tile-text": (dict(tile="big"), "'tile'"),
    "threshold-text": (dict(threshold="high"), "'threshold'"),
    "threshold-above-1": (dict(threshold=1.5), "'threshold'"),
    "threshold-bool": (dict(threshold=True), "'threshold'"),
    "colors-short": (dict(class_colors=[[0, 0, 0]]), "'class_colors'"),
    "colors-malformed": (dict(class_colors=[[0, 0], "x"]), "'class_colors'"),
    "colors-out-of-range": (dict(class_colors=[[0, 0, 0], [300, 0, 0]]), "'class_colors'"),
    "colors-not-a-list": (dict(class_colors=7), "'class_colors'"),
    "classes-0": (dict(num_classes=0), "'num_classes'"),
    "height-text": (dict(height="64"), "'height'"),
    "channels-missing": (dict(drop=("channels",)), "'channels'"),
    "channels-vs-preprocess": (dict(channels=1), "'channels'"),
    "blend-unknown": (dict(blend="linear"), "'blend'"),
    "blend-very-long": (dict(blend="b" * 10000), "'blend'"),  # the value is cut in the error
    "scale-text": (dict(preprocess={"scale": "x"}), "'preprocess'"),
    "preprocess-channels-2": (dict(preprocess={"channels": 2}), "'preprocess'"),
    "names-not-text": (dict(class_names=[1, 2]), "'class_names'"),
    "not-an-object": (dict(document="[1, 2]"), "unreadable flexunet metadata"),
    "not-json": (dict(document="{tile:"), "unreadable flexunet metadata"),
}


@pytest.mark.parametrize("case", list(METADATA_CASES))
def test_bad_metadata_is_one_line_before_any_output(case, make_onnx, make_images, tmp_path):
    """Exit 2 naming the model file and the key; no output folder is made; a folder of earlier
    results (resumed into) is left byte for byte."""
    values, key = METADATA_CASES[case]
    make_images(tmp_path / "in", [(90, 120), (40, 30)])
    good = make_onnx()
    earlier = tmp_path / "earlier"
    assert flexunet("infer", good, tmp_path / "in", "-o", earlier, "--colorize").exit_code == EXIT_OK
    before = snapshot(earlier)
    bad = with_metadata(good, "bad.onnx", **values)

    for out, extra in ((tmp_path / "out", ()), (earlier, ("--resume",))):
        result = flexunet("infer", bad, tmp_path / "in", "-o", out, "--colorize", *extra)
        line = assert_one_line_error(result.exit_code, result.stderr, EXIT_USAGE, bad, key)
        assert len(line) < len(str(bad)) + 200, line
    assert not (tmp_path / "out").exists()
    assert snapshot(earlier) == before


@pytest.mark.parametrize("command", ["parity-reference", "parity-candidate", "bench"])
@pytest.mark.parametrize("case", ["multiple-0", "colors-short"])
def test_bad_metadata_refused_by_parity_and_bench_before_any_report(command, case, make_onnx, make_images,
                                                                    tmp_path):
    values, key = METADATA_CASES[case]
    make_images(tmp_path / "in", [(64, 80)])
    good = make_onnx()
    bad = with_metadata(good, "bad.onnx", **values)
    reports = tmp_path / "reports"
    args = {"parity-reference": ("parity", "--reference", bad, "--candidate", good),
            "parity-candidate": ("parity", "--reference", good, "--candidate", bad),
            "bench": ("bench", bad, "--repeat", 1, "--warmup", 0, "--runs", 1)}[command]
    result = flexunet(*args, tmp_path / "in", "-o", reports)
    assert_one_line_error(result.exit_code, result.stderr, EXIT_USAGE, bad, key)
    assert not reports.exists()


def test_check_names_the_first_bad_key_and_passes_good_metadata():
    ok = ModelInfo(height=None, width=None, channels=3, num_classes=4,
                   class_colors=[(0, 0, 0)] * 4, class_names=["a", "b", "c", "d"])
    assert ok.check("m.onnx") is ok
    assert ModelInfo.from_json(ok.to_json(), "m.onnx") == ok
    with pytest.raises(ModelError, match=r"^m\.onnx: metadata key 'class_colors': 2 colour\(s\) for 4 labels"):
        ModelInfo.from_json(ModelInfo(None, None, 3, 4).to_json(), "m.onnx")


# -- item 9: tile batches that cannot fit in memory -------------------------------------------------------
def test_tile_memory_counts_batch_probabilities_and_canvas(monkeypatch):
    area = 100 * 200
    assert tile_memory((200, 200), 3, 1, 4) == 2 * tile_memory((100, 200), 3, 1, 4)
    assert tile_memory((100, 200), 3, 1, 5) - tile_memory((100, 200), 3, 1, 4) == area * (3 + 1) * 4  # float32
    assert tile_memory((100, 200), 3, 4, 1) > tile_memory((100, 200), 3, 1, 1)  # more probabilities to stitch

    monkeypatch.setattr(machine, "available_memory", lambda: 2 << 30)
    info = ModelInfo(None, None, 3, 1, tile=(64, 64))
    assert resolve_layout(info, tile=(2048, 2048), batch_size=4).tile == (2048, 2048)  # ~0.4 GiB
    with pytest.raises(FlexunetError, match=r"^--tile 8192x8192 needs about 6\.0 GiB for a batch of 4 tiles .* "
                                            r"but 2\.0 GiB is available"):
        resolve_layout(info, tile=8192, batch_size=4)
    with pytest.raises(FlexunetError, match=r"^the model's tile 50000x50000 \(metadata key 'tile'\) needs about .* "
                                            r"for one tile"):
        resolve_layout(ModelInfo(50000, 50000, 3, 1, tile=(50000, 50000)))  # no fixed size given: the metadata's
    with pytest.raises(FlexunetError, match=r"^the model's fixed input size 30000x30000 needs"):
        resolve_layout(info, fixed_size=(30000, 30000))
    resolve_layout(info, whole=True)         # sizes that come with the image are not checked here
    check_memory(resolve_layout(info, FIT), info, batch_size=64)


def test_available_memory_honours_the_address_space_limit(tmp_path):
    code = ("import resource\n"
            f"resource.setrlimit(resource.RLIMIT_AS, ({LIMIT_AS}, {LIMIT_AS}))\n"
            "from flexunet.core.machine import available_memory\n"
            "print(available_memory())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert 0 < int(proc.stdout) < LIMIT_AS
    assert machine.available_memory() > 0


MEMORY_CASES = {  # case: (command line with M for the model, memory said to be available, error fragments)
    "infer-tile-20000": ("infer M in -o out --tile 20000", None, ("--tile 20000x20000", "GiB")),
    "infer-tile-20000-batch-1": ("infer M in -o out --tile 20000 --batch-size 1", None,
                                 ("--tile 20000x20000", "for one tile")),
    "infer-budget-1M": ("infer M in -o out --tile 4096 --memory-budget 1M", None,
                        ("--memory-budget 1 MiB is too small for one 4096x4096 tile",)),
    "parity-batch-4": ("parity --reference M --candidate M in -o out --tile 4096", 1 << 30,
                       ("--tile 4096x4096", "a batch of 4 tiles")),
    "bench-batch-sizes-8": ("bench M in -o out --tile 4096", 2 << 30, ("--tile 4096x4096", "a batch of 8 tiles")),
}


@pytest.mark.parametrize("case", list(MEMORY_CASES))
def test_tiles_too_large_for_memory_are_refused_before_running(case, make_onnx, make_images, tmp_path):
    """Exit 2 in one line naming the model, the option (or the metadata key) and the estimate;
    nothing written.  The batch rows: one tile fits, the batch asked for does not."""
    line, available, fragments = MEMORY_CASES[case]
    make_images(tmp_path / "in", [(64, 80)])
    model = make_onnx()
    argv = [str(model) if word == "M" else word for word in line.split()]
    proc = flexunet_limited(*argv, cwd=tmp_path, available=available)
    assert_one_line_error(proc.returncode, proc.stderr, EXIT_USAGE, model.name, *fragments)
    assert not (tmp_path / "out").exists()


# -- item 11: ground truth that matches nothing ------------------------------------------------------------
def parity(model: Path, images: Path, masks: Path, reports: Path):
    return flexunet("parity", "--reference", model, "--candidate", model, images, "--masks", masks, "-o", reports)


@pytest.mark.parametrize("masks, fragment", [("empty", "no mask images"), ("others", "none of its 1 mask(s)")])
def test_a_masks_folder_that_matches_no_image_is_an_error(masks, fragment, make_onnx, make_images, tmp_path):
    make_images(tmp_path / "in", [(40, 50), (30, 30)])
    folder = tmp_path / masks
    folder.mkdir()
    if masks == "others":
        write_image(folder / "unrelated.png", np.zeros((40, 50), np.uint8))
    result = parity(make_onnx(), tmp_path / "in", folder, tmp_path / "reports")
    assert_one_line_error(result.exit_code, result.stderr, EXIT_USAGE, folder, fragment, "img00")
    assert not (tmp_path / "reports").exists()


def test_no_scored_ground_truth_gives_no_truth_figure(make_onnx, make_images, tmp_path):
    """A mask named like an image but of another size scores nothing: "n/a", null, never 1.0."""
    make_images(tmp_path / "in", [(40, 50), (30, 30)])
    write_image(tmp_path / "masks" / "img00.png", np.zeros((10, 10), np.uint8))
    result = parity(make_onnx(), tmp_path / "in", tmp_path / "masks", tmp_path / "reports")
    assert result.exit_code == EXIT_OK, result.stderr
    assert "reference model.onnx: dice vs truth n/a" in result.stdout
    assert "dice vs truth n/a: PASS" in result.stdout and "dice vs truth 1.0" not in result.stdout
    data = json.loads((tmp_path / "reports" / "parity.json").read_text())
    assert data["reference"]["dice_vs_truth"] is None and data["candidates"][0]["overall"]["dice_vs_truth"] is None
    assert data["truth"]["found"] == 0
    assert "| n/a |" in (tmp_path / "reports" / "parity.md").read_text()


def test_ground_truth_for_some_images_is_scored(make_onnx, make_images, tmp_path):
    make_images(tmp_path / "in", [(40, 50), (30, 30)])
    write_image(tmp_path / "masks" / "img00.png", np.full((40, 50), 255, np.uint8))
    result = parity(make_onnx(), tmp_path / "in", tmp_path / "masks", tmp_path / "reports")
    assert result.exit_code == EXIT_OK, result.stderr
    data = json.loads((tmp_path / "reports" / "parity.json").read_text())
    assert data["truth"]["found"] == 1 and 0.0 <= data["reference"]["dice_vs_truth"] <= 1.0


# -- item 12: bench with no readable image, empty .keras archives -------------------------------------------
@pytest.mark.parametrize("bad_images, batch_sizes", [(2, "1,2,4,8"), (3, "1,2")],
                         ids=["all-tried-for-latency", "found-in-the-folder-run"])
def test_bench_with_no_readable_image_is_bad_input(bad_images, batch_sizes, make_onnx, tmp_path):
    """Exit 2 like parity, no 0-slides/s report (the second row: more images than the latency
    sweep reads, so the folder run finds that none is readable)."""
    (tmp_path / "in").mkdir()
    for i in range(bad_images):
        (tmp_path / "in" / f"bad{i}.png").write_bytes(b"\x89PNG garbage")
    result = flexunet("bench", make_onnx(), tmp_path / "in", "-o", tmp_path / "reports", "--batch-sizes",
                      batch_sizes, "--repeat", 1, "--warmup", 0, "--runs", 1)
    assert_one_line_error(result.exit_code, result.stderr, EXIT_USAGE,
                          f"none of the {bad_images} images could be read")
    assert not (tmp_path / "reports").exists()


def test_bench_with_some_unreadable_images_still_reports(make_onnx, make_images, tmp_path):
    make_images(tmp_path / "in", [(64, 64)])
    (tmp_path / "in" / "bad.png").write_bytes(b"\x89PNG garbage")
    result = flexunet("bench", make_onnx(), tmp_path / "in", "-o", tmp_path / "reports", "--batch-sizes", "1",
                      "--repeat", 1, "--warmup", 0, "--runs", 1)
    assert result.exit_code == EXIT_SKIPPED, result.stderr
    assert json.loads((tmp_path / "reports" / "bench.json").read_text())["end_to_end"]["slides"] == 1


def _empty_zip(path: Path) -> None:
    zipfile.ZipFile(path, "w").close()


def _zip_without_config(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model.weights.h5", b"junk")


@pytest.mark.parametrize("make, fragment", [(_empty_zip, "an empty zip file"),
                                            (_zip_without_config, "no config.json in it")],
                         ids=["empty-zip", "zip-without-config"])
def test_keras_archive_without_a_model_is_one_line_without_tensorflow(make, fragment, make_images, tmp_path):
    model = tmp_path / "model.keras"
    make(model)
    (tmp_path / "train_eval_infer.config").write_text(TINY_CONFIG)
    make_images(tmp_path / "in", [(64, 64)])
    code = ("import sys\n"
            "from flexunet.cli import main\n"
            "try:\n"
            "    main(sys.argv[1:])\n"
            "finally:\n"
            "    print('tensorflow' in sys.modules, file=sys.stdout)\n")
    proc = subprocess.run([sys.executable, "-c", code, "infer", str(model), "in", "-o", "out"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=HANG_GUARD)
    assert_one_line_error(proc.returncode, proc.stderr, EXIT_USAGE, model, "not a Keras archive", fragment)
    assert proc.stdout.strip() == "False"  # refused before TensorFlow is imported
    assert not (tmp_path / "out").exists()


# -- item 12: Ctrl-C at any moment --------------------------------------------------------------------------
_CLICK = r"^import time:.*\|\s+click(\.\w+)*\s*$"   # the process has its Ctrl-C handler and loads click
#: When the SIGINT comes: ``delay`` seconds after the first stderr line matching ``marker``.  From
#: click's import on: click itself, the lazy import of the command (click's ``Aborted!``, exit 1,
#: before), onnxruntime's import (a traceback before), the model load, then the run itself.
SIGINT_MOMENTS = [(_CLICK, d) for d in (0.0, 0.005, 0.02, 0.05, 0.1, 0.2, 0.35)] + \
    [(r"^backend: ", 0.0), (r"^\[ *1/", 0.0)]


def _interrupt(command: list[str], marker: str, delay: float, cwd: Path) -> tuple[int, str, bool]:
    """Run ``command`` with ``-X importtime``; SIGINT it ``delay`` s after ``marker`` appears on
    stderr.  (exit code, stderr without the import lines, whether the signal came before the end)."""
    process = subprocess.Popen([sys.executable, "-X", "importtime", *command], cwd=cwd, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines, ready, pattern = [], threading.Event(), re.compile(marker)

    def read() -> None:
        for line in process.stderr:
            lines.append(line)
            if pattern.match(line):
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(HANG_GUARD), f"no line matching {marker!r}"
        time.sleep(delay)
        sent = process.poll() is None
        if sent:
            process.send_signal(signal.SIGINT)
        process.stdout.read()
        process.wait(HANG_GUARD)
        reader.join(HANG_GUARD)
    finally:
        process.kill()
    stderr = "".join(line for line in lines if not line.startswith("import time:"))
    return process.returncode, stderr, sent


CONSOLE_CASES = {  # case: (what happens after the handler is installed, exit code, last stderr line)
    "outside-a-command": ("interrupt()\nwork()\n", EXIT_INTERRUPTED, "interrupted"),
    "in-a-command": ("@handle_errors\ndef cmd():\n    interrupt()\n    work()\ncmd()\n",
                     EXIT_INTERRUPTED, "interrupted"),
    "turned-into-an-import-error": (  # what onnxruntime's pybind11 module does when interrupted
        "@handle_errors\ndef cmd():\n    try:\n        interrupt()\n        work()\n"
        "    except KeyboardInterrupt:\n        raise ImportError('initialization failed')\ncmd()\n",
        EXIT_INTERRUPTED, "interrupted"),
    "second-ctrl-c-while-stopping": (
        "@handle_errors\ndef cmd():\n    try:\n        interrupt()\n        work()\n"
        "    except KeyboardInterrupt:\n        interrupt()\n        work()\n        print('stopped', file=sys.stderr)\n"
        "        raise\ncmd()\n", EXIT_INTERRUPTED, "interrupted"),
    "third-ctrl-c-ends-at-once": (
        "@handle_errors\ndef cmd():\n    try:\n        interrupt()\n        work()\n"
        "    except KeyboardInterrupt:\n        interrupt()\n        interrupt()\n        work()\n"
        "        print('never', file=sys.stderr)\ncmd()\n", EXIT_INTERRUPTED, "interrupted"),
    "an-error-without-ctrl-c": ("@handle_errors\ndef cmd():\n    raise FlexunetError('m.onnx: bad')\ncmd()\n",
                                EXIT_USAGE, "error: m.onnx: bad"),
}
CONSOLE_PRELUDE = """\
import os, signal, sys
from flexunet.core.console import handle_errors, install_interrupt_handler
from flexunet.core.errors import FlexunetError
install_interrupt_handler()
def interrupt():
    os.kill(os.getpid(), signal.SIGINT)
def work():  # Python runs a signal's handler between bytecodes
    for _ in range(10 ** 6):
        pass
"""


@pytest.mark.parametrize("case", list(CONSOLE_CASES))
def test_ctrl_c_handling_of_the_console(case, tmp_path):
    body, code, last = CONSOLE_CASES[case]
    proc = subprocess.run([sys.executable, "-c", CONSOLE_PRELUDE + body], capture_output=True, text=True,
                          timeout=HANG_GUARD, cwd=tmp_path)
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "never" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == last and proc.stderr.count(last) == 1, proc.stderr
    assert ("stopped" in proc.stderr) == (case == "second-ctrl-c-while-stopping")


def test_ctrl_c_at_any_moment_is_exit_130_in_one_line(make_onnx, make_images, tmp_path):
    """No traceback, no click ``Aborted!``, exit 130, the last line ``interrupted``, no temporary
    file left -- from the command's first imports to the middle of the run."""
    make_images(tmp_path / "in", [(256, 256)] * 60)  # a run of seconds: every moment falls inside it
    model = make_onnx()
    script = Path(sys.executable).with_name("flexunet")
    entries = [["-m", "flexunet"]] + ([[str(script)]] if script.exists() else [])
    sent = 0
    for k, (marker, delay) in enumerate(SIGINT_MOMENTS):
        out = tmp_path / f"out{k}"
        # 64 px tiles: a dynamic model's default (fit) would segment each image in one tile and end the run
        # in under a second, before the later moments
        command = [*entries[k % len(entries)], "infer", str(model), "in", "-o", out.name, "--batch-size", "1",
                   "--tile", "64"]
        code, stderr, signalled = _interrupt(command, marker, delay, tmp_path)
        if not signalled:  # the run ended first (not expected: it lasts much longer)
            continue
        sent += 1
        assert code == EXIT_INTERRUPTED, (marker, delay, code, stderr)
        assert "Traceback" not in stderr and "Aborted!" not in stderr, (marker, delay, stderr)
        assert stderr.splitlines()[-1] == "interrupted" and stderr.count("interrupted") == 1, (marker, delay, stderr)
        assert not [p for p in out.rglob("*") if ".part" in p.name] if out.exists() else True
    assert sent >= len(SIGINT_MOMENTS) - 1, sent
