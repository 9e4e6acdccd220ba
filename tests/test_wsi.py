"""Whole-slide images: pyramidal TIFFs made here with tifffile, segmented region by region with the
same tiled engine as plain images; tissue masks, the pyramidal TIFF / GeoJSON / preview outputs,
resume, skips and exit codes, level choice by microns per pixel."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

tifffile = pytest.importorskip("tifffile", reason="the wsi extra (tifffile) is not installed")
pytest.importorskip("zarr", reason="the wsi extra (zarr) is not installed")

from flexunet.cli import cli  # noqa: E402
from flexunet.core.errors import EXIT_OK, EXIT_SKIPPED, EXIT_USAGE, ModelError  # noqa: E402
from flexunet.core.modelinfo import ModelInfo  # noqa: E402
from flexunet.runtime import wsi  # noqa: E402
from flexunet.runtime.pipeline import SlideTask  # noqa: E402
from flexunet.runtime.segmenter import Segmenter  # noqa: E402
from flexunet.runtime.wsi_reader import OpenSlideSlide, SlideView, TiffSlide, is_slide, open_slide  # noqa: E402
from flexunet.runtime.wsi_tissue import detect_tissue  # noqa: E402

pytestmark = pytest.mark.usefixtures("isolate_cli")
BACKGROUND = 235


def tissue_image(height: int, width: int, boxes, seed: int = 0) -> np.ndarray:
    """BGR: pale grey glass with stained, textured 'tissue' rectangles ``(y, x, h, w)``."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), BACKGROUND, np.uint8)
    image += rng.integers(0, 4, size=image.shape, dtype=np.uint8)
    for y, x, h, w in boxes:
        noise = rng.uniform(0, 1, size=(h, w, 1)).astype(np.float32)
        texture = cv2.GaussianBlur(noise, (0, 0), 3)[..., None]
        texture = (texture - texture.min()) / (np.ptp(texture) + 1e-6)
        pink, purple = np.array([170, 110, 190], np.float32), np.array([120, 50, 100], np.float32)
        colour = cv2.GaussianBlur(rng.normal(0, 120, size=(h, w, 3)).astype(np.float32), (0, 0), 1)
        image[y:y + h, x:x + w] = np.clip(pink * (1 - texture) + purple * texture + colour, 0, 255).astype(np.uint8)
    return image


