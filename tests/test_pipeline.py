"""Segmenter and the concurrent pipeline: tiling exactness, batching across slides, bounded memory,
corrupt inputs, resume, atomic writes, shutdown on errors and Ctrl-C, output names, colours, a
Segmenter that never changes, fitted tiles.

Nothing here depends on how fast the machine is: threads are waited for with events, conditions
and joins.  :data:`HANG_GUARD` only turns a hang (a bug) into a failure; it is never reached when
the code works.
"""
from __future__ import annotations

import _thread
import errno
import json
import os
import threading
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

import flexunet.runtime.pipeline as pipeline_module
import flexunet.runtime.segmenter as segmenter_module
from flexunet.core import tiling
from flexunet.core.errors import FlexunetError
from flexunet.core.imageio import write_image
from flexunet.runtime.backends import Backend, load_backend
from flexunet.runtime.layout import FIT_MAX_SIDE
from flexunet.runtime.outputs import RECORD_DIR, output_names
from flexunet.runtime.postprocess import fill_holes, remove_small_objects
from flexunet.runtime.segmenter import Segmenter

HANG_GUARD = 120.0  # seconds: a wait that should end at once, bounded only so that a bug fails instead of hanging

SIZES = [(10, 7), (300, 250), (64, 64), (65, 63), (120, 200), (33, 180), (200, 31), (128, 128),
         (97, 101), (1, 1), (150, 90), (70, 260)]


class Recording(Backend):
    """Wraps a backend: records each batch (shape and top-left pixel of every tile), can run a
    hook before the n-th batch, and sets :attr:`interrupted` when the run interrupts it."""

    def __init__(self, inner: Backend, hook=None):
        self.inner, self.hook = inner, hook
        self.name, self.info, self.path = inner.name, inner.info, inner.path
        self.fixed_size, self.max_batch = inner.fixed_size, inner.max_batch
        self.batches: list[tuple[tuple[int, ...], list[float]]] = []
        self.lock = threading.Lock()
        self.interrupted = threading.Event()

    def interrupt(self):
        self.interrupted.set()
        self.inner.interrupt()

    def predict(self, batch):
        with self.lock:
            self.batches.append((batch.shape, [float(t[0, 0, 0]) for t in batch]))
            n = len(self.batches)
        if self.hook is not None:
            self.hook(n)
        return self.inner.predict(batch)

    def close(self):
        self.inner.close()


def read_mask(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


def part_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".part" in p.name]


@pytest.fixture
def threads_joined(monkeypatch):
    """``check()`` asserts that the threads alive are those alive before the test.  Runs join
    their threads without a time limit (``JOIN_TIMEOUT = None``), so when ``segment_folder``
    returns or raises, every thread it started has ended: nothing is left to wait for."""
    monkeypatch.setattr(pipeline_module, "JOIN_TIMEOUT", None)
    before = set(threading.enumerate())

    def check() -> None:
        assert [t.name for t in threading.enumerate() if t not in before] == []

    return check


class ReadCounter:
    """Stands in for the segmenter's ``read_image``: counts decodes per file and the peak of slides
    decoded but not yet reported finished (:meth:`finished` is a ``progress`` callback), and lets a
    thread wait (:meth:`wait_for`) until a number of decodes has started."""

    def __init__(self, monkeypatch):
        self.real = segmenter_module.read_image
        self.per_file: Counter = Counter()
        self.done = self.peak = 0
        self.cond = threading.Condition()
        monkeypatch.setattr(segmenter_module, "read_image", self)

    @property
    def total(self) -> int:
        return sum(self.per_file.values())

    def __call__(self, path, *args, **kwargs):
        with self.cond:
            self.per_file[Path(path)] += 1
            self.peak = max(self.peak, self.total - self.done)
            self.cond.notify_all()
        return self.real(path, *args, **kwargs)

    def finished(self, event=None) -> None:
        with self.cond:
            self.done += 1

    def wait_for(self, count: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.total >= count, HANG_GUARD), f"fewer than {count} decodes"


