"""The OpenVINO backend (``--backend openvino`` / ``openvino-bf16``) on the tiny ONNX models: outputs
against ONNX Runtime, batch and size handling, metadata, Segmenter and CLI runs, parity, interrupt,
and the one-line refusals (no openvino, no BF16 on this CPU)."""
from __future__ import annotations

import _thread
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from flexunet.cli import cli
from flexunet.core.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, MissingDependencyError, ModelError
from flexunet.core.imageio import read_image
from flexunet.core.machine import cpu_has_bf16
from flexunet.runtime.backends import BACKENDS, Backend, load_backend
from flexunet.runtime.parity import ModelSpec
from flexunet.runtime.segmenter import Segmenter

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'flexunet[openvino]')")

from flexunet.runtime.backends import openvino as ov_backend  # noqa: E402 -- after the skip

REPO = Path(__file__).resolve().parents[1]
needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no BF16 instructions (AVX512_BF16 or AMX)")
# BF16 keeps 8 significant bits: inputs and weights rounded by up to 2**-9 of their value move the
# 27-term logits of the 3x3 test model by a few 1e-2, its probabilities by 1e-3 on average.
BF16_MAX_DIFF, BF16_MEAN_DIFF = 2e-2, 3e-3

pytestmark = pytest.mark.usefixtures("isolate_cli")


def _batch(n: int, height: int, width: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, height, width, 3)).astype(np.float32)


def _both(path: Path, batch: np.ndarray, backend: str = "openvino") -> tuple[np.ndarray, np.ndarray]:
    """(OpenVINO's, ONNX Runtime's) probabilities for ``batch``."""
    with load_backend(path, backend) as ov, load_backend(path, "onnxruntime-cpu") as ort:
        return ov.predict(batch), ort.predict(batch)


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == EXIT_USAGE, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# -- the backend ---------------------------------------------------------------------------------------
def test_names_and_model_specs():
    assert {"openvino", "openvino-bf16"} <= set(BACKENDS)
    assert ModelSpec.parse("m.onnx@openvino-bf16") == ModelSpec(Path("m.onnx"), "openvino-bf16")
    assert ModelSpec.parse("m.onnx@openvino").label == "m.onnx@openvino"


@pytest.mark.parametrize("classes", [1, 3])
def test_fp32_matches_onnxruntime_for_any_batch_and_size(make_onnx, classes):
    path = make_onnx(classes=classes, kernel=3)
    with load_backend(path, "openvino") as backend:
        assert isinstance(backend, ov_backend.OpenVinoBackend)
        assert backend.name.startswith("openvino ") and backend.name.endswith(" CPU fp32")
        assert backend.path == path and backend.info.precision == "fp32"
        assert backend.max_batch is None and backend.fixed_size is None
        assert backend.info.num_classes == classes and backend.info.tile_size == (64, 64)
    for n, height, width in [(1, 64, 64), (4, 64, 64), (3, 17, 23), (2, 96, 40), (1, 64, 64)]:
        ov, ort = _both(path, _batch(n, height, width, seed=n + height))
        assert ov.dtype == np.float32 and ov.shape == (n, height, width, classes)
        np.testing.assert_allclose(ov, ort, atol=1e-5)


def test_one_backend_serves_changing_shapes(make_onnx):
    path = make_onnx(kernel=3)
    with load_backend(path, "openvino") as ov, load_backend(path, "onnxruntime-cpu") as ort:
        for n, height, width in [(4, 64, 64), (1, 32, 32), (4, 64, 64), (2, 48, 80)]:
            batch = _batch(n, height, width, seed=height)
            np.testing.assert_allclose(ov.predict(batch), ort.predict(batch), atol=1e-5)


def test_a_dynamic_model_is_compiled_statically_per_batch_shape_then_dynamically(make_onnx):
    """The first STATIC_COMPILES batch shapes get their own static model (a repeated shape is not
    compiled again); later new shapes run on the dynamic one; every result matches ONNX Runtime."""
    path = make_onnx(kernel=3)
    shapes = [(1, 16 + 8 * i, 24) for i in range(ov_backend.STATIC_COMPILES + 3)]
    with load_backend(path, "openvino") as ov, load_backend(path, "onnxruntime-cpu") as ort:
        for step, (n, height, width) in enumerate([shapes[0], shapes[0], shapes[1], shapes[0]] + shapes):
            batch = _batch(n, height, width, seed=step)
            np.testing.assert_allclose(ov.predict(batch), ort.predict(batch), atol=1e-5)
            if step == 3:  # two shapes so far, each compiled once
                assert ov._static_compiles == 2
        assert ov._static_compiles == ov_backend.STATIC_COMPILES
        assert len([shape for shape in ov._requests if shape is not None]) == ov_backend.STATIC_KEPT
        assert None in ov._requests  # the dynamic model ran the later shapes