def write_slide(path: Path, image_bgr: np.ndarray, levels: int = 3, mpp: float | None = 0.5) -> Path:
    """A tiled (256 px, deflate) pyramidal RGB TIFF, each level half the previous, in successive pages."""
    rgb = np.ascontiguousarray(image_bgr[..., ::-1])
    res = dict(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER") if mpp else {}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level in range(levels):
            tif.write(rgb[::2 ** level, ::2 ** level], tile=(256, 256), compression="zlib", photometric="rgb",
                      subfiletype=1 if level else 0, **(res if level == 0 else {}))
    return path


def infer(*args):
    return CliRunner().invoke(cli, ["infer", *map(str, args)])


def run_slides(model, slides, out, **options):
    opts = wsi.SlideOptions(**options)
    with Segmenter(model) as seg:
        tasks = [SlideTask(i, Path(p), Path(p).stem) for i, p in enumerate(slides)]
        return wsi.segment_slides(seg, tasks, out, opts)


def label_tiff(path: Path) -> np.ndarray:
    return tifffile.imread(path)


# -- equal to the plain path ---------------------------------------------------------------------------
def test_a_slide_of_one_region_is_segmented_exactly_as_the_plain_image(make_onnx, tmp_path):
    image = tissue_image(700, 900, [(100, 150, 400, 500)])
    slide = write_slide(tmp_path / "s.tif", image, levels=2)
    model = make_onnx(kernel=3)
    summary = run_slides(model, [slide], tmp_path / "out", tissue=False)
    assert summary.done == [slide] and summary.slides[0].computed == 1
    with Segmenter(model) as seg:
        plain = seg.segment(image).mask
    assert np.array_equal(label_tiff(tmp_path / "out" / "s.tif"), plain)


@pytest.mark.parametrize("kernel, min_agreement", [(1, 0.99999), (3, 0.995)])
def test_many_regions_agree_with_the_plain_path(make_onnx, tmp_path, kernel, min_agreement):
    image = tissue_image(700, 900, [(0, 0, 700, 900)], seed=kernel)
    slide = write_slide(tmp_path / "s.tif", image)
    model = make_onnx(kernel=kernel)
    summary = run_slides(model, [slide], tmp_path / "out", tissue=False, region=192)
    assert summary.slides[0].regions == summary.slides[0].computed >= 16
    with Segmenter(model) as seg:
        plain = seg.segment(image).mask
    mask = label_tiff(tmp_path / "out" / "s.tif")
    assert mask.shape == plain.shape
    assert np.mean(mask == plain) >= min_agreement
    assert 0.01 < np.mean(plain > 0) < 0.99  # the model gives both classes on this image


# -- tissue ----------------------------------------------------------------------------------------------
def test_background_regions_are_not_computed_and_are_reported(make_onnx, tmp_path, monkeypatch):
    image = tissue_image(1536, 2048, [(100, 120, 500, 600)])
    slide = write_slide(tmp_path / "s.tif", image)
    model = make_onnx()
    reads = []
    real_read = SlideView.read
    monkeypatch.setattr(SlideView, "read", lambda self, *box: reads.append(box) or real_read(self, *box))
    masked = run_slides(model, [slide], tmp_path / "masked", region=512)
    report = masked.slides[0]
    assert report.regions == 12 and 1 <= report.computed <= 4 and len(reads) == report.computed
    assert report.skipped_fraction > 0.6 and 0.05 < report.tissue_fraction < 0.2
    full = run_slides(model, [slide], tmp_path / "full", region=512, tissue=False)
    assert full.slides[0].computed == 12 and full.slides[0].skipped_fraction == 0
    with_mask, without = label_tiff(tmp_path / "masked" / "s.tif"), label_tiff(tmp_path / "full" / "s.tif")
    tissue = np.zeros(image.shape[:2], bool)
    tissue[100:600, 120:720] = True
    assert np.array_equal(with_mask[tissue], without[tissue])  # tissue pixels as without the mask
    assert not with_mask[1024:, 1024:].any()  # background regions stay background
    tissue_png = cv2.imread(str(tmp_path / "masked" / "s_tissue.png"), cv2.IMREAD_GRAYSCALE)
    assert tissue_png is not None and 0.05 < np.mean(tissue_png > 0) < 0.2


def test_a_blank_slide_computes_nothing_and_writes_background(make_onnx, tmp_path):
    slide = write_slide(tmp_path / "blank.tif", tissue_image(800, 1000, []), levels=2)
    summary = run_slides(make_onnx(), [slide], tmp_path / "out", region=256)
    assert summary.done == [slide] and summary.slides[0].computed == 0
    assert summary.slides[0].skipped_fraction == 1.0
    assert not label_tiff(tmp_path / "out" / "blank.tif").any()
    assert json.loads((tmp_path / "out" / "blank.geojson").read_text()) == {"type": "FeatureCollection",
                                                                           "features": []}


def test_detect_tissue_finds_stained_areas_and_ignores_glass():
    image = tissue_image(400, 600, [(50, 60, 150, 200), (250, 350, 100, 200)])
    image[300:302, 10:12] = (120, 40, 200)  # a speck of dust: removed as a small object
    mask = detect_tissue(image)
    assert mask[100:180, 100:240].all() and mask[270:330, 380:530].all()
    assert not mask[0:40, 300:600].any() and not mask[300:302, 10:12].any()
    assert not detect_tissue(np.full((200, 200, 3), BACKGROUND, np.uint8)).any()


def test_a_tissue_mask_image_given_by_the_user_is_used(make_onnx, tmp_path):
    image = tissue_image(1024, 1024, [(0, 0, 1024, 1024)])
    slide = write_slide(tmp_path / "s.tif", image, levels=2)
    mask = np.zeros((64, 64), np.uint8)
    mask[:16, :16] = 255  # the top-left quarter of the top-left region
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    for given in (tmp_path / "mask.png", tmp_path):  # the image, or a folder holding <stem>.png
        cv2.imwrite(str(tmp_path / "s.png"), mask)
        summary = run_slides(make_onnx(), [slide], tmp_path / "out", tissue_mask=given, region=256)
        assert (summary.slides[0].regions, summary.slides[0].computed) == (16, 1)
        assert summary.slides[0].tissue_fraction == pytest.approx(1 / 16)
    both = infer(make_onnx(), slide, "-o", tmp_path / "o2", "--tissue-mask", tmp_path / "mask.png",
                 "--no-tissue-mask")
    assert both.exit_code == EXIT_USAGE and "contradict" in both.stderr


# -- outputs ---------------------------------------------------------------------------------------------
def test_outputs_are_a_valid_pyramidal_tiff_geojson_and_preview(make_onnx, tmp_path):
    image = tissue_image(900, 1300, [(80, 100, 500, 700), (700, 900, 150, 300)])
    (tmp_path / "in").mkdir()
    write_slide(tmp_path / "in" / "s.tif", image)
    out = tmp_path / "out"
    result = infer(make_onnx(classes=3), tmp_path / "in", "-o", out)
    assert result.exit_code == EXIT_OK, (result.stdout, result.stderr)
    assert "slide s.tif: level 0" in result.stderr and "0.500 µm/px" in result.stderr
    assert result.stdout.splitlines()[-1].startswith("done 1, skipped 0, resumed 0")

    with tifffile.TiffFile(out / "s.tif") as tf:
        pages = list(tf.pages)
        assert [p.shape for p in pages[:2]] == [(900, 1300), (450, 650)] and pages[-1].shape[1] <= 256
        assert all(p.is_tiled and p.tilewidth == 256 and p.compression == 8 for p in pages)
        num, den = pages[0].tags["XResolution"].value
        assert abs(1e4 * den / num - 0.5) < 1e-6 and pages[0].tags["ResolutionUnit"].value == 3
        labels = pages[0].asarray()
        assert np.array_equal(pages[1].asarray(), labels[::2, ::2])  # nearest-sampled levels
    assert set(np.unique(labels)) <= {0, 1, 2} and len(np.unique(labels[80:580, 100:800])) == 3

    import openslide

    with openslide.OpenSlide(str(out / "s.tif")) as osr:
        assert osr.level_dimensions[:2] == ((1300, 900), (650, 450))
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        region = np.asarray(osr.read_region((100, 80), 0, (300, 200)))[..., 0]
        assert np.array_equal(region, labels[80:280, 100:400])

    geo = json.loads((out / "s.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) > 10
    names, area = set(), np.zeros(3)
    for feature in geo["features"]:
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        cls = feature["properties"]["classification"]
        assert feature["properties"]["objectType"] == "annotation"
        names.add((cls["name"], tuple(cls["color"])))
        for ring in feature["geometry"]["coordinates"]:
            assert len(ring) >= 4 and ring[0] == ring[-1]
            xy = np.array(ring)
            assert xy[:, 0].min() >= 0 and xy[:, 0].max() <= 1300 and xy[:, 1].max() <= 900
        for i, ring in enumerate(np.array(r) for r in feature["geometry"]["coordinates"]):
            ring_area = 0.5 * abs(np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1]))
            area[int(cls["name"][1:])] += ring_area if i == 0 else -ring_area  # holes after the outer ring
    assert names == {("c1", (255, 0, 0)), ("c2", (0, 200, 0))}
    for cls in (1, 2):  # polygons (pixel centres) cover about the pixels of each class
        assert 0.5 * np.sum(labels == cls) < area[cls] < 1.1 * np.sum(labels == cls)
    preview = cv2.imread(str(out / "s_preview.png"))
    assert preview is not None and max(preview.shape[:2]) == 1024
    assert not list(out.glob(".*part*")), "temporary files left"


# -- runs: resume, skips, mixed folders ---------------------------------------------------------------
def test_resume_corrupt_slides_and_mixed_folders(make_onnx, make_images, tmp_path):
    folder = tmp_path / "in"
    make_images(folder, [(60, 80)])
    write_slide(folder / "good.tif", tissue_image(900, 1000, [(100, 100, 500, 600)]))
    (folder / "broken.svs").write_bytes(b"II*\x00" + b"\x00garbage" * 100)
    model, out = make_onnx(), tmp_path / "out"
    first = infer(model, folder, "-o", out)
    assert first.exit_code == EXIT_SKIPPED, (first.stdout, first.stderr)
    assert "done 2, skipped 1, resumed 0" in first.stdout
    skipped = [line for line in first.stdout.splitlines() if line.startswith("skipped:")]
    assert len(skipped) == 1 and "broken.svs: cannot read the slide" in skipped[0]
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == {
        "img00.png", "good.tif", "good.geojson", "good_preview.png", "good_tissue.png"}
    assert "[3/3]" in first.stderr

    (out / ".good.tif.abcd1234.part.tif").write_bytes(b"left by a killed run")
    again = infer(model, folder, "-o", out, "--resume")
    assert again.exit_code == EXIT_SKIPPED
    assert "done 0, skipped 1, resumed 2" in again.stdout
    assert not (out / ".good.tif.abcd1234.part.tif").exists()
    changed = infer(model, folder / "good.tif", "-o", out, "--resume", "--no-tissue-mask")
    assert changed.exit_code == EXIT_OK and "done 1, skipped 0, resumed 0" in changed.stdout


def test_a_slide_with_a_corrupt_tile_is_skipped_and_leaves_nothing(make_onnx, tmp_path, monkeypatch):
    monkeypatch.setattr(wsi, "THUMBNAIL_SIDE", 300)  # thumbnails from level 1: the region read fails
    monkeypatch.setattr(wsi, "PREVIEW_SIDE", 300)
    slide = write_slide(tmp_path / "s.tif", tissue_image(900, 900, [(0, 0, 900, 900)]), levels=2)
    with tifffile.TiffFile(slide) as tf:
        offset, count = tf.pages[0].dataoffsets[5], tf.pages[0].databytecounts[5]
    with open(slide, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * count)
    out = tmp_path / "out"
    result = infer(make_onnx(), slide, "-o", out, "--no-tissue-mask")
    assert result.exit_code == EXIT_SKIPPED, (result.stdout, result.stderr)
    assert f"skipped: {slide}: cannot read the region at" in result.stdout
    assert [p.name for p in out.rglob("*") if p.is_file()] == []  # no output, no temporary file left


def test_an_interrupted_slide_leaves_no_partial_file(make_onnx, tmp_path, monkeypatch):
    slide = write_slide(tmp_path / "s.tif", tissue_image(700, 700, [(0, 0, 700, 700)]), levels=2)
    added = []

    def add(self, y, x, labels):
        added.append((y, x))
        if len(added) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(wsi.SlideWriter, "add", add)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_slides(make_onnx(), [slide], out, tissue=False, region=256)
    assert len(added) == 2 and [p.name for p in out.rglob("*") if p.is_file()] == []


def test_slide_recognition_small_tiffs_stay_plain_images(make_onnx, tmp_path):
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, tissue_image(120, 160, [(10, 10, 50, 50)])[..., ::-1], photometric="rgb")
    pyramid = write_slide(tmp_path / "p.tif", tissue_image(600, 600, []), levels=2)
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    assert not is_slide(small) and is_slide(pyramid) and not is_slide(tmp_path / "bad.tif")
    assert is_slide(tmp_path / "x.svs") and not is_slide(tmp_path / "x.png")
    result = infer(make_onnx(), small, "-o", tmp_path / "out")
    assert result.exit_code == EXIT_OK and (tmp_path / "out" / "small.png").is_file()