# -- tiling quality --------------------------------------------------------------------------------
@pytest.mark.parametrize("blend", ["none", "cosine", "gaussian"])
def test_tiled_equals_whole_for_a_translation_equivariant_model(make_onnx, blend):
    """A pointwise model is exactly translation-equivariant: blending must not change anything."""
    image = np.random.default_rng(0).integers(0, 256, size=(333, 517, 3), dtype=np.uint8)
    with load_backend(make_onnx(kernel=1)) as backend:
        tiled = Segmenter(backend, tile=64, overlap=16, blend=blend, batch_size=5).segment(image)
        whole = Segmenter(backend, whole=True).segment(image)
    assert tiled.probabilities.shape == (333, 517, 1)
    np.testing.assert_allclose(tiled.probabilities, whole.probabilities, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(tiled.labels, whole.labels)


def _seam_mask(height: int, width: int, tile: int, overlap: int) -> np.ndarray:
    """Pixels on the 1-pixel border of some tile where that border is inside the image."""
    grid = tiling.make_grid(height, width, tile, tile, overlap)
    seams = np.zeros((height, width), dtype=bool)
    for y, x in grid:
        rows, cols = slice(y, y + tile), slice(x, x + tile)
        if y > 0:
            seams[y, cols] = True
        if y + tile < height:
            seams[y + tile - 1, cols] = True
        if x > 0:
            seams[rows, x] = True
        if x + tile < width:
            seams[rows, x + tile - 1] = True
    return seams


@pytest.mark.parametrize("blend, max_diff, mean_diff", [
    ("none", 0.5, 0.12), ("cosine", 0.08, 0.003), ("gaussian", 0.4, 0.03),
])
def test_tiled_3x3_model_differs_only_on_tile_seams(make_onnx, blend, max_diff, mean_diff):
    """A 3x3 convolution zero-pads each tile, so a tile's 1-pixel border differs from the
    whole-image pass wherever that border is inside the image.  Everywhere else tiled and whole
    agree exactly.  On the seams the window decides how much of the wrong border value is kept:
    plain averaging keeps a share of it (measured: max 0.36, mean 0.079), the cosine window gives
    tile borders almost no weight (max 0.054, mean 0.0015), the gaussian keeps more near tile
    corners, where every covering tile has a small weight (max 0.28, mean 0.016)."""
    image = np.random.default_rng(1).integers(0, 256, size=(333, 517, 3), dtype=np.uint8)
    with load_backend(make_onnx(kernel=3)) as backend:
        tiled = Segmenter(backend, tile=64, overlap=16, blend=blend).segment(image).probabilities[..., 0]
        whole = Segmenter(backend, whole=True).segment(image).probabilities[..., 0]
    diff = np.abs(tiled - whole)
    seams = _seam_mask(333, 517, 64, 16)
    assert diff[~seams].max() < 1e-6
    assert 0 < diff[seams].max() < max_diff
    assert diff[seams].mean() < mean_diff


def test_images_smaller_than_a_tile_and_any_aspect(make_onnx):
    with load_backend(make_onnx(kernel=1)) as backend:
        seg = Segmenter(backend, tile=64, overlap=16)
        for shape in [(10, 7, 3), (1, 1, 3), (5, 300, 3), (300, 5), (40, 40, 1)]:
            image = np.random.default_rng(2).integers(0, 256, size=shape, dtype=np.uint8)
            result = seg.segment(image)
            assert result.probabilities.shape == shape[:2] + (1,)
            expected = Segmenter(backend, whole=True).segment(image).probabilities
            np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)


def test_tile_options_follow_the_model(make_onnx):
    with load_backend(make_onnx(fixed=(32, 32), overlap=64)) as fixed:
        seg = Segmenter(fixed)
        assert seg.tile == (32, 32) and seg.overlap == 16  # the default overlap is capped at half a tile
        with pytest.raises(FlexunetError, match="fixed at 32x32"):
            Segmenter(fixed, tile=64)
        with pytest.raises(FlexunetError, match="--whole needs a model that accepts any input size"):
            Segmenter(fixed, whole=True)
        with pytest.raises(FlexunetError, match="overlap must be"):
            Segmenter(fixed, overlap=32)
    with load_backend(make_onnx(multiple=16, tile=(100, 100))) as dynamic:
        assert Segmenter(dynamic).fit                                  # dynamic size: fit by default
        assert Segmenter(dynamic, tile=100).tile == (112, 112)
        assert Segmenter(dynamic, tile=(50, 200)).tile == (64, 208)
        assert Segmenter(dynamic, whole=True).describe().startswith("whole image (padded to a multiple of 16)")
        with pytest.raises(FlexunetError, match="blend must be one of"):
            Segmenter(dynamic, blend="median")