def test_a_model_of_fixed_shape_is_not_recompiled(make_onnx):
    with load_backend(make_onnx(fixed=(32, 32), batch=2), "openvino") as ov:
        for n in (1, 3, 2):
            ov.predict(_batch(n, 32, 32))
        assert ov._static_compiles == 0 and list(ov._requests) == [None]


def test_results_are_copies(make_onnx):
    """A result stays valid while the next batch runs (the pipeline keeps several)."""
    with load_backend(make_onnx(), "openvino") as backend:
        first = backend.predict(_batch(2, 32, 32, seed=1))
        kept = first.copy()
        backend.predict(_batch(2, 32, 32, seed=2))
    np.testing.assert_array_equal(first, kept)


def test_fixed_size_and_fixed_batch_are_read_from_the_input_shape(make_onnx):
    path = make_onnx(kernel=1, fixed=(32, 48), batch=2)
    with load_backend(path, "openvino") as backend:
        assert backend.fixed_size == (32, 48) and backend.max_batch == 2
        assert backend.accepts(32, 48) and not backend.accepts(64, 48)
    ov, ort = _both(path, _batch(5, 32, 48))  # 2 + 2 + 1 (zero-padded) runs
    assert ov.shape == (5, 32, 48, 1)
    np.testing.assert_allclose(ov, ort, atol=1e-5)


def test_dynamic_model_accepts_multiples_only(make_onnx):
    with load_backend(make_onnx(multiple=16), "openvino") as backend:
        assert backend.accepts(32, 48) and not backend.accepts(32, 40)


@needs_bf16
def test_bf16_is_close_to_fp32_and_says_so(make_onnx):
    path = make_onnx(classes=3, kernel=3)
    with load_backend(path, "openvino-bf16") as backend:
        assert backend.name.endswith(" CPU bf16") and backend.info.precision == "bf16"
    ov, ort = _both(path, _batch(3, 40, 56), "openvino-bf16")
    assert ov.dtype == np.float32 and ov.shape == ort.shape
    diff = np.abs(ov - ort)
    assert 0 < diff.max() <= BF16_MAX_DIFF and diff.mean() <= BF16_MEAN_DIFF  # it did compute in BF16


@needs_bf16
def test_bf16_keeps_a_quantised_model_precision(make_onnx):
    with load_backend(make_onnx(precision="int8"), "openvino-bf16") as backend:
        assert backend.info.precision == "int8"


def test_bad_models_are_one_line_model_errors(make_onnx, tmp_path):
    plain = make_onnx(metadata=False)
    with pytest.raises(ModelError, match="no flexunet metadata") as err:
        load_backend(plain, "openvino")
    assert str(plain) in str(err.value)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 this is not a protobuf" * 20)
    with pytest.raises(ModelError, match="not a readable ONNX model") as err:
        load_backend(corrupt, "openvino")
    assert str(corrupt) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelError, match="openvino runs .onnx models"):
        load_backend(_touch(tmp_path / "model.keras"), "openvino")
    with pytest.raises(ModelError, match="metadata key 'threshold'"):
        load_backend(make_onnx("bad.onnx", threshold=3.0), "openvino")
    three = dict(num_classes=3, class_names=["a", "b", "c"], class_colors=[(0, 0, 0)] * 3)
    with pytest.raises(ModelError, match="gives 1 output channels"):
        load_backend(make_onnx("wrong.onnx", classes=1, **three), "openvino")


def _touch(path: Path) -> Path:
    path.write_bytes(b"x")
    return path


# -- interrupt -----------------------------------------------------------------------------------------
def test_interrupt_without_a_predict_in_progress_does_nothing(make_onnx):
    with load_backend(make_onnx(kernel=1), "openvino") as backend:
        batch = _batch(2, 32, 32)
        expected = backend.predict(batch)
        backend.interrupt()
        np.testing.assert_array_equal(backend.predict(batch), expected)


