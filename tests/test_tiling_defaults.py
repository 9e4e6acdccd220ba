"""Tiling defaults that agree with the whole image: the overlap measured at export and recorded in the
model's metadata, ``fit`` tiles for dynamic-size models, the batch picked from a memory budget, and
``flexunet infer --help`` saying where each default comes from.

The model here is a tiny dynamic-size network with a receptive field of about 20 pixels and one
2x down-sampling (size multiple 2), built with onnx.helper: far from pointwise, so tiles that overlap
too little disagree with a whole-image pass.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from flexunet.core import tiling
from flexunet.core.errors import FlexunetError
from flexunet.core.imageio import read_image
from flexunet.core.metrics import dice
from flexunet.core.modelinfo import ModelInfo
from flexunet.core.preprocess import Preprocess
from flexunet.export import margin, steps
from flexunet.export.onnx import read_info
from flexunet.runtime import Segmenter
from flexunet.runtime.infer_cli import infer_cmd
from flexunet.runtime.layout import MAX_BUDGET_BATCH, Layout, batch_tile_bytes


def _conv(rng, name: str, cin: int, cout: int, k: int, scale: float = 1.0):
    w = (rng.normal(size=(cout, cin, k, k)) * scale / np.sqrt(cin * k * k)).astype(np.float32)
    b = rng.normal(scale=0.1, size=cout).astype(np.float32)
    return [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]


def _tiny_unet(path, overlap: int = 2, **info):
    """image NHWC -> conv5 relu -> maxpool 2 -> conv5 relu -> conv5 relu -> upsample 2 -> conv3 -> sigmoid."""
    rng = np.random.default_rng(3)
    inits = (_conv(rng, "c1", 3, 6, 5, 1.5) + _conv(rng, "c2", 6, 6, 5, 1.5) + _conv(rng, "c3", 6, 6, 5, 1.5)
             + _conv(rng, "c4", 6, 1, 3, 3))
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    node = helper.make_node
    nodes = [
        node("Transpose", ["image"], ["x0"], perm=[0, 3, 1, 2]),
        node("Conv", ["x0", "c1_w", "c1_b"], ["x1"], pads=[2] * 4), node("Relu", ["x1"], ["r1"]),
        node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        node("Conv", ["p1", "c2_w", "c2_b"], ["x2"], pads=[2] * 4), node("Relu", ["x2"], ["r2"]),
        node("Conv", ["r2", "c3_w", "c3_b"], ["x3"], pads=[2] * 4), node("Relu", ["x3"], ["r3"]),
        node("Resize", ["r3", "", "scales"], ["up"], mode="nearest"),
        node("Conv", ["up", "c4_w", "c4_b"], ["logits"], pads=[1] * 4),
        node("Sigmoid", ["logits"], ["probs"]),
        node("Transpose", ["probs"], ["probabilities"], perm=[0, 2, 3, 1]),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", "H", "W", 3])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", "H", "W", 1])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    meta = dict(height=None, width=None, channels=3, num_classes=1, multiple=2, preprocess=Preprocess(scale=1 / 255),
                tile=(96, 96), overlap=overlap)
    helper.set_model_props(model, ModelInfo(**{**meta, **info}).to_metadata())
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """The tiny model after the export's tiling step (config overlap 2), and the step's report entry."""
    folder = tmp_path_factory.mktemp("measured")
    path = _tiny_unet(folder / steps.FP32_ONNX)
    ctx = SimpleNamespace(tmp=folder, info=read_info(path), cfg=None, opts=None)
    entry = steps.tiling_defaults(ctx, folder / "tiling")
    return path, entry


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    import cv2

    folder = tmp_path_factory.mktemp("slides")
    rng = np.random.default_rng(5)
    paths = []
    for i, (h, w) in enumerate([(200, 300), (257, 190), (150, 150)]):
        noise = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 4)
        image = cv2.normalize(noise, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        paths.append(folder / f"s{i}.png")
        cv2.imwrite(str(paths[-1]), image)
    return paths


def _agreement(model, paths, **options) -> list[float]:
    with Segmenter(model, whole=True) as whole, Segmenter(model, **options) as tiled:
        return [dice(tiled.segment(p).labels, whole.segment(p).labels) for p in paths]


def test_the_measured_overlap_is_recorded_and_used_unless_an_overlap_is_given(measured):
    path, entry = measured
    info = read_info(path)
    assert entry["agrees"] and entry["measured_overlap"] == info.measured_overlap
    assert 2 <= info.measured_overlap <= 48 and info.measured_overlap % 2 == 0          # multiples of the size multiple
    assert info.overlap == 2                                                              # the config's value is kept
    tried = entry["tried"]
    assert [r["overlap"] for r in tried] == list(range(2, info.measured_overlap + 1, 2))  # smallest that agrees
    assert all(not r["agrees"] for r in tried[:-1]) and tried[-1]["dice"] >= margin.AGREEMENT_DICE
    assert info.activation_bytes >= 4 * (3 + 6 + 6 + 1)                                   # at least the full-size tensors
    with Segmenter(path, tile=64) as seg:
        assert seg.overlap == info.measured_overlap
    with Segmenter(path, tile=64, overlap=3) as seg:
        assert seg.overlap == 3


def test_tiles_agree_with_the_whole_image_with_the_defaults(measured, slides):
    path, _ = measured
    for options in (dict(), dict(tile=96), dict(tile=128)):  # fit (the default), and the model's tile or larger
        worst = min(_agreement(path, slides, **options))
        assert worst >= 0.999, (options, worst)
    # The same tiles with the config's overlap (2 px) do not: the measured overlap is what makes them agree.
    assert min(_agreement(path, slides, tile=96, overlap=2)) < 0.999


def test_tiles_start_on_the_size_multiple():
    assert tiling.tile_starts(100, 40, 10, align=4) == [0, 28, 56, 60]
    assert all(s % 4 == 0 for s in tiling.tile_starts(100, 40, 13, align=4))
    padded = Layout((40, 40), 10, multiple=4).cut(np.zeros((98, 101, 3), np.float32))
    assert padded[0].shape[:2] == (100, 104) and all(y % 4 == 0 and x % 4 == 0 for y, x in padded[2])
    with pytest.raises(ValueError, match="multiples of align"):
        tiling.tile_starts(101, 40, 10, align=4)


def test_fit_is_the_default_of_dynamic_size_models_only(measured, make_onnx):
    path, _ = measured
    with Segmenter(path) as seg:
        assert seg.fit and seg.layout((1920, 2560)).tile is not None
        assert "fitted to the image size" in seg.describe()
    with Segmenter(make_onnx(fixed=(64, 64)), backend="onnxruntime") as seg:
        assert not seg.fit and seg.tile == (64, 64)


def test_the_batch_comes_from_the_memory_budget(measured, slides):
    path, _ = measured
    info = read_info(path)
    per_tile = batch_tile_bytes((64, 64), info)
    with Segmenter(path, tile=64, memory_budget=3 * per_tile + 1) as seg:
        assert seg.batch_size == 3
    with Segmenter(path, tile=64, memory_budget=100 * per_tile) as seg:
        assert seg.batch_size == MAX_BUDGET_BATCH
    with Segmenter(path, tile=64, batch_size=5, memory_budget=per_tile) as seg:
        assert seg.batch_size == 5                                               # --batch-size wins
    with Segmenter(path, memory_budget=2 * batch_tile_bytes((96, 96), info)) as seg:  # fit: tiles bounded by it
        tile = seg.layout(read_image(slides[0]).shape[:2]).tile
        assert max(tile) <= 96 * 1.42 and seg.batch_for(seg.layout((200, 300))) >= 1
    with pytest.raises(FlexunetError, match="too small for one 512x512 tile"):
        Segmenter(path, tile=512, memory_budget=2**20)


def test_infer_refuses_a_budget_too_small_for_one_tile_in_one_line(measured, slides, tmp_path):
    path, _ = measured
    result = CliRunner().invoke(infer_cmd, [str(path), str(slides[0]), "-o", str(tmp_path / "out"),
                                            "--tile", "1024", "--memory-budget", "1M"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--memory-budget 1 MiB is too small for one 1024x1024 tile" in lines[0]
    bad = CliRunner().invoke(infer_cmd, [str(path), str(slides[0]), "-o", str(tmp_path / "out"),
                                         "--memory-budget", "lots"])
    assert bad.exit_code == 2 and "memory budget must be a size like 1G" in bad.output


def test_infer_help_says_where_each_default_comes_from():
    text = " ".join(CliRunner().invoke(infer_cmd, ["--help"], terminal_width=200).output.split())
    assert "fit for a dynamic-size model" in text and "fixed-size model's input size" in text
    assert "measured overlap (metadata 'measured_overlap'" in text and "[tiledinfer] overlapping" in text
    assert "fit in --memory-budget" in text and "metadata 'activation_bytes'" in text
    assert "--memory-budget SIZE" in text and "default: 1G" in text