def test_a_segmenter_never_changes(make_onnx, make_images, tmp_path):
    """Everything is resolved when it is made: segmenting (a fitted tile included) changes no attribute."""
    images = make_images(tmp_path / "in", [(90, 120), (200, 150)])
    with Segmenter(make_onnx(multiple=16), tile="fit", overlap=8) as seg:
        before = dict(vars(seg))
        layout = seg.layout()
        seg.segment(images[1])
        seg.segment_folder(images, tmp_path / "out")
        seg.segment_folder(images, tmp_path / "out", resume=True)
        assert vars(seg) == before
        assert seg.layout() == layout and layout.fit and seg.tile is None
        with pytest.raises(AttributeError):
            seg.tile = (64, 64)


def test_fit_uses_one_tile_per_run_records_it_and_decodes_each_input_once(make_onnx, make_images, tmp_path,
                                                                           monkeypatch):
    """The tile is fitted to the first readable input (the corrupt one before it is skipped), that
    image is decoded once for both fitting and segmenting, and the resume records carry the tile."""
    images = make_images(tmp_path / "in", [(150, 200), (60, 70), (300, 90)])
    corrupt = tmp_path / "in" / "a_corrupt.png"
    corrupt.write_bytes(b"not an image")
    expected = tiling.fit_tile(150, 200, 16, 16, FIT_MAX_SIDE)
    assert expected != tiling.fit_tile(300, 90, 16, 16, FIT_MAX_SIDE)  # the first image decides
    reads = ReadCounter(monkeypatch)
    model = make_onnx(multiple=16, kernel=3)
    with Segmenter(model, tile="fit", overlap=16, batch_size=3) as seg:
        assert seg.layout((150, 200)).tile == expected
        summary = seg.segment_folder(tmp_path / "in", tmp_path / "fit")
    assert summary.done == images and [p for p, _ in summary.skipped] == [corrupt]
    assert reads.per_file == {corrupt: 2, **{p: 1 for p in images}}  # a corrupt file is tried twice
    for path in images:
        record = json.loads((tmp_path / "fit" / RECORD_DIR / f"{path.stem}.json").read_text())
        assert record["options"]["tile"] == list(expected)
    with Segmenter(model, tile=expected, overlap=16) as fixed:
        fixed.segment_folder(images, tmp_path / "fixed")
    for path in images:
        np.testing.assert_array_equal(read_mask(tmp_path / "fit" / f"{path.stem}.png"),
                                      read_mask(tmp_path / "fixed" / f"{path.stem}.png"))
    with Segmenter(model, tile="fit", overlap=16) as seg:
        again = seg.segment_folder(tmp_path / "in", tmp_path / "fit", resume=True)
    assert again.resumed == images and again.done == []


# -- the pipeline gives what segment() gives ---------------------------------------------------------
@pytest.mark.parametrize("options", [
    dict(batch_size=1), dict(batch_size=3), dict(batch_size=8, readers=2),
    dict(batch_size=3, whole=True), dict(batch_size=3, blend="gaussian", fill_holes=True, min_size=20),
])
def test_folder_run_matches_segment_one_by_one(make_onnx, make_images, tmp_path, options):
    images = make_images(tmp_path / "in", SIZES)
    with Segmenter(make_onnx(kernel=3), tile=64, overlap=16, **options) as seg:
        summary = seg.segment_folder(tmp_path / "in", tmp_path / "out", probabilities=True)
        assert summary.done == images and summary.skipped == [] and summary.resumed == []
        assert set(summary.stage_seconds) == {"decode", "preprocess", "batch", "inference", "blend", "post", "write"}
        for path in images:
            expected = seg.segment(path)
            mask = read_mask(tmp_path / "out" / f"{path.stem}.png")
            np.testing.assert_array_equal(mask, expected.mask)
            assert set(np.unique(mask)) <= {0, 255}
            probs = np.load(tmp_path / "out" / f"{path.stem}_prob.npy")
            np.testing.assert_allclose(probs, expected.probabilities, atol=1e-6)


