"""``flexunet infer`` through click's CliRunner: outputs, backend line, stage table, exit codes,
inputs listed and images decoded once, help texts that say where each default comes from."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import flexunet.runtime.infer_cli as infer_cli_module
import flexunet.runtime.segmenter as segmenter_module
from flexunet.cli import cli
from flexunet.core import tiling
from flexunet.core.errors import EXIT_CODES_HELP, EXIT_OK, EXIT_SKIPPED, EXIT_USAGE
from flexunet.core.modelinfo import ModelInfo
from flexunet.runtime.layout import FIT_MAX_SIDE, resolve_layout
from flexunet.runtime.outputs import RECORD_DIR


pytestmark = pytest.mark.usefixtures("isolate_cli")


def infer(*args):
    return CliRunner().invoke(cli, ["infer", *map(str, args)])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == EXIT_USAGE, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_infer_writes_outputs_and_reports_backend_and_stages(make_onnx, make_images, tmp_path):
    images = make_images(tmp_path / "in", [(90, 120), (40, 30), (130, 70)])
    out = tmp_path / "out"
    result = infer(make_onnx(), tmp_path / "in", "-o", out, "--colorize", "--overlay", "--probabilities",
                   "--tile", 64, "--overlap", 16, "--batch-size", 3, "--blend", "gaussian", "--min-size", 4,
                   "--fill-holes")
    assert result.exit_code == EXIT_OK, (result.stdout, result.stderr)
    assert "backend: onnxruntime CPUExecutionProvider" in result.stderr
    assert "tiling: tiles 64x64, overlap 16, gaussian blend, batch 3" in result.stderr
    assert "[3/3]" in result.stderr and "slides/s" in result.stderr
    table = result.stdout.splitlines()
    stages = [line.split()[0] for line in table[1:-1]]
    assert stages == ["decode", "preprocess", "batch", "inference", "blend", "post", "write", "wall"]
    assert table[-1].startswith("done 3, skipped 0, resumed 0")
    for image in images:
        for name in (f"{image.stem}.png", f"{image.stem}_color.png", f"{image.stem}_overlay.png",
                     f"{image.stem}_prob.npy"):
            assert (out / name).is_file(), name
    assert np.load(out / "img01_prob.npy").shape == (40, 30, 1)

    again = infer(make_onnx(), tmp_path / "in", "-o", out, "--colorize", "--overlay", "--probabilities",
                  "--tile", 64, "--overlap", 16, "--batch-size", 3, "--blend", "gaussian", "--min-size", 4,
                  "--fill-holes", "--resume")
    assert again.exit_code == EXIT_OK
    assert again.stdout.splitlines()[-1] == "done 0, skipped 0, resumed 3"


def test_corrupt_inputs_are_skipped_with_exit_code_3(make_onnx, make_images, tmp_path):
    make_images(tmp_path / "in", [(50, 60), (70, 40)])
    (tmp_path / "in" / "x.png").write_bytes(b"\x89PNG garbage" * 10)
    result = infer(make_onnx(), tmp_path / "in", "-o", tmp_path / "out")
    assert result.exit_code == EXIT_SKIPPED, (result.stdout, result.stderr)
    assert "done 2, skipped 1, resumed 0" in result.stdout
    assert f"skipped: {tmp_path / 'in' / 'x.png'}: cannot decode image" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["img00.png", "img01.png"]


def test_bad_models_are_one_line_errors(make_onnx, make_images, tmp_path):
    make_images(tmp_path / "in", [(20, 20)])
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    assert_one_line_error(infer(tmp_path / "absent.onnx", tmp_path / "in", "-o", tmp_path / "out"),
                          "absent.onnx: no such model file")
    assert_one_line_error(infer(corrupt, tmp_path / "in", "-o", tmp_path / "out"),
                          "corrupt.onnx: not a readable ONNX model")
    assert_one_line_error(infer(make_onnx("bare.onnx", metadata=False), tmp_path / "in", "-o", tmp_path / "out"),
                          "bare.onnx: no flexunet metadata")
    assert_one_line_error(infer(make_onnx(), tmp_path / "in", "-o", tmp_path / "out", "--backend", "tensorrt"),
                          "TensorRT")
    assert_one_line_error(infer(make_onnx("fixed.onnx", fixed=(32, 32)), tmp_path / "in", "-o", tmp_path / "out",
                                "--whole"), "--whole needs a model that accepts any input size")
    assert not (tmp_path / "out").exists()


def test_usage_errors_exit_2(make_onnx, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(infer(make_onnx(), tmp_path / "empty", "-o", tmp_path / "out"), "no images in")
    result = infer(make_onnx(), tmp_path / "empty", "-o", tmp_path / "out", "--tile", "big")
    assert result.exit_code == EXIT_USAGE and "is not a tile size" in result.stderr


def test_help_documents_options_and_exit_codes():
    result = infer("--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for option in ("--backend", "--tile", "--overlap", "--batch-size", "--blend", "--whole", "--colorize",
                   "--overlay", "--probabilities", "--fill-holes", "--min-size", "--threads", "--config",
                   "--resume"):
        assert option in text
    assert " ".join(EXIT_CODES_HELP.split()) in text


def test_inputs_are_listed_once_and_each_image_decoded_once_with_a_fitted_tile(make_onnx, make_images, tmp_path,
                                                                               monkeypatch):
    images = make_images(tmp_path / "in", [(130, 170), (60, 50), (90, 300)])
    listings, decodes = [], Counter()
    real_expand, real_read = infer_cli_module.expand_inputs, segmenter_module.read_image

    def counting_expand(items):
        listings.append(list(items))
        return real_expand(items)

    def counting_read(path, *args, **kwargs):
        decodes[Path(path)] += 1
        return real_read(path, *args, **kwargs)

    for module in (infer_cli_module, segmenter_module):
        monkeypatch.setattr(module, "expand_inputs", counting_expand)
    monkeypatch.setattr(segmenter_module, "read_image", counting_read)
    out = tmp_path / "out"
    result = infer(make_onnx(multiple=8), tmp_path / "in", "-o", out, "--tile", "fit", "--overlap", 8)
    assert result.exit_code == EXIT_OK, (result.stdout, result.stderr)
    assert "tiling: tiles fitted to the image size" in result.stderr
    assert listings == [[tmp_path / "in"]]
    assert decodes == {p: 1 for p in images}
    record = json.loads((out / RECORD_DIR / "img00.json").read_text())
    assert record["options"]["tile"] == list(tiling.fit_tile(130, 170, 8, 8, FIT_MAX_SIDE))


def test_help_says_where_each_default_comes_from():
    text = " ".join(infer("--help").stdout.split())
    bare = ModelInfo(height=None, width=None, channels=3, num_classes=1)  # metadata that says nothing
    layout = resolve_layout(bare)
    assert ("--overlap INTEGER RANGE Tile overlap in pixels [default: the model's measured overlap (metadata "
            "'measured_overlap'") in text and f"(metadata 'overlap'), else {layout.overlap};" in text
    assert f"Blending of overlapping tiles [default: the model's, else {layout.blend}]" in text
    assert f"Foreground threshold of a binary model [default: the model's, else {bare.threshold}]" in text
    assert layout.fit and "[default: a fixed-size model's input size; fit for a dynamic-size model]" in text
    assert f"up to {FIT_MAX_SIDE} px" in text
    assert "[default: 64]" not in text and "[default: cosine]" not in text

