"""Backends: loading by file type, ONNX Runtime provider choice, metadata, errors, Keras reference."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flexunet.runtime.backends import BACKENDS, Backend, load_backend
from flexunet.runtime.backends.base import RunnerBackend, as_backend
from flexunet.runtime.backends.onnx import OnnxBackend, usable_providers
from flexunet.core.errors import FlexunetError, MissingDependencyError, ModelError

REPO = Path(__file__).resolve().parents[1]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _pointwise_reference(model_path: Path, batch: np.ndarray) -> np.ndarray:
    """What the 1x1-conv sigmoid test model computes, in numpy."""
    import onnx
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(model_path)).graph.initializer}
    w = inits["w"][:, :, 0, 0]  # (K, C)
    return _sigmoid(batch @ w.T + inits["b"]).astype(np.float32)


def test_onnx_backend_predicts_what_the_model_computes(make_onnx):
    path = make_onnx(kernel=1)
    batch = np.random.default_rng(1).uniform(0, 1, size=(3, 17, 23, 3)).astype(np.float32)
    with load_backend(path) as backend:
        assert isinstance(backend, OnnxBackend)
        assert backend.name == "onnxruntime CPUExecutionProvider"
        assert backend.path == path
        assert backend.fixed_size is None and backend.max_batch is None
        assert backend.info.num_classes == 1 and backend.info.tile_size == (64, 64)
        probs = backend.predict(batch)
    assert probs.dtype == np.float32 and probs.shape == (3, 17, 23, 1)
    np.testing.assert_allclose(probs, _pointwise_reference(path, batch), atol=1e-6)


def test_fixed_size_and_fixed_batch_are_read_from_the_input_shape(make_onnx):
    path = make_onnx(kernel=1, fixed=(32, 48), batch=2)
    batch = np.random.default_rng(2).uniform(0, 1, size=(5, 32, 48, 3)).astype(np.float32)
    with load_backend(path, backend="onnxruntime-cpu") as backend:
        assert backend.fixed_size == (32, 48)
        assert backend.max_batch == 2
        assert backend.accepts(32, 48) and not backend.accepts(64, 48)
        probs = backend.predict(batch)  # split into 2 + 2 + 1 (zero-padded) runs
    np.testing.assert_allclose(probs, _pointwise_reference(path, batch), atol=1e-6)


def test_dynamic_model_accepts_multiples_only(make_onnx):
    with load_backend(make_onnx(multiple=16)) as backend:
        assert backend.accepts(32, 48) and not backend.accepts(32, 40)


def test_auto_uses_usable_providers_only_and_stays_quiet(make_onnx, capfd):
    providers = usable_providers()
    assert providers[-1] == "CPUExecutionProvider"
    with load_backend(make_onnx(), backend="auto") as backend:
        assert backend.name == f"onnxruntime {providers[0]}"
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


@pytest.mark.skipif("CUDAExecutionProvider" in usable_providers(), reason="CUDA is usable here")
def test_unusable_cuda_provider_is_a_one_line_error(make_onnx):
    with pytest.raises(MissingDependencyError, match="CUDAExecutionProvider is not usable here"):
        load_backend(make_onnx(), backend="onnxruntime-cuda")


def test_onnx_without_flexunet_metadata(make_onnx):
    path = make_onnx(metadata=False)
    with pytest.raises(ModelError, match="no flexunet metadata") as err:
        load_backend(path)
    assert str(path) in str(err.value)


def test_corrupt_and_missing_models(tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 this is not a protobuf" * 20)
    with pytest.raises(ModelError, match="not a readable ONNX model") as err:
        load_backend(corrupt)
    assert str(corrupt) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelError, match="no such model file"):
        load_backend(tmp_path / "absent.onnx")
    other = tmp_path / "model.pt"
    other.write_bytes(b"x")
    with pytest.raises(ModelError, match="unsupported model type"):
        load_backend(other)


def test_backend_names_and_options_are_checked(make_onnx):
    path = make_onnx()
    assert "auto" in BACKENDS and "keras" in BACKENDS
    with pytest.raises(FlexunetError, match="unknown backend"):
        load_backend(path, backend="magic")
    with pytest.raises(ModelError, match="keras backend loads .keras models only"):
        load_backend(path, backend="keras")
    with pytest.raises(FlexunetError, match="--config applies to .keras models only"):
        load_backend(path, config=path)


def test_tensorrt_routes_to_the_tensorrt_backend(make_onnx, tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    if importlib.util.find_spec("flexunet.runtime.backends.tensorrt") is None:
        with pytest.raises(MissingDependencyError, match="TensorRT backend needs a GPU and the tensorrt package"):
            load_backend(engine)
    elif importlib.util.find_spec("tensorrt") is None:
        with pytest.raises((MissingDependencyError, ModelError), match="TensorRT|tensorrt"):
            load_backend(engine, backend="tensorrt")
    else:
        pytest.skip("TensorRT is installed here")


def test_duck_typed_runners_are_adapted(make_onnx):
    with load_backend(make_onnx(kernel=1)) as onnx_backend:
        class Runner:  # the attributes of a Backend, without the class
            name, info, max_batch, fixed_size = "runner", onnx_backend.info, 8, None
            closed = False

            def predict(self, batch):
                return onnx_backend.predict(batch)

            def close(self):
                self.closed = True

        runner = Runner()
        adapted = as_backend(runner, "model.bin")
        assert isinstance(adapted, RunnerBackend) and isinstance(adapted, Backend)
        assert adapted.path == Path("model.bin") and adapted.max_batch == 8
        adapted.interrupt()  # the runner has none: a no-op
        assert adapted.predict(np.zeros((1, 8, 8, 3), np.float32)).shape == (1, 8, 8, 1)
        adapted.close()
        assert runner.closed
        assert as_backend(onnx_backend) is onnx_backend


def test_runtime_imports_do_not_import_tensorflow():
    code = ("import sys, flexunet, flexunet.runtime, flexunet.runtime.segmenter, flexunet.runtime.infer_cli, "
            "flexunet.runtime.pipeline, flexunet.runtime.segment, flexunet.runtime.layout, "
            "flexunet.runtime.outputs, flexunet.runtime.admission, flexunet.core.blending, "
            "flexunet.runtime.postprocess, flexunet.runtime.backends, "
            "flexunet.runtime.backends.onnx, flexunet.runtime.backends.keras; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["False", "False"]


# -- Keras (the reference backend) -------------------------------------------------------------------
KERAS_CONFIG = """\
[model]
image_width    = 32
image_height   = 32
image_channels = 3
num_classes    = 1
num_layers     = 2
base_filters   = 2
dropout_rate   = 0.0