def test_tiles_of_consecutive_slides_share_batches(make_onnx, tmp_path):
    """Three 100x100 slides of 4 tiles each in batches of 3: 4 full batches, two of them mixed."""
    folder = tmp_path / "in"
    folder.mkdir()
    values = [40, 120, 200]
    for i, v in enumerate(values):
        write_image(folder / f"s{i}.png", np.full((100, 100, 3), v, dtype=np.uint8))
    with load_backend(make_onnx(kernel=1)) as inner:
        recording = Recording(inner)
        Segmenter(recording, tile=64, overlap=16, batch_size=3).segment_folder(folder, tmp_path / "out")
    slides = [[values.index(round(v * 255)) for v in firsts] for _, firsts in recording.batches]
    assert slides == [[0, 0, 0], [0, 1, 1], [1, 1, 2], [2, 2, 2]]
    assert all(shape == (3, 64, 64, 3) for shape, _ in recording.batches)


@pytest.mark.parametrize("size, max_in_flight, bound", [
    ((150, 150), 2, 2), ((150, 150), 3, 3),   # 9 tiles per slide: never more than max_in_flight
    ((20, 20), 2, 4),                         # 1 tile per slide: as many as a batch needs
])
def test_slides_in_flight_are_bounded(make_onnx, make_images, tmp_path, monkeypatch, size, max_in_flight, bound):
    """The first batch waits until the readers have started ``bound`` slides (they may: none is
    written yet), so the bound is reached; the assertion is that they never start more."""
    make_images(tmp_path / "in", [size] * 13)
    reads = ReadCounter(monkeypatch)
    with load_backend(make_onnx(kernel=1)) as inner:
        recording = Recording(inner, hook=lambda n: reads.wait_for(bound) if n == 1 else None)
        seg = Segmenter(recording, tile=64, overlap=16, batch_size=4, max_in_flight=max_in_flight)
        summary = seg.segment_folder(tmp_path / "in", tmp_path / "out", progress=reads.finished)
    assert len(summary.done) == 13
    assert reads.peak == bound
    assert [shape[0] for shape, _ in recording.batches[:-1]] == [4] * (len(recording.batches) - 1)