def test_interrupt_cancels_a_predict_in_flight(make_onnx):
    """The predict in flight raises KeyboardInterrupt (cancelled, or finished as the interrupt came;
    it may return only if the interrupt came after its last check), and the backend then computes
    right results for batches of other shapes (a cancelled OpenVINO model is rebuilt)."""
    with load_backend(make_onnx(kernel=3), "openvino", threads=1) as backend:
        big, small = _batch(64, 256, 256), _batch(1, 32, 32)
        expected = backend.predict(small)
        for _ in range(3):
            outcome = {}

            def work():
                try:
                    outcome["result"] = backend.predict(big)
                except KeyboardInterrupt:
                    outcome["interrupted"] = True

            thread = threading.Thread(target=work)
            thread.start()
            while backend._running is None and thread.is_alive():
                time.sleep(0.001)
            backend.interrupt()
            thread.join()
            assert outcome == {"interrupted": True} or outcome["result"].shape == (64, 256, 256, 1)
            np.testing.assert_array_equal(backend.predict(small), expected)
            np.testing.assert_array_equal(backend.predict(small), expected)


class _StopAtBatch(Backend):
    """Wraps a backend; as the ``n``-th batch starts, Ctrl-C reaches the main thread."""

    def __init__(self, inner: Backend, n: int):
        self.inner, self.n, self.calls = inner, n, 0
        self.name, self.info, self.path = inner.name, inner.info, inner.path
        self.fixed_size, self.max_batch = inner.fixed_size, inner.max_batch

    def predict(self, batch):
        self.calls += 1
        if self.calls == self.n:
            _thread.interrupt_main()
        return self.inner.predict(batch)

    def interrupt(self):
        self.inner.interrupt()


def test_a_stopped_folder_run_leaves_the_backend_usable(make_onnx, make_images, tmp_path):
    """Ctrl-C during a folder run: the run stops (KeyboardInterrupt, no partial file); the same
    backend then segments the folder like ONNX Runtime."""
    path = make_onnx(kernel=3)
    make_images(tmp_path / "in", [(300, 260)] * 4)
    with load_backend(path, "openvino", threads=1) as backend:
        with Segmenter(_StopAtBatch(backend, 2), batch_size=2) as seg, pytest.raises(KeyboardInterrupt):
            seg.segment_folder(tmp_path / "in", tmp_path / "stopped")
        assert not [f for f in (tmp_path / "stopped").rglob("*") if ".part" in f.name]
        with Segmenter(backend, batch_size=2) as seg:
            assert len(seg.segment_folder(tmp_path / "in", tmp_path / "ov", probabilities=True).done) == 4
    with Segmenter(path, backend="onnxruntime", batch_size=2) as seg:
        seg.segment_folder(tmp_path / "in", tmp_path / "ort", probabilities=True)
    for prob in sorted((tmp_path / "ort").glob("*_prob.npy")):
        np.testing.assert_allclose(np.load(tmp_path / "ov" / prob.name), np.load(prob), atol=1e-5)


def test_a_closed_backend_does_not_run(make_onnx):
    backend = load_backend(make_onnx(kernel=1), "openvino")
    backend.close()
    with pytest.raises(RuntimeError, match="closed"):
        backend.predict(_batch(1, 8, 8))


# -- refusals ------------------------------------------------------------------------------------------
def test_bf16_is_refused_on_a_cpu_without_it(make_onnx, make_images, tmp_path, monkeypatch):
    monkeypatch.setattr(ov_backend, "cpu_has_bf16", lambda: False)
    with pytest.raises(MissingDependencyError, match="needs a CPU with BF16 instructions") as err:
        load_backend(make_onnx(), "openvino-bf16")
    assert "--backend openvino (FP32)" in str(err.value) and "\n" not in str(err.value)
    make_images(tmp_path / "in", [(40, 40)])
    result = _cli("infer", make_onnx(), tmp_path / "in", "-o", tmp_path / "out", "--backend", "openvino-bf16")
    _one_line_error(result, "BF16")
    assert not (tmp_path / "out" / "img00.png").exists()


