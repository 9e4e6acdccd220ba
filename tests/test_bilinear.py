"""The bilinear upsampling layer: UpSampling2D's values for factors 2..16 at odd sizes, one ONNX Resize
at a dynamic size (no AveragePool), two sizes in ONNX Runtime, and .keras files with it (and with the
earlier stock-layer chain) loading through flexunet's Keras loader in a fresh process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from flexunet.architectures.bilinear import BilinearUpsampling, upsample_bilinear  # noqa: E402


def _model(factor: int = 4, channels: int = 3, upsample=upsample_bilinear):
    """A tiny model of any input size: Conv2D -> bilinear x factor -> Conv2D."""
    inputs = keras.Input((None, None, channels), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = upsample(x, factor, "up")
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", name="probabilities")(x)
    return keras.Model(inputs, outputs)


def _old_chain(x, factor, name):
    """The earlier implementation (nearest repeats and AveragePooling2D means; stock layers only),
    kept here to check that models saved with it still load."""
    def axis(y, window, tag):
        wide = keras.layers.AveragePooling2D(window(factor + 1), strides=1, padding="same", name=f"{tag}_m1")(y)
        wide = keras.layers.Rescaling((factor + 1) / (2 * factor), name=f"{tag}_s1")(wide)
        narrow = keras.layers.AveragePooling2D(window(factor - 1), strides=1, padding="same", name=f"{tag}_m2")(y)
        narrow = keras.layers.Rescaling((factor - 1) / (2 * factor), name=f"{tag}_s2")(narrow)
        return keras.layers.Add(name=f"{tag}_sum")([wide, narrow])

    y = keras.layers.UpSampling2D((factor, 1), interpolation="nearest", name=f"{name}_rh")(x)
    y = axis(y, lambda n: (n, 1), f"{name}_h")
    y = keras.layers.UpSampling2D((1, factor), interpolation="nearest", name=f"{name}_rw")(y)
    return axis(y, lambda n: (1, n), f"{name}_w")


@pytest.mark.parametrize("factor", [2, 4, 8, 16])
def test_equals_upsampling2d_bilinear_at_odd_sizes(factor):
    x = np.random.default_rng(factor).normal(0, 10, (2, 5, 7, 3)).astype(np.float32)
    ref = keras.layers.UpSampling2D(factor, interpolation="bilinear")(x).numpy()
    layer = BilinearUpsampling(factor)
    got = layer(x).numpy()
    assert got.shape == (2, 5 * factor, 7 * factor, 3) == ref.shape
    assert np.abs(got - ref).max() <= 1e-6
    assert layer.compute_output_shape((None, None, 7, 3)) == (None, None, 7 * factor, 3)
    assert not layer.weights  # weightless: a model's weight layout does not depend on it


@pytest.mark.parametrize("factor", [0, 1, 2.5])
def test_refuses_a_factor_that_is_not_an_integer_of_at_least_2(factor):
    with pytest.raises(ValueError, match="integer factor >= 2"):
        BilinearUpsampling(factor)


@pytest.mark.slow
def test_exports_to_one_resize_at_a_dynamic_size(tmp_path):
    pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from flexunet.core.modelinfo import ModelInfo
    from flexunet.export.onnx import convert

    model = _model(factor=8)
    path = convert(model, tmp_path / "m.onnx", ModelInfo(None, None, 3, 1))
    ops = [n.op_type for n in onnx.load_model(str(path)).graph.node]
    assert ops.count("Resize") == 1 and "AveragePool" not in ops, ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for shape in [(1, 9, 13, 3), (2, 16, 6, 3)]:
        x = np.random.default_rng(shape[1]).uniform(0, 1, shape).astype(np.float32)
        got = session.run(None, {name: x})[0]
        ref = np.asarray(model.predict_on_batch(x))
        assert got.shape == (shape[0], shape[1] * 8, shape[2] * 8, 1)
        assert np.abs(got - ref).max() <= 1e-5


@pytest.mark.slow
def test_keras_files_with_the_layer_or_the_old_chain_load_in_a_fresh_process(tmp_path):
    x = np.random.default_rng(0).uniform(0, 1, (1, 6, 10, 3)).astype(np.float32)
    for tag, upsample in (("layer", upsample_bilinear), ("chain", _old_chain)):
        model = _model(factor=4, upsample=upsample)
        model.save(tmp_path / f"{tag}.keras")
        np.save(tmp_path / f"{tag}.npy", np.asarray(model.predict_on_batch(x)))
    np.save(tmp_path / "x.npy", x)
    # a fresh interpreter: nothing but flexunet's loader may have registered the layer
    script = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from flexunet.runtime.backends.keras import load_keras_model\n"
        "d = Path(sys.argv[1]); x = np.load(d / 'x.npy')\n"
        "for tag in ('layer', 'chain'):\n"
        "    m = load_keras_model(d / f'{tag}.keras')\n"
        "    kinds = {type(l).__name__ for l in m.layers}\n"
        "    diff = float(np.abs(np.asarray(m.predict_on_batch(x)) - np.load(d / f'{tag}.npy')).max())\n"
        "    print(tag, 'BilinearUpsampling' in kinds, diff)\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=300, cwd=Path(__file__).resolve().parent)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line.split()[:1] in
            (["layer"], ["chain"])}
    assert rows["layer"][0] == "True" and rows["chain"][0] == "False", out.stdout
    assert float(rows["layer"][1]) == 0.0 and float(rows["chain"][1]) == 0.0, out.stdout