# -- bad inputs, resume, atomic writes ------------------------------------------------------------------
def test_corrupt_files_are_skipped_and_reported(make_onnx, make_images, tmp_path):
    good = make_images(tmp_path / "in", [(80, 90), (50, 60)])
    (tmp_path / "in" / "x.png").write_bytes(os.urandom(300))
    ok, jpeg = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))
    (tmp_path / "in" / "truncated.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])
    events = []
    with Segmenter(make_onnx()) as seg:
        summary = seg.segment_folder(tmp_path / "in", tmp_path / "out", progress=events.append)
    assert summary.done == good
    assert [p.name for p, _ in summary.skipped] == ["truncated.jpg", "x.png"]
    assert all(str(p) in reason for p, reason in summary.skipped)
    assert sorted(e.status for e in events) == ["done", "done", "skipped", "skipped"]
    assert [e.finished for e in events] == [1, 2, 3, 4] and {e.total for e in events} == {4}
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["img00.png", "img01.png"]


def test_resume_skips_complete_outputs_and_redoes_changed_ones(make_onnx, make_images, tmp_path):
    images = make_images(tmp_path / "in", [(70, 80)] * 4)
    out = tmp_path / "out"
    model = make_onnx()
    with Segmenter(model) as seg:
        first = seg.segment_folder(images, out, colorize=True)
        assert first.done == images
        stamps = {p: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}

        events = []
        again = seg.segment_folder(images, out, colorize=True, resume=True, progress=events.append)
        assert again.resumed == images and again.done == []
        assert [e.status for e in events] == ["resumed"] * 4
        assert {p: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == stamps

        (out / "img01_color.png").unlink()                      # an output is missing
        record = out / RECORD_DIR / "img02.json"                # a record from other options
        data = json.loads(record.read_text())
        data["options"]["threshold"] = 0.9
        record.write_text(json.dumps(data))
        partial = seg.segment_folder(images, out, colorize=True, resume=True)
        assert partial.done == [images[1], images[2]] and partial.resumed == [images[0], images[3]]

        more = seg.segment_folder(images, out, colorize=True, probabilities=True, resume=True)
        assert more.done == images                              # another output was asked for
    with Segmenter(model, threshold=0.3) as seg:
        assert seg.segment_folder(images, out, colorize=True, probabilities=True, resume=True).done == images
    with Segmenter(make_onnx("other.onnx", seed=7), threshold=0.3) as seg:
        assert seg.segment_folder(images, out, colorize=True, probabilities=True, resume=True).done == images


def test_writes_are_atomic_even_when_a_write_fails(make_onnx, make_images, tmp_path, monkeypatch, threads_joined):
    images = make_images(tmp_path / "in", [(90, 90)] * 6)
    out = tmp_path / "out"
    with Segmenter(make_onnx()) as seg:
        seg.segment_folder(images, out, overlay=True, probabilities=True)
        assert part_files(out) == []

        real_write_bytes = Path.write_bytes
        calls = []

        def failing_write_bytes(self, data):
            calls.append(self)
            if len(calls) == 3:  # the third image's mask: half written, then the disk is full
                real_write_bytes(self, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write_bytes(self, data)

        monkeypatch.setattr(Path, "write_bytes", failing_write_bytes)
        failed = tmp_path / "failed"
        with pytest.raises(FlexunetError, match="No space left on device"):
            seg.segment_folder(images, failed)
    threads_joined()
    assert part_files(failed) == []
    assert not (failed / "img02.png").exists()
    for mask in failed.glob("*.png"):
        assert read_mask(mask).shape == (90, 90)


# -- stopping ---------------------------------------------------------------------------------------------
def test_an_error_mid_run_stops_every_thread_and_is_reraised(make_onnx, make_images, tmp_path, monkeypatch,
                                                              threads_joined):
    images = make_images(tmp_path / "in", [(150, 150)] * 10)
    reads = ReadCounter(monkeypatch)

    def explode(n):
        if n == 3:
            raise RuntimeError("engine fell over")

    with load_backend(make_onnx()) as inner:
        recording = Recording(inner, hook=explode)
        seg = Segmenter(recording, tile=64, overlap=16, batch_size=2, max_in_flight=3)
        with pytest.raises(RuntimeError, match="engine fell over"):
            seg.segment_folder(images, tmp_path / "out")
    threads_joined()
    assert len(recording.batches) == 3          # nothing was predicted after the error
    assert reads.total <= 3 < len(images)       # the readers stopped at the slides in flight
    assert part_files(tmp_path / "out") == []


def test_keyboard_interrupt_stops_every_thread(make_onnx, make_images, tmp_path, threads_joined):
    """Ctrl-C at the tenth batch, once the first slide is written: that batch waits until the run
    has interrupted the backend (which it does only after catching the KeyboardInterrupt), then no
    other batch is predicted, and what was written is whole."""
    images = make_images(tmp_path / "in", [(150, 150)] * 12)  # 9 tiles each: 4.5 batches of 2
    first_written = threading.Event()

    def interrupt(n):
        if n == 10:
            assert first_written.wait(HANG_GUARD), "the first slide was not written"
            _thread.interrupt_main()
            assert recording.interrupted.wait(HANG_GUARD), "the run did not interrupt the backend"

    with load_backend(make_onnx()) as inner:
        recording = Recording(inner, hook=interrupt)
        seg = Segmenter(recording, tile=64, overlap=16, batch_size=2)
        with pytest.raises(KeyboardInterrupt):
            seg.segment_folder(images, tmp_path / "out", progress=lambda event: first_written.set())
    threads_joined()
    assert len(recording.batches) == 10
    assert part_files(tmp_path / "out") == []
    written = sorted((tmp_path / "out").glob("*.png"))
    assert 1 <= len(written) <= 2 < len(images)  # 20 tiles predicted: at most two slides complete
    for mask in written:
        assert read_mask(mask).shape == (150, 150)


# -- outputs ------------------------------------------------------------------------------------------------
def test_output_names_never_leave_the_output_folder(make_onnx, tmp_path, monkeypatch):
    image = np.full((20, 30, 3), 90, np.uint8)
    for rel in ["a/x.png", "b/x.png", "c/x_a.png", "d/.hidden.png", "d/..png", "d/y.png"]:
        write_image(tmp_path / "data" / rel, image)
    work = tmp_path / "data" / "a"
    monkeypatch.chdir(work)
    inputs = ["x.png", "../b/x.png", "../c/x_a.png", "../d/.hidden.png", "../d/..png",
              "../a/../../data/d/../d/y.png"]
    assert output_names([Path(p) for p in inputs]) == ["x_a", "x_b", "x_a_2", "hidden", "image", "y"]
    out = tmp_path / "out"
    with Segmenter(make_onnx()) as seg:
        summary = seg.segment_folder(inputs, "../../out", colorize=True)
        assert len(summary.done) == 6
        assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted(
            f"{n}{s}.png" for n in ["x_a", "x_b", "x_a_2", "hidden", "image", "y"] for s in ("", "_color"))
        with pytest.raises(FlexunetError, match="would replace the input"):
            seg.segment_folder([tmp_path / "data" / "d" / "y.png"], tmp_path / "data" / "d")


def test_multiclass_colourising_uses_the_metadata_colours(make_onnx, make_images, tmp_path):
    colors = [(0, 0, 0), (250, 10, 20), (5, 200, 40), (30, 60, 250)]  # RGB, as in the metadata
    images = make_images(tmp_path / "in", [(120, 140), (64, 64)], ext=".jpg")
    with Segmenter(make_onnx(classes=4, class_colors=colors)) as seg:
        seg.segment_folder(images, tmp_path / "out", colorize=True, overlay=True)
        result = seg.segment(images[0])
    mask = read_mask(tmp_path / "out" / "img00.png")
    color = read_mask(tmp_path / "out" / "img00_color.png")
    assert (tmp_path / "out" / "img00_overlay.jpg").is_file()
    assert mask.dtype == np.uint8 and mask.ndim == 2 and len(np.unique(mask)) >= 3 and mask.max() <= 3
    np.testing.assert_array_equal(mask, result.labels)
    expected_bgr = np.array([c[::-1] for c in colors], dtype=np.uint8)[mask]
    np.testing.assert_array_equal(color, expected_bgr)
    np.testing.assert_array_equal(result.colorized, expected_bgr)
    untouched = mask == 0
    np.testing.assert_array_equal(result.overlay[untouched], cv2.imread(str(images[0]))[untouched])


# -- post-processing ------------------------------------------------------------------------------------------
def test_remove_small_objects_per_class():
    labels = np.zeros((8, 10), np.uint8)
    labels[1:4, 1:4] = 1        # 9 px of class 1: kept
    labels[6, 1] = 1            # 1 px of class 1: removed
    labels[1:3, 6:8] = 2        # 4 px of class 2: removed with min_size 5
    labels[5:8, 6:9] = 2        # 9 px of class 2: kept
    out = remove_small_objects(labels, 5)
    expected = labels.copy()
    expected[6, 1] = 0
    expected[1:3, 6:8] = 0
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(remove_small_objects(labels, 0), labels)


def test_fill_holes_fills_background_enclosed_by_one_class():
    labels = np.zeros((9, 14), np.uint8)
    labels[1:6, 1:6] = 1
    labels[3, 3] = 0            # hole in class 1: filled
    labels[1:6, 8:13] = 2
    labels[2:4, 9:11] = 0       # hole in class 2: filled
    labels[4, 11] = 1           # class-1 speck inside class 2 (not in the hole): kept
    labels[7, 0:3] = 1          # background below it touches the border: not a hole
    out = fill_holes(labels)
    expected = labels.copy()
    expected[3, 3] = 1
    expected[2:4, 9:11] = 2
    np.testing.assert_array_equal(out, expected)

    ring = np.zeros((7, 7), np.uint8)
    ring[1:6, 1:6] = 1
    ring[2:5, 2:5] = 0
    ring[3, 3] = 2              # a hole holding another class is left alone
    np.testing.assert_array_equal(fill_holes(ring), ring)


def test_segment_result_outputs(make_onnx):
    image = np.random.default_rng(5).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    with Segmenter(make_onnx()) as seg:
        result = seg.segment(image)
        with pytest.raises(ValueError, match="uint8"):
            seg.segment(image.astype(np.float32))
    assert result.mask.dtype == np.uint8 and set(np.unique(result.mask)) <= {0, 255}
    np.testing.assert_array_equal(result.colorized[..., 0], result.mask)  # black/white
    assert result.overlay.shape == image.shape
    np.testing.assert_array_equal(result.labels, (result.probabilities[..., 0] > 0.5).astype(np.uint8))