# -- resolution ------------------------------------------------------------------------------------------
def test_mpp_picks_the_level_and_rescales_between_levels(make_onnx, tmp_path):
    image = tissue_image(1600, 2000, [(200, 200, 1000, 1200)])
    slide = write_slide(tmp_path / "s.tif", image, levels=3, mpp=0.25)
    with open_slide(slide) as reader:
        assert isinstance(reader, TiffSlide) and reader.mpp == pytest.approx(0.25)
        assert reader.levels == [(1600, 2000), (800, 1000), (400, 500)]
        exact, between = SlideView(reader, 0.5), SlideView(reader, 0.75)
        assert (exact.level, exact.scale, exact.height, exact.width) == (1, 1.0, 800, 1000)
        assert (between.level, between.height, between.width) == (1, 533, 667)
        assert between.scale == pytest.approx(1.5) and between.mpp == pytest.approx(0.75)
        assert SlideView(reader, 0.5, slide_mpp=0.5).level == 0
        assert between.read(100, 100, 50, 60).shape == (50, 60, 3)
    model = make_onnx(mpp=0.5)  # recorded in the metadata at export
    summary = run_slides(model, [slide], tmp_path / "out")
    assert (summary.slides[0].level, summary.slides[0].size) == (1, (800, 1000))
    with tifffile.TiffFile(tmp_path / "out" / "s.tif") as tf:
        num, den = tf.pages[0].tags["XResolution"].value
        assert tf.pages[0].shape == (800, 1000) and 1e4 * den / num == pytest.approx(0.5)
    coords = np.concatenate([np.array(f["geometry"]["coordinates"][0]) for f in
                             json.loads((tmp_path / "out" / "s.geojson").read_text())["features"]])
    assert coords[:, 0].max() > 1300 and coords[:, 1].max() > 1100  # level-0 slide pixels


