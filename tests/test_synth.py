"""Synthetic data: deterministic, exact masks, not trivially thresholdable, written in the layout."""
from __future__ import annotations

import json

import numpy as np
import pytest

from flexunet.core.errors import FlexunetError
from flexunet.core.imageio import read_image, read_mask
from flexunet.train import synth
from flexunet.train.synth import CLASS_COLORS_RGB, CLASS_NAMES, KINDS, make_dataset, render_sample


def _render(seed: int, kind: str = "tiles", h: int = 128, w: int = 128):
    return render_sample(np.random.default_rng(seed), h, w, kind)


def _best_threshold_dice(images: list[np.ndarray], masks: list[np.ndarray]) -> float:
    """Best dice of ``channel <= t`` or ``channel > t`` over all thresholds and the B, G, R and gray channels,
    one threshold for all the given images (a histogram sweep: every threshold is tried)."""
    fg = np.concatenate([(m > 0).ravel() for m in masks])
    n_fg = int(fg.sum())
    best = 0.0
    for c in range(4):
        if c < 3:
            ch = np.concatenate([im[..., c].ravel() for im in images])
        else:
            ch = np.concatenate([im.astype(np.float32).mean(-1).round().astype(np.uint8).ravel() for im in images])
        hf = np.cumsum(np.bincount(ch[fg], minlength=256)).astype(np.float64)
        hb = np.cumsum(np.bincount(ch[~fg], minlength=256)).astype(np.float64)
        dark = 2 * hf / (hf + hb + n_fg)                                   # predict fg where ch <= t
        bright = 2 * (n_fg - hf) / ((hf[-1] - hf) + (hb[-1] - hb) + n_fg)  # predict fg where ch > t
        best = max(best, float(dark.max()), float(bright.max()))
    return best


def test_every_kind_is_offered_by_the_command_line():
    from flexunet.train.cli import synth_cmd

    (kind,) = [p for p in synth_cmd.params if p.name == "kind"]
    assert tuple(kind.type.choices) == KINDS


@pytest.mark.usefixtures("isolate_cli")
def test_synth_command_writes_and_reports_the_counts(tmp_path):
    from click.testing import CliRunner

    from flexunet.cli import cli

    out = tmp_path / "ds"
    result = CliRunner().invoke(cli, ["synth", str(out), "--kind", "multiclass", "--train", "2",
                                      "--valid", "1", "--test", "1", "--size", "32", "--seed", "4"])
    assert result.exit_code == 0, (result.output, result.exception)
    first, files = result.stdout.strip().splitlines()
    assert first == f"wrote multiclass dataset to {out} (seed 4): train 2, valid 1, test 1, mini_test 4"
    assert files.startswith("files: 16 new, 0 replaced, 0 already identical, 0 removed") and \
        files.endswith(f"record {out / synth.RECORD_NAME}")
    assert sorted(p.name for p in (out / "train" / "masks").iterdir()) == ["0000.png", "0001.png"]
    again = make_dataset(tmp_path / "api", kind="multiclass", n_train=2, n_valid=1, n_test=1, size=32, seed=4)
    assert again["counts"] == {"train": 2, "valid": 1, "test": 1, "mini_test": 4}
    assert (out / "test/images/0000.png").read_bytes() == (tmp_path / "api/test/images/0000.png").read_bytes()


def test_multiclass_summary_is_a_config_rgb_map(tmp_path):
    """The summary's classes, pasted into a config as [mask] rgb_map and class_names, load as the
    same classes in the same order, background first."""
    from flexunet.core.config import class_colors, class_names, load_config

    summary = make_dataset(tmp_path / "mc", kind="multiclass", n_train=1, n_valid=1, n_test=1, size=32,
                           n_mini=0)
    rgb_map = {tuple(json.loads(k)): v for k, v in summary["class_colors_rgb"].items()}
    config = tmp_path / "train_eval_infer.config"
    config.write_text(f"[model]\nnum_classes = {len(rgb_map)}\nnum_layers = 3\nimage_width = 64\n"
                      f"image_height = 64\n[mask]\nrgb_map = {rgb_map!r}\n"
                      f"class_names = {summary['class_names']!r}\n")
    cfg = load_config(config)
    assert class_names(cfg) == CLASS_NAMES == summary["class_names"]
    assert class_colors(cfg) == sorted(CLASS_COLORS_RGB, key=CLASS_COLORS_RGB.get)
    assert class_colors(cfg)[0] == (0, 0, 0) and class_names(cfg)[0] == "background"


