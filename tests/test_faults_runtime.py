"""Bad input and faults in folder runs (``flexunet infer``): one bad input never costs the run, a
file or a result (issue 15: image input, folder runs, resume, interruption).

Each row of :data:`CASES` runs the real ``flexunet`` command on a folder of good images plus one
bad input and states the exit code; every row checks: no traceback, the good inputs are done,
no temporary file is left in the output folder.  The other tests are faults a table row cannot
set up: an input replaced between runs, a full disk, SIGTERM, stale temporary files, output
names that cannot be written, decoding out of memory.

Nothing here waits on the wall clock: a subprocess is waited for with :data:`HANG_GUARD` only
so that a hang (a bug) fails instead of blocking the suite; the SIGTERM test holds the run at a
chosen input with a file-based hook.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import flexunet.core.imageio as imageio_module
from flexunet.core import image_headers
from flexunet.cli import cli
from flexunet.core.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_SKIPPED, EXIT_USAGE, FlexunetError
from flexunet.runtime.outputs import RECORD_DIR, output_names
from flexunet.runtime.segmenter import Segmenter

HANG_GUARD = 120.0  # seconds: never reached when the code works
FLEXUNET = Path(sys.executable).with_name("flexunet")
GOOD = [(50, 60), (70, 40)]  # the good images of every row: img00.png, img01.png


# -- helpers ---------------------------------------------------------------------------------------------
def run_flexunet(*args, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``flexunet ARGS`` as a user runs it (its own process: real exit status, real stderr)."""
    command = [str(FLEXUNET)] if FLEXUNET.exists() else [sys.executable, "-m", "flexunet"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, timeout=HANG_GUARD,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def temporary_files(folder: Path) -> list[Path]:
    """flexunet's temporary files (``.<name>.<random>.part<ext>``) anywhere below ``folder``."""
    return [p for p in folder.rglob("*") if ".part" in p.name] if folder.exists() else []


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, idat: bytes) -> bytes:
    """A PNG file with this IHDR size (8-bit RGB) and this IDAT data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def assert_masks(out: Path, names, shapes=None) -> None:
    """Each named mask exists and decodes (to its shape)."""
    for i, name in enumerate(names):
        mask = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        assert mask is not None, name
        if shapes is not None:
            assert mask.shape[:2] == tuple(shapes[i]), (name, mask.shape)


# -- the table: one bad input among good ones --------------------------------------------------------------
# Each setup gets (tmp_path, input folder) and returns the infer arguments after MODEL (output
# folder included), extra environment variables, and a fragment the skip or error line contains.
def huge_header(tmp, inp):
    (inp / "huge.png").write_bytes(png_bytes(40000, 40000, zlib.compress(b"\0" * 64)))
    return [inp, "-o", tmp / "out"], {}, "huge.png: 40000x40000 image"


def above_pixel_limit(tmp, inp):
    write_png(inp / "big.png", (100, 100))  # 10000 pixels, the good ones have 3000 and 2800
    return [inp, "-o", tmp / "out"], {"FLEXUNET_MAX_IMAGE_PIXELS": "5000"}, "big.png: 100x100 image"


def corrupt_png_data(tmp, inp):
    (inp / "bad.png").write_bytes(png_bytes(100, 100, zlib.compress(b"\0" * 10)))
    return [inp, "-o", tmp / "out"], {}, "bad.png: cannot decode image"


def dangling_link(tmp, inp):
    (inp / "gone.png").symlink_to(tmp / "nowhere.png")
    return [inp, "-o", tmp / "out"], {}, "gone.png: no such file"


def link_loop_in_folder(tmp, inp):
    (inp / "loop_a.png").symlink_to(tmp / "loop_b.png")
    (tmp / "loop_b.png").symlink_to(inp / "loop_a.png")
    return [inp, "-o", tmp / "out"], {}, "loop_a.png: symbolic link loop"


def fifo_in_folder(tmp, inp):
    os.mkfifo(inp / "pipe.png")
    return [inp, "-o", tmp / "out"], {}, "pipe.png: not a regular file"


def loop_named(tmp, inp):
    (tmp / "loop_a").symlink_to(tmp / "loop_b")
    (tmp / "loop_b").symlink_to(tmp / "loop_a")
    return [inp, tmp / "loop_a", "-o", tmp / "out"], {}, "loop_a: symbolic link loop"


def missing_named(tmp, inp):
    return [inp, tmp / "missing.png", "-o", tmp / "out"], {}, "missing.png: no such file or folder"


def fifo_named(tmp, inp):
    os.mkfifo(tmp / "pipe.png")
    return [inp, tmp / "pipe.png", "-o", tmp / "out"], {}, "pipe.png: not a regular file or a folder"


def out_is_input(tmp, inp):
    return [inp, "-o", inp], {}, "is the input folder"


def out_inside_input(tmp, inp):
    return [inp, "-o", inp / "masks"], {}, "is inside the input folder"


def bad_pixel_limit(tmp, inp):
    return [inp, "-o", tmp / "out"], {"FLEXUNET_MAX_IMAGE_PIXELS": "lots"}, "FLEXUNET_MAX_IMAGE_PIXELS"


def long_name(tmp, inp):
    write_png(inp / ("a" * 240 + ".png"), (30, 20))
    return [inp, "-o", tmp / "out"], {}, None


def longest_name_with_every_output(tmp, inp):
    write_png(inp / ("b" * 250 + ".png"), (30, 20))
    return [inp, "-o", tmp / "out", "--colorize", "--overlay", "--probabilities"], {}, None


def write_png(path: Path, size) -> None:
    rng = np.random.default_rng(len(path.name))
    ok, data = cv2.imencode(".png", rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    path.write_bytes(data.tobytes())


CASES = [
    (huge_header, EXIT_SKIPPED),
    (above_pixel_limit, EXIT_SKIPPED),
    (corrupt_png_data, EXIT_SKIPPED),
    (dangling_link, EXIT_SKIPPED),
    (link_loop_in_folder, EXIT_SKIPPED),
    (fifo_in_folder, EXIT_SKIPPED),
    (loop_named, EXIT_USAGE),
    (missing_named, EXIT_USAGE),
    (fifo_named, EXIT_USAGE),
    (out_is_input, EXIT_USAGE),
    (out_inside_input, EXIT_USAGE),
    (bad_pixel_limit, EXIT_USAGE),
    (long_name, EXIT_OK),
    (longest_name_with_every_output, EXIT_OK),
]


@pytest.mark.parametrize("setup, code", CASES, ids=[setup.__name__ for setup, _ in CASES])
def test_bad_input_in_a_folder_run(setup, code, make_onnx, make_images, tmp_path):
    model = make_onnx()
    inp = tmp_path / "in"
    make_images(inp, GOOD)
    before = sorted(p.name for p in inp.iterdir())
    args, env, fragment = setup(tmp_path, inp)
    out = Path(args[args.index("-o") + 1])
    earlier = out / "earlier.png"  # a result of an earlier run, in output folders outside the inputs
    if out == tmp_path / "out":
        out.mkdir()
        write_png(earlier, (20, 30))
    kept = earlier.read_bytes() if earlier.exists() else None
    result = run_flexunet("infer", model, *args, env=env)
    err = result.stderr
    assert result.returncode == code, (result.returncode, result.stdout, err)
    assert "Traceback" not in err + result.stdout
    assert "libpng" not in err and "WARN" not in err, err
    assert (earlier.read_bytes() if earlier.exists() else None) == kept  # earlier results intact
    if code == EXIT_USAGE:
        assert err.splitlines() == [err.splitlines()[0]] and err.startswith("error: "), err
        assert fragment in err, (fragment, err)
        assert not out.exists() or sorted(p.name for p in out.iterdir()) in (["earlier.png"], before)
        assert sorted(p.name for p in inp.iterdir()) == before  # nothing written among the inputs
        return
    assert_masks(out, ["img00.png", "img01.png"], GOOD)   # the good inputs are done
    assert temporary_files(out) == []
    if code == EXIT_SKIPPED:
        skipped = [line for line in result.stdout.splitlines() if line.startswith("skipped: ")]
        assert len(skipped) == 1 and fragment in skipped[0], (fragment, result.stdout)
        assert "done 2, skipped 1, resumed 0" in result.stdout
    else:
        assert "done 3, skipped 0, resumed 0" in result.stdout
        assert len(list(out.glob("*.png"))) >= 4
        for name in os.listdir(out):
            assert len(os.fsencode(name)) <= 255


def test_a_limit_from_the_header_is_checked_before_decoding(tmp_path, monkeypatch):
    """The header says how big the image is: the decoder is not even called."""
    path = tmp_path / "huge.png"
    path.write_bytes(png_bytes(40000, 40000, zlib.compress(b"\0" * 64)))
    calls = []
    monkeypatch.setattr(imageio_module.cv2, "imdecode", lambda *a: calls.append(a))
    with pytest.raises(imageio_module.ImageReadError, match=r"huge.png: 40000x40000 image \(1600000000 pixels\)"):
        imageio_module.read_image(path)
    assert calls == []


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tif"])
def test_header_sizes_of_every_format(tmp_path, ext):
    image = np.zeros((37, 53, 3), np.uint8)
    ok, data = cv2.imencode(ext, image)
    assert image_headers.header_size(data.tobytes()) == (53, 37)


def test_decoder_lines_are_dropped_and_other_lines_kept(tmp_path, monkeypatch, capfd):
    """What reaches file descriptor 2 while a decoder runs: its lines are dropped, a line another
    thread writes meanwhile (progress) comes out once the decode is done."""
    path = tmp_path / "bad.png"
    path.write_bytes(png_bytes(10, 10, b"junk"))

    def imdecode(data, flags):
        os.write(2, b"libpng error: Not enough image data\n[ WARN:0@0.1] global grfmt_png.cpp:1 incomplete\n")
        os.write(2, b"[2/3] 1.00 slides/s, ETA 0:01\n")
        return None

    monkeypatch.setattr(imageio_module.cv2, "imdecode", imdecode)
    with pytest.raises(imageio_module.ImageReadError, match="bad.png: cannot decode image"):
        imageio_module.read_image(path)
    assert capfd.readouterr().err == "[2/3] 1.00 slides/s, ETA 0:01\n"


def test_out_of_memory_while_decoding_skips_that_input(make_onnx, make_images, tmp_path, monkeypatch):
    images = make_images(tmp_path / "in", [(40, 40)] * 3)
    real = imageio_module.cv2.imdecode
    decodes = []

    def imdecode(data, flags):
        decodes.append(len(data))
        if len(decodes) == 2:  # the second input: the decoder runs out of memory
            raise MemoryError
        return real(data, flags)

    monkeypatch.setattr(imageio_module.cv2, "imdecode", imdecode)
    with Segmenter(make_onnx()) as seg:
        summary = seg.segment_folder(tmp_path / "in", tmp_path / "out")
    assert summary.done == [images[0], images[2]]
    assert [(p, "not enough memory" in r) for p, r in summary.skipped] == [(images[1], True)]


# -- resume compares content ---------------------------------------------------------------------------
def test_resume_redoes_an_input_replaced_by_another_of_the_same_size(make_onnx, make_images, tmp_path):
    images = make_images(tmp_path / "in", [(60, 80)] * 3, ext=".bmp")  # BMP: same size, same bytes
    out = tmp_path / "out"
    with Segmenter(make_onnx()) as seg:
        seg.segment_folder(images, out)
        mask_of_0 = cv2.imread(str(out / "img00.png"), cv2.IMREAD_UNCHANGED)
        assert images[1].stat().st_size == images[0].stat().st_size
        images[1].write_bytes(images[0].read_bytes())
        again = seg.segment_folder(images, out, resume=True)
    assert again.done == [images[1]] and again.resumed == [images[0], images[2]]
    assert np.array_equal(cv2.imread(str(out / "img01.png"), cv2.IMREAD_UNCHANGED), mask_of_0)
    record = json.loads((out / RECORD_DIR / "img01.json").read_text())
    assert len(record["input_sha256"]) == 64


# -- full disks ----------------------------------------------------------------------------------------
def test_disk_full_while_writing_the_resume_record(make_onnx, make_images, tmp_path, monkeypatch, isolate_cli):
    make_images(tmp_path / "in", [(60, 60)] * 4)
    out = tmp_path / "out"
    real_write_text = Path.write_text
    records = []

    def write_text(self, text, *args, **kwargs):
        if self.suffix == ".json" and self.parent.name == RECORD_DIR:
            records.append(self)
            if len(records) == 3:  # the third record: half written, then the disk is full
                real_write_text(self, text[: len(text) // 2], *args, **kwargs)
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    result = CliRunner().invoke(cli, ["infer", str(make_onnx()), str(tmp_path / "in"), "-o", str(out)])
    assert result.exit_code == EXIT_USAGE, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: ") and "img02.json" in last and "No space left on device" in last, last
    assert temporary_files(out) == []
    assert sorted(p.name for p in (out / RECORD_DIR).iterdir()) == ["img00.json", "img01.json"]
    assert_masks(out, ["img00.png", "img01.png"], [(60, 60)] * 2)  # earlier results intact

    monkeypatch.setattr(Path, "write_text", real_write_text)
    again = CliRunner().invoke(cli, ["infer", str(make_onnx()), str(tmp_path / "in"), "-o", str(out), "--resume"])
    assert again.exit_code == EXIT_OK and "done 2, skipped 0, resumed 2" in again.stdout, again.output


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs mounted in ``tmp_path`` (skipped where this process may not mount one)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                              capture_output=True, text=True, timeout=HANG_GUARD)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True, timeout=HANG_GUARD)


def test_a_full_disk_stops_the_run_in_one_line_and_resume_finishes_it(make_onnx, make_images, tmp_path, small_disk):
    make_images(tmp_path / "in", [(100, 100)] * 8)  # 40 KB of probabilities each: the disk fills at the 6th
    out = small_disk / "out"
    result = run_flexunet("infer", make_onnx(), tmp_path / "in", "-o", out, "--probabilities")
    assert result.returncode == EXIT_USAGE, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: ") and "No space left on device" in result.stderr
    assert temporary_files(out) == []
    written = sorted(p.stem for p in (out / RECORD_DIR).iterdir())
    assert 1 <= len(written) < 8
    assert_masks(out, [f"{stem}.png" for stem in written], [(100, 100)] * len(written))
    for stem in written:
        assert np.load(out / f"{stem}_prob.npy").shape == (100, 100, 1)


# -- interruption --------------------------------------------------------------------------------------
HOLD_HOOK = '''
import os, time
from pathlib import Path
import flexunet.core.imageio as imageio

_read = imageio.read_image


def read_image(path, *args, **kwargs):
    """Hold the run before decoding the input named $HOLD_AT until the file $RELEASE exists."""
    if Path(path).name == os.environ["HOLD_AT"]:
        Path(os.environ["HELD"]).touch()
        while not Path(os.environ["RELEASE"]).exists():
            time.sleep(0.01)
    return _read(path, *args, **kwargs)


imageio.read_image = read_image
'''


def wait_for(path: Path, process: subprocess.Popen) -> None:
    """Wait until ``path`` exists (or the process ended, or the hang guard)."""
    deadline = time.monotonic() + HANG_GUARD
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_sigterm_stops_a_folder_run_cleanly_and_resume_finishes_it(make_onnx, make_images, tmp_path):
    """SIGTERM while the run is held before its 6th input: exit 130, the 5 masks written are whole,
    no temporary file; ``--resume`` keeps them and segments the rest."""
    images = make_images(tmp_path / "in", [(90, 90)] * 10)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD_HOOK)
    env = {"PYTHONPATH": str(hook), "HOLD_AT": "img05.png", "HELD": str(tmp_path / "held"),
           "RELEASE": str(tmp_path / "release")}
    out = tmp_path / "out"
    command = [str(FLEXUNET)] if FLEXUNET.exists() else [sys.executable, "-m", "flexunet"]
    model = make_onnx()
    process = subprocess.Popen([*command, "infer", str(model), str(tmp_path / "in"), "-o", str(out),
                                "--batch-size", "1"], env={**os.environ, **env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(tmp_path / "held", process)
        wait_for(out / RECORD_DIR / "img04.json", process)  # batches of 1: every earlier slide is written
        process.send_signal(signal.SIGTERM)
        (tmp_path / "release").touch()
        stdout, stderr = process.communicate(timeout=HANG_GUARD)
    finally:
        process.kill()
    assert process.returncode == EXIT_INTERRUPTED, (process.returncode, stdout, stderr)
    assert stderr.splitlines()[-1] == "interrupted" and "Traceback" not in stderr
    assert temporary_files(out) == []
    written = sorted(p.name for p in out.glob("*.png"))
    assert written[:5] == [f"img{i:02d}.png" for i in range(5)] and len(written) < 10
    assert_masks(out, written, [(90, 90)] * len(written))

    again = run_flexunet("infer", model, tmp_path / "in", "-o", out, "--batch-size", "1", "--resume")
    assert again.returncode == EXIT_OK, again.stderr
    assert f"skipped 0, resumed {len(written)}" in again.stdout
    assert_masks(out, [f"{p.stem}.png" for p in images], [(90, 90)] * 10)


def test_resume_removes_stale_temporary_files(make_onnx, make_images, tmp_path):
    make_images(tmp_path / "in", [(40, 50)] * 2)
    out = tmp_path / "out"
    model = make_onnx()
    assert run_flexunet("infer", model, tmp_path / "in", "-o", out).returncode == EXIT_OK
    stale = [out / ".img00.png.k3j_x9a2.part.png", out / RECORD_DIR / ".img01.json.abcd1234.part.json",
             out / ".img01_prob.npy.zz11yy22.part.npy"]
    kept = [out / "notes.part.txt", out / ".keepme", out / "img00.part.png"]
    for path in stale + kept:
        path.write_bytes(b"half")
    result = run_flexunet("infer", model, tmp_path / "in", "-o", out, "--resume")
    assert result.returncode == EXIT_OK and "resumed 2" in result.stdout, result.stderr
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in kept)


# -- output names ----------------------------------------------------------------------------------------
def test_an_output_that_cannot_be_written_skips_its_input(make_onnx, make_images, tmp_path, monkeypatch, isolate_cli):
    images = make_images(tmp_path / "in", [(40, 40)] * 3)
    out = tmp_path / "out"
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == "img01_color.png":
            raise OSError(errno.ENAMETOOLONG, "File name too long")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    result = CliRunner().invoke(cli, ["infer", str(make_onnx()), str(tmp_path / "in"), "-o", str(out), "--colorize"])
    assert result.exit_code == EXIT_SKIPPED, (result.output, result.exception)
    assert "done 2, skipped 1, resumed 0" in result.stdout
    skipped = [line for line in result.stdout.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 1 and str(images[1]) in skipped[0] and "File name too long" in skipped[0], skipped
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["img00.png", "img00_color.png",
                                                                     "img02.png", "img02_color.png"]
    assert temporary_files(out) == []


def test_long_names_are_cut_to_fit_and_stay_unique(tmp_path):
    common = "é" * 118 + "x" * 5                    # 241 bytes: "<common>_overlay.png" fits in 255
    paths = [tmp_path / f"{common}{tail}.png" for tail in ("a" * 10, "b" * 10, "")]
    names = output_names(paths)
    assert len(set(names)) == 3 and names[2] == common
    for name in names:
        assert len(os.fsencode(f"{name}_overlay.png")) <= 255
        assert name.startswith("é" * 100)


def test_the_python_api_refuses_an_output_folder_inside_an_input_folder(make_onnx, make_images, tmp_path):
    make_images(tmp_path / "in", GOOD)
    with Segmenter(make_onnx()) as seg:
        with pytest.raises(FlexunetError, match="is inside the input folder"):
            seg.segment_folder(tmp_path / "in", tmp_path / "in" / "masks")
    assert not (tmp_path / "in" / "masks").exists()