[tiledinfer]
overlapping = 8
"""


@pytest.mark.slow
def test_keras_backend_reproduces_the_model(tmp_path):
    pytest.importorskip("tensorflow")
    from flexunet.runtime.segmenter import Segmenter
    from flexunet.architectures.unet import build_unet

    folder = tmp_path / "models"
    folder.mkdir()
    model = build_unet(32, 32, 3, num_classes=1, base_filters=2, num_layers=2, dropout_rate=0.0)
    model.save(folder / "best_model.keras")
    (folder / "train_eval_infer.config").write_text(KERAS_CONFIG, encoding="utf-8")
    batch = np.random.default_rng(3).uniform(0, 255, size=(2, 32, 32, 3)).astype(np.float32)

    with load_backend(folder / "best_model.keras") as backend:
        assert backend.name.startswith("keras ")
        assert backend.fixed_size == (32, 32)
        assert backend.info.multiple == 2 and backend.info.overlap == 8
        np.testing.assert_allclose(backend.predict(batch), model.predict_on_batch(batch), atol=1e-6)
        image = np.random.default_rng(4).integers(0, 255, size=(45, 70, 3), dtype=np.uint8)
        result = Segmenter(backend).segment(image)
        assert result.labels.shape == (45, 70)

    alone = tmp_path / "alone"
    alone.mkdir()
    (folder / "best_model.keras").rename(alone / "model.keras")
    with pytest.raises(ModelError, match="pass --config") as err:
        load_backend(alone / "model.keras")
    assert "model.keras" in str(err.value)
    with load_backend(alone / "model.keras", config=folder / "train_eval_infer.config") as backend:
        assert backend.info.tile_size == (32, 32)