def test_without_openvino_one_line_names_the_extra(make_onnx, make_images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'flexunet\[openvino\]'"):
        load_backend(make_onnx(), "openvino")
    make_images(tmp_path / "in", [(40, 40)])
    result = _cli("infer", make_onnx(), tmp_path / "in", "-o", tmp_path / "out", "--backend", "openvino")
    _one_line_error(result, "pip install 'flexunet[openvino]'")
    images = tmp_path / "in"
    result = _cli("parity", "--reference", make_onnx(), "--candidate", f"{make_onnx()}@openvino-bf16", images,
                  "-o", tmp_path / "report")
    _one_line_error(result, "pip install 'flexunet[openvino]'")


def test_importing_the_runtime_does_not_import_openvino():
    code = ("import sys, flexunet, flexunet.runtime, flexunet.runtime.backends, flexunet.runtime.infer_cli, "
            "flexunet.runtime.parity_cli, flexunet.runtime.bench_cli, flexunet.cli; "
            "print('openvino' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["False"]


# -- Segmenter and commands ----------------------------------------------------------------------------
def test_segmenter_runs_from_the_metadata(make_onnx, make_images, tmp_path):
    path = make_onnx(kernel=3, overlap=16)
    image = read_image(make_images(tmp_path / "in", [(150, 110)])[0])
    with Segmenter(path, backend="openvino", batch_size=3) as ov:
        with Segmenter(path, backend="onnxruntime", batch_size=3) as ort:
            assert ov.describe() == ort.describe()
            a, b = ov.segment(image), ort.segment(image)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
    assert (a.mask != b.mask).mean() < 1e-3  # only pixels within 1e-5 of the threshold may differ


def test_infer_cli_writes_the_masks_onnxruntime_writes(make_onnx, make_images, tmp_path):
    path = make_onnx(kernel=3)
    images = make_images(tmp_path / "in", [(90, 120), (40, 30), (130, 70)])
    runs = {}
    for backend in ("openvino", "onnxruntime"):
        out = tmp_path / backend
        result = _cli("infer", path, tmp_path / "in", "-o", out, "--backend", backend, "--probabilities")
        assert result.exit_code == EXIT_OK, (result.stdout, result.stderr)
        runs[backend] = out
    assert "backend: openvino " in _cli("infer", path, images[0], "-o", tmp_path / "again",
                                         "--backend", "openvino").stderr
    for image in images:
        a = read_image(runs["openvino"] / f"{image.stem}.png")
        b = read_image(runs["onnxruntime"] / f"{image.stem}.png")
        assert (a != b).mean() < 1e-3, image.name
        np.testing.assert_allclose(np.load(runs["openvino"] / f"{image.stem}_prob.npy"),
                                   np.load(runs["onnxruntime"] / f"{image.stem}_prob.npy"), atol=1e-5)


@needs_bf16
def test_parity_reports_an_openvino_bf16_candidate(make_onnx, make_images, tmp_path):
    path = make_onnx(kernel=3)
    make_images(tmp_path / "in", [(90, 120), (70, 64)])
    report = tmp_path / "report"
    result = _cli("parity", "--reference", path, "--candidate", f"{path}@openvino-bf16",
                  "--candidate", f"{path}@openvino", tmp_path / "in", "-o", report)
    # without masks bf16 is judged by agreement with its own row of the table (dice only, no |dp| limit)
    assert result.exit_code in (EXIT_OK, EXIT_FAILED), (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert any(line.startswith("model.onnx@openvino-bf16 [bf16]: dice vs reference") for line in lines), lines
    assert any(line.startswith("model.onnx@openvino [fp32]") and line.endswith("PASS") for line in lines), lines
    data = json.loads((report / "parity.json").read_text())
    assert "openvino" in json.dumps(data) and "bf16" in json.dumps(data)
    relaxed = _cli("parity", "--reference", path, "--candidate", f"{path}@openvino-bf16", tmp_path / "in",
                   "-o", report, "--min-dice", "bf16=0.99", "--max-abs-diff", "0.01")
    assert relaxed.exit_code == EXIT_OK, (relaxed.stdout, relaxed.stderr)


def test_bench_times_the_openvino_backend(make_onnx, make_images, tmp_path):
    make_images(tmp_path / "in", [(90, 120)])
    result = _cli("bench", make_onnx(), tmp_path / "in", "--backend", "openvino", "--batch-sizes", "1,2",
                  "--repeat", 2, "--warmup", 1, "--runs", 1, "-o", tmp_path / "bench")
    assert result.exit_code == EXIT_OK, (result.stdout, result.stderr)
    data = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert "openvino" in json.dumps(data)