@pytest.mark.parametrize("kind", ["tiles", "multiclass"])
def test_deterministic(kind):
    a_img, a_mask = _render(7, kind)
    b_img, b_mask = _render(7, kind)
    c_img, c_mask = _render(8, kind)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_mask, c_mask)


def test_tile_mask_binary_and_sensible():
    fractions = []
    for seed in range(12):
        img, mask = _render(seed, "tiles")
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        assert mask.shape == (128, 128) and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) <= {0, 255}
        fractions.append(float((mask > 0).mean()))
    assert 0.05 <= min(fractions) and max(fractions) <= 0.6
    # images are not flat: background and cells differ, and there is texture
    img, mask = _render(3, "tiles")
    assert img[mask > 0].mean() < img[mask == 0].mean() - 20
    assert img[mask == 0].std() > 3


def test_non_square_and_small_sizes():
    img, mask = _render(1, "tiles", h=64, w=96)
    assert img.shape == (64, 96, 3) and mask.shape == (64, 96)
    img, mask = _render(1, "multiclass", h=384, w=512)
    assert img.shape == (384, 512, 3) and mask.shape == (384, 512, 3)


def test_multiclass_mask_colours_only_declared():
    allowed = {tuple(int(v) for v in rgb[::-1]) for rgb in CLASS_COLORS_RGB}  # BGR order in the array
    seen: set[tuple[int, int, int]] = set()
    fractions = []
    for seed in range(10):
        img, mask = _render(seed, "multiclass")
        assert img.shape == (128, 128, 3) and mask.shape == (128, 128, 3) and mask.dtype == np.uint8
        colours = {tuple(c) for c in np.unique(mask.reshape(-1, 3), axis=0).tolist()}
        assert colours <= allowed, colours - allowed
        seen |= colours
        fractions.append(float(mask.any(-1).mean()))
    assert seen == allowed  # all three cell classes and background occur
    assert 0.05 <= min(fractions) and max(fractions) <= 0.6


def test_multiclass_classes_differ_in_appearance():
    """Class correlates with size: mean lymphocyte area < plasma < epithelial (what a UNet can learn)."""
    import cv2

    areas: dict[int, list[int]] = {1: [], 2: [], 3: []}
    for seed in range(10):
        _, mask = _render(seed, "multiclass")
        for rgb, idx in CLASS_COLORS_RGB.items():
            if idx == 0:
                continue
            m = np.all(mask == np.array(rgb[::-1], np.uint8), -1).astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
            areas[idx] += [int(a) for a in stats[1:, cv2.CC_STAT_AREA] if a > 10]
    med = {k: float(np.median(v)) for k, v in areas.items()}
    assert med[1] < med[2] < med[3], med


def test_global_threshold_is_not_enough_but_signal_exists():
    images, masks = [], []
    for seed in range(8):
        img, mask = _render(100 + seed, "tiles")
        images.append(img)
        masks.append(mask)
        # even with the threshold tuned on this very image, no channel gives a (near) perfect mask
        assert _best_threshold_dice([img], [mask]) < 0.98
    best = _best_threshold_dice(images, masks)
    assert 0.3 < best < 0.95, best


def test_unknown_kind_refused(tmp_path):
    with pytest.raises(FlexunetError, match="tiles, slides, multiclass"):
        render_sample(np.random.default_rng(0), 64, 64, "cells")
    with pytest.raises(FlexunetError, match="allowed kinds"):
        make_dataset(tmp_path / "x", kind="bogus")
    assert not (tmp_path / "x").exists()