def test_model_mpp_metadata_is_checked():
    assert ModelInfo.from_json(ModelInfo(64, 64, 3, 1, mpp=0.5).to_json()).mpp == 0.5
    bad = json.loads(ModelInfo(64, 64, 3, 1).to_json())
    bad["mpp"] = -1
    with pytest.raises(ModelError, match="mpp"):
        ModelInfo.from_json(json.dumps(bad), "m.onnx")


def test_openslide_reads_the_same_pixels_as_tifffile(tmp_path):
    pytest.importorskip("openslide", reason="the wsi extra (openslide-python, openslide-bin) is not installed")
    slide = write_slide(tmp_path / "s.tif", tissue_image(700, 900, [(50, 60, 300, 400)]), levels=2)
    with OpenSlideSlide(slide) as osr, TiffSlide(slide) as tfr:
        assert osr.levels == tfr.levels and osr.mpp == pytest.approx(0.5)
        assert np.array_equal(osr.read(1, 20, 30, 100, 120), tfr.read(1, 20, 30, 100, 120))


def test_an_aperio_svs_is_read_with_openslide(make_onnx, tmp_path):
    pytest.importorskip("openslide", reason="the wsi extra (openslide-python, openslide-bin) is not installed")
    rgb = np.ascontiguousarray(tissue_image(600, 800, [(100, 100, 400, 500)])[..., ::-1])
    svs = tmp_path / "in" / "scan.svs"
    svs.parent.mkdir()
    with tifffile.TiffWriter(svs) as tif:  # Aperio's layout: its description names the format and the MPP
        for level, text in ((1, "800x600 [0,0 800x600] (256x256) JPEG/RGB Q=90|AppMag = 20|MPP = 0.4990"),
                            (4, "800x600 -> 200x150 - |")):
            tif.write(rgb[::level, ::level], tile=(256, 256), compression="jpeg", photometric="rgb",
                      description=f"Aperio Image Library v12.0.0\n{text}", metadata=None)
    model = make_onnx()
    result = infer(model, tmp_path / "in", "-o", tmp_path / "out", "--no-tissue-mask")
    assert result.exit_code == EXIT_OK, (result.stdout, result.stderr)
    assert "slide scan.svs: level 0 (x1.00, 0.499 µm/px), 800x600 px" in result.stderr
    with open_slide(svs) as reader, Segmenter(model) as seg:
        assert isinstance(reader, OpenSlideSlide) and reader.downsamples == [1.0, 4.0]
        plain = seg.segment(reader.read(0, 0, 0, 600, 800)).mask  # the same decoded pixels
    assert np.array_equal(label_tiff(tmp_path / "out" / "scan.tif"), plain)
    coarse = infer(model, svs, "-o", tmp_path / "coarse", "--mpp", 2.0, "--no-tissue-mask")
    assert coarse.exit_code == EXIT_OK  # level 1 is within 2% of 2.0 µm/px: read without rescaling
    assert "level 1 (x4.00, 1.996 µm/px), 200x150 px" in coarse.stderr