def test_make_dataset_layout(tmp_path):
    calls = []
    out = tmp_path / "ds"
    summary = make_dataset(out, kind="tiles", n_train=3, n_valid=2, n_test=2, size=64, seed=5,
                           n_mini=1, mini_size=(96, 80), progress=lambda d, t: calls.append((d, t)))
    expected = {"train": 3, "valid": 2, "test": 2, "mini_test": 1}
    for split, n in expected.items():
        imgs = sorted(p.name for p in (out / split / "images").iterdir())
        masks = sorted(p.name for p in (out / split / "masks").iterdir())
        assert imgs == masks == [f"{i:04d}.png" for i in range(n)]
        assert summary["splits"][split]["count"] == n
        img = read_image(out / split / "images" / imgs[0])
        mask = read_mask(out / split / "masks" / imgs[0])
        shape = (80, 96) if split == "mini_test" else (64, 64)
        assert img.shape == shape + (3,) and mask.shape == shape
        assert set(np.unique(mask).tolist()) <= {0, 255}
    assert calls[-1] == (16, 16) and [d for d, _ in calls] == list(range(1, 17))
    assert summary["kind"] == "tiles"
    # no temporary files left behind by the atomic writer; the record lists every file written
    assert [p.name for p in out.rglob("*") if p.is_file() and p.suffix != ".png"] == [synth.RECORD_NAME]
    record = json.loads((out / synth.RECORD_NAME).read_text())
    assert sorted(record["files"]) == sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert summary["files"] == {"new": 16, "replaced": 0, "identical": 0, "removed": 0, "left": 0}

    # same seed -> byte-identical files; splits differ from one another
    again = tmp_path / "again"
    make_dataset(again, kind="tiles", n_train=3, n_valid=2, n_test=2, size=64, seed=5, n_mini=1, mini_size=(96, 80))
    for f in out.rglob("*.png"):
        assert f.read_bytes() == (again / f.relative_to(out)).read_bytes(), f
    assert (out / "train/images/0000.png").read_bytes() != (out / "valid/images/0000.png").read_bytes()
    assert (out / "valid/images/0000.png").read_bytes() != (out / "test/images/0000.png").read_bytes()

    # rewriting with fewer samples leaves no stale numbered files
    make_dataset(out, kind="tiles", n_train=1, n_valid=1, n_test=1, size=64, seed=5, n_mini=0)
    assert sorted(p.name for p in (out / "train" / "images").iterdir()) == ["0000.png"]
    assert sorted(p.name for p in (out / "mini_test" / "masks").iterdir()) == []


def test_make_dataset_multiclass(tmp_path):
    out = tmp_path / "mc"
    summary = make_dataset(out, kind="multiclass", n_train=2, n_valid=1, n_test=1, size=64, seed=1,
                           n_mini=1, mini_size=64)
    assert summary["mask_type"] == "color"
    mask = read_mask(out / "train" / "masks" / "0000.png", color=True)
    allowed = {tuple(int(v) for v in rgb[::-1]) for rgb in CLASS_COLORS_RGB}
    assert {tuple(c) for c in np.unique(mask.reshape(-1, 3), axis=0).tolist()} <= allowed


@pytest.mark.parametrize("kind, size, counts, mini", [
    ("tiles", (128, 128), {"train": 160, "valid": 32, "test": 32, "mini_test": 4}, (512, 384)),
    ("slides", (2560, 1920), {"train": 4, "valid": 1, "test": 2, "mini_test": 1}, (1280, 960)),
])
def test_default_counts_and_sizes_written(tmp_path, monkeypatch, kind, size, counts, mini):
    """What ``flexunet synth OUT --kind KIND`` writes with no other option (the README's sizes);
    rendering is replaced by blank images to keep this fast."""
    rendered = []

    def blank(rng, height, width, kind):
        rendered.append((width, height))
        return np.zeros((height, width, 3), np.uint8), np.zeros((height, width), np.uint8)

    monkeypatch.setattr(synth, "render_sample", blank)
    monkeypatch.setattr(synth, "encode_image", lambda path, image: b"")
    monkeypatch.setattr(synth, "write_bytes", lambda path, data: path)
    summary = make_dataset(tmp_path / kind, kind=kind)
    assert summary["counts"] == counts
    for split, n in counts.items():
        expected = mini if split == "mini_test" else size
        assert (summary["splits"][split]["width"], summary["splits"][split]["height"]) == expected
    assert rendered == [size] * (counts["train"] + counts["valid"] + counts["test"]) + [mini] * counts["mini_test"]


def test_slide_shape():
    img, mask = render_sample(np.random.default_rng(0), 1920, 2560, "slides")
    assert img.shape == (1920, 2560, 3) and img.dtype == np.uint8
    assert mask.shape == (1920, 2560) and set(np.unique(mask).tolist()) <= {0, 255}
    assert 0.03 < float((mask > 0).mean()) < 0.5
