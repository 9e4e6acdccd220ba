"""Tests of the tiling: geometry, padding and tile extraction (core.tiling), blending windows and
stitching (core.blending), fitted tiles, the layout of a run (runtime.layout.resolve_layout) and
the tiled engine's steps (runtime.segment)."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from flexunet.core import blending, tiling
from flexunet.core.blending import Stitcher, blend_window
from flexunet.core.errors import FlexunetError, ModelError
from flexunet.core.modelinfo import ModelInfo
from flexunet.core.tiling import (
    BLEND_MODES,
    TileGrid,
    extract_tiles,
    make_grid,
    pad_image,
    padded_size,
    plan,
    tile_starts,
)
from flexunet.runtime.layout import FIT, FIT_MAX_SIDE, Layout, resolve_layout
from flexunet.runtime.segment import TiledImage, batches, predict_image, tile_refs



def _random_geometries(n: int, seed: int = 0):
    """(H, W, tile_h, tile_w, overlap) combinations: odd, prime and just-above-tile sizes."""
    rng = np.random.default_rng(seed)
    fixed = [
        (97, 101, 13, 17, 1),      # primes, 1-pixel overlap
        (129, 128, 128, 128, 0),   # just above a tile, no overlap
        (129, 257, 128, 128, 1),
        (513, 2560, 512, 512, 64),
        (1920, 2560, 512, 512, 64),
        (7, 5, 7, 5, 4),           # exactly one tile
        (11, 11, 2, 3, 1),
    ]
    geometries = list(fixed)
    while len(geometries) < n:
        tile_h, tile_w = (int(v) for v in rng.integers(1, 70, size=2))
        height = tile_h + int(rng.integers(0, 200))
        width = tile_w + int(rng.integers(0, 200))
        overlap = int(rng.integers(0, min(tile_h, tile_w)))
        geometries.append((height, width, tile_h, tile_w, overlap))
    return geometries


# --- tile_starts -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "length, tile, overlap, expected",
    [
        (10, 4, 1, [0, 3, 6]),
        (10, 4, 0, [0, 4, 6]),
        (8, 4, 0, [0, 4]),
        (9, 4, 2, [0, 2, 4, 5]),
        (4, 4, 3, [0]),
        (5, 4, 0, [0, 1]),
        (1, 1, 0, [0]),
        (3, 1, 0, [0, 1, 2]),
    ],
)
def test_tile_starts_exact(length, tile, overlap, expected):
    assert tile_starts(length, tile, overlap) == expected


def test_tile_starts_slide_width():
    starts = tile_starts(2560, 512, 64)
    assert starts == [0, 448, 896, 1344, 1792, 2048]
    assert all(b - a == 448 for a, b in zip(starts[:-2], starts[1:-1]))
    assert starts[-1] == 2048


@pytest.mark.parametrize("tile", [1, 7, 512])
def test_tile_starts_length_equals_tile(tile):
    assert tile_starts(tile, tile, 0) == [0]
    assert tile_starts(tile, tile, tile - 1) == [0]


def test_tile_starts_neighbours_overlap_and_cover():
    for height, width, tile_h, tile_w, overlap in _random_geometries(300, seed=1):
        for length, tile in ((height, tile_h), (width, tile_w)):
            starts = tile_starts(length, tile, overlap)
            assert starts[0] == 0
            assert starts[-1] + tile == length
            assert all(isinstance(s, int) for s in starts)
            for a, b in zip(starts, starts[1:]):
                assert b > a                      # unique, increasing
                assert a + tile - b >= overlap    # neighbours share >= overlap pixels


@pytest.mark.parametrize(
    "length, tile, overlap",
    [(10, 4, 4), (10, 4, 5), (3, 4, 0), (10, 4, -1), (10, 0, 0), (0, 1, 0)],
)
def test_tile_starts_errors(length, tile, overlap):
    with pytest.raises(ValueError):
        tile_starts(length, tile, overlap)


def test_tile_starts_rejects_non_integers():
    with pytest.raises(TypeError):
        tile_starts(10.0, 4, 1)


# --- TileGrid / make_grid ----------------------------------------------------------------------

def test_grid_iteration_order_len_and_slices():
    grid = make_grid(10, 9, 4, 5, 1)
    assert isinstance(grid, TileGrid)
    assert grid.ys == (0, 3, 6)
    assert grid.xs == (0, 4)
    assert len(grid) == 6
    assert list(grid) == [(0, 0), (0, 4), (3, 0), (3, 4), (6, 0), (6, 4)]
    assert grid.slices(0) == (slice(0, 4), slice(0, 5))
    assert grid.slices(3) == (slice(3, 7), slice(4, 9))
    assert grid.slices(-1) == grid.slices(5)
    with pytest.raises(IndexError):
        grid.slices(6)
    with pytest.raises(IndexError):
        grid.slices(-7)


def test_grid_is_frozen():
    grid = make_grid(10, 10, 4, 4, 1)
    with pytest.raises(AttributeError):
        grid.overlap = 2


def test_make_grid_errors():
    with pytest.raises(ValueError):
        make_grid(100, 70, 128, 128, 16)   # smaller than a tile: pad first
    with pytest.raises(ValueError):
        make_grid(100, 100, 32, 8, 8)      # overlap >= tile_w


def test_every_pixel_covered():
    for height, width, tile_h, tile_w, overlap in _random_geometries(300, seed=2):
        grid = make_grid(height, width, tile_h, tile_w, overlap)
        count = np.zeros((height, width), dtype=np.int32)
        for i in range(len(grid)):
            count[grid.slices(i)] += 1
        assert count.min() >= 1, (height, width, tile_h, tile_w, overlap)
        assert count.sum() == len(grid) * tile_h * tile_w   # no tile leaves the image


# --- padded_size / plan ------------------------------------------------------------------------

def test_padded_size():
    assert padded_size(100, 70, 128, 128) == (128, 128)
    assert padded_size(1920, 2560, 512, 512) == (1920, 2560)
    assert padded_size(1920, 2560, 512, 512, multiple=32) == (1920, 2560)
    assert padded_size(1000, 1001, 256, 256, multiple=32) == (1024, 1024)
    assert padded_size(100, 300, 128, 128, multiple=32) == (128, 320)
    assert padded_size(1, 1, 1, 1) == (1, 1)
    with pytest.raises(ValueError):
        padded_size(10, 10, 4, 4, multiple=0)


def test_plan_small_image_single_tile():
    padded_h, padded_w, grid = plan(100, 70, 128, 128, 16)
    assert (padded_h, padded_w) == (128, 128)
    assert len(grid) == 1
    assert list(grid) == [(0, 0)]
    assert (grid.height, grid.width) == (128, 128)


def test_plan_multiple_rounding():
    padded_h, padded_w, grid = plan(1000, 1001, 256, 256, 32, multiple=32)
    assert (padded_h, padded_w) == (1024, 1024)
    assert (grid.height, grid.width) == (1024, 1024)
    assert grid.ys == tuple(tile_starts(1024, 256, 32))
    # No padding for an image that is already large enough and aligned.
    assert plan(1920, 2560, 512, 512, 64)[:2] == (1920, 2560)


# --- pad_image ---------------------------------------------------------------------------------

def test_pad_image_reflect_content_and_shape():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    padded = pad_image(image, 5, 7)
    assert padded.shape == (5, 7)
    assert padded.dtype == np.uint8
    np.testing.assert_array_equal(padded[:3, :4], image)
    np.testing.assert_array_equal(padded[3], image[1, [0, 1, 2, 3, 2, 1, 0]])   # row 3 mirrors row 1
    np.testing.assert_array_equal(padded[:3, 4:], image[:, [2, 1, 0]])


def test_pad_image_channels():
    image = np.random.default_rng(0).random((5, 6, 3)).astype(np.float32)
    padded = pad_image(image, 8, 9)
    assert padded.shape == (8, 9, 3)
    np.testing.assert_array_equal(padded[:5, :6], image)
    np.testing.assert_array_equal(padded[5:, :6], image[[3, 2, 1]])


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (1, 1, 3), (3, 5, 2), (1, 7)])
@pytest.mark.parametrize("mode", ["reflect", "constant"])
def test_pad_tiny_images(shape, mode):
    image = np.arange(1, np.prod(shape) + 1, dtype=np.float32).reshape(shape)
    padded = pad_image(image, 64, 64, mode=mode)
    assert padded.shape == (64, 64) + shape[2:]
    np.testing.assert_array_equal(padded[:shape[0], :shape[1]], image)
    if mode == "reflect":
        assert set(np.unique(padded)) <= set(np.unique(image))
    if shape[:2] == (1, 1) and mode == "reflect":
        np.testing.assert_array_equal(padded, np.broadcast_to(image, padded.shape))


def test_pad_image_constant_zeros():
    image = np.full((3, 5, 2), 7, dtype=np.uint16)
    padded = pad_image(image, 4, 8, mode="constant")
    assert padded.dtype == np.uint16
    np.testing.assert_array_equal(padded[:3, :5], image)
    assert not padded[3:].any()
    assert not padded[:, 5:].any()


def test_pad_image_unchanged_when_no_padding():
    image = np.ones((4, 5, 3), dtype=np.uint8)
    assert pad_image(image, 4, 5) is image
    assert pad_image(image, 4, 5, mode="constant") is image


def test_pad_image_errors():
    image = np.zeros((4, 5))
    with pytest.raises(ValueError):
        pad_image(image, 3, 5)
    with pytest.raises(ValueError):
        pad_image(image, 8, 8, mode="wrap")
    with pytest.raises(ValueError):
        pad_image(np.zeros((4,)), 8, 8)
    with pytest.raises(ValueError):
        pad_image(np.zeros((0, 5)), 8, 8)


# --- extract_tiles -----------------------------------------------------------------------------

def test_extract_tiles_shapes_and_contents():
    image = np.random.default_rng(3).integers(0, 255, size=(37, 53, 3), dtype=np.uint8)
    grid = make_grid(37, 53, 16, 20, 3)
    tiles = extract_tiles(image, grid)
    assert tiles.shape == (len(grid), 16, 20, 3)
    assert tiles.dtype == np.uint8
    for i, (y, x) in enumerate(grid):
        np.testing.assert_array_equal(tiles[i], image[y:y + 16, x:x + 20])
        np.testing.assert_array_equal(tiles[i], image[grid.slices(i)])
    tiles[0] = 0
    assert image[:16, :20].any()   # a copy, not a view


def test_extract_tiles_into_out():
    image = np.random.default_rng(4).integers(0, 255, size=(20, 20, 1), dtype=np.uint8)
    grid = make_grid(20, 20, 8, 8, 2)
    out = np.empty((len(grid), 8, 8, 1), dtype=np.float32)
    result = extract_tiles(image, grid, out=out)
    assert result is out
    np.testing.assert_array_equal(out, extract_tiles(image, grid).astype(np.float32))
    with pytest.raises(ValueError):
        extract_tiles(image, grid, out=np.empty((len(grid), 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        extract_tiles(image[:19], grid)


# --- blend_window ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", BLEND_MODES)
@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (7, 7), (64, 48), (128, 128), (512, 512)])
def test_blend_window_properties(mode, shape):
    window = blend_window(*shape, mode=mode)
    assert window.shape == shape
    assert window.dtype == np.float32
    assert window.max() == 1.0
    assert window.min() >= (1e-6 if mode == "cosine" else 1e-3)    # cosine: 1e-3 per axis
    np.testing.assert_array_equal(window, window[::-1, :])
    np.testing.assert_array_equal(window, window[:, ::-1])
    assert not window.flags.writeable
    with pytest.raises(ValueError):
        window[0, 0] = 0.5


def test_blend_window_none_is_ones():
    np.testing.assert_array_equal(blend_window(5, 6, mode="none"), np.ones((5, 6), np.float32))


def test_blend_window_cosine_plateau_and_ramp():
    window = blend_window(64, 64, mode="cosine", overlap=8)
    np.testing.assert_array_equal(window[8:56, 8:56], 1.0)   # centre plateau
    assert (window[:8, 8:56] < 1).all()
    row = window[32]
    assert (row[:2] == np.float32(1e-3)).all()               # the outer quarter of the ramp stays at the floor
    assert (np.diff(row[1:9]) > 0).all()                     # then rises monotonically
    assert row[0] > 0
    # Default ramp: tile // 4 per axis.
    default = blend_window(64, 32, mode="cosine")
    np.testing.assert_array_equal(default[16:48, 8:24], 1.0)
    assert default[15, 16] < 1 and default[32, 7] < 1
    # No ramp: same as "none".
    np.testing.assert_array_equal(blend_window(9, 9, mode="cosine", overlap=0), 1.0)


def test_blend_window_gaussian_shape():
    window = blend_window(65, 65, mode="gaussian")
    assert window[32, 32] == 1.0
    assert window[32, 0] < window[32, 16] < window[32, 32]
    wider = blend_window(65, 65, mode="gaussian", sigma_scale=0.5)
    assert wider[32, 0] > window[32, 0]


def test_blend_window_cached():
    assert blend_window(32, 32, "cosine", 8) is blend_window(32, 32, "cosine", 8)
    assert blend_window(32, 32, "cosine") is blend_window(32, 32, "cosine", None)
    assert blend_window(32, 32, "gaussian") is blend_window(32, 32, "gaussian", overlap=8)


def test_blend_window_errors():
    with pytest.raises(ValueError):
        blend_window(8, 8, mode="triangle")
    with pytest.raises(ValueError):
        blend_window(8, 8, mode="cosine", overlap=-1)
    with pytest.raises(ValueError):
        blend_window(8, 8, mode="gaussian", sigma_scale=0)


# --- Stitcher ----------------------------------------------------------------------------------

STITCH_GEOMETRIES = [
    (37, 53, 16, 20, 3),
    (97, 101, 13, 17, 1),
    (64, 64, 64, 64, 8),
    (129, 130, 64, 64, 16),
    (200, 150, 48, 32, 15),
    (1920, 2560, 512, 512, 64),   # a whole slide
]
# Up to 96 tiles per pixel.  float32 accumulation error grows with that count (about 2e-6 relative
# here), so this geometry is checked only against the identity-crop tolerance of 1e-5.
EXTREME_OVERLAP = (200, 150, 48, 32, 31)


@pytest.mark.parametrize("mode", BLEND_MODES)
@pytest.mark.parametrize("geometry", STITCH_GEOMETRIES)
def test_stitch_constant_tiles(mode, geometry):
    height, width, tile_h, tile_w, overlap = geometry
    grid = make_grid(height, width, tile_h, tile_w, overlap)
    value = np.array([0.7, 0.25, 3.0], dtype=np.float32)
    stitcher = Stitcher(height, width, 3, blend_window(tile_h, tile_w, mode, overlap))
    tile = np.broadcast_to(value, (tile_h, tile_w, 3))
    for y, x in grid:
        stitcher.add(tile, y, x)
    result = stitcher.result()
    assert result.shape == (height, width, 3)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, np.broadcast_to(value, result.shape), rtol=1e-6, atol=1e-6)
    coverage = stitcher.coverage()
    assert coverage.shape == (height, width)
    assert coverage.dtype == np.float32
    assert (coverage > 0).all()


@pytest.mark.parametrize("mode", BLEND_MODES)
@pytest.mark.parametrize("geometry", STITCH_GEOMETRIES + [EXTREME_OVERLAP])
def test_stitch_identity_crops_reproduce_full_array(mode, geometry):
    """A translation-equivariant model gives identical tiled and whole outputs."""
    height, width, tile_h, tile_w, overlap = geometry
    full = np.random.default_rng(5).standard_normal((height, width, 2)).astype(np.float32)
    grid = make_grid(height, width, tile_h, tile_w, overlap)
    stitcher = Stitcher(height, width, 2, blend_window(tile_h, tile_w, mode, overlap))
    stitcher.add_batch(extract_tiles(full, grid), list(grid))
    np.testing.assert_allclose(stitcher.result(), full, atol=1e-5)


@pytest.mark.parametrize("mode", BLEND_MODES)
def test_stitch_padded_small_image_round_trip(mode):
    image = np.random.default_rng(6).random((100, 70, 1)).astype(np.float32)
    padded_h, padded_w, grid = plan(100, 70, 64, 64, 8, multiple=32)
    padded = pad_image(image, padded_h, padded_w)
    stitcher = Stitcher(padded_h, padded_w, 1, blend_window(64, 64, mode, 8))
    stitcher.add_batch(extract_tiles(padded, grid), list(grid))
    result = stitcher.result(100, 70)
    assert result.shape == (100, 70, 1)
    np.testing.assert_allclose(result, image, atol=1e-5)


def test_stitch_uncovered_pixels_raise():
    stitcher = Stitcher(10, 10, 1, blend_window(4, 4, "none"))
    with pytest.raises(RuntimeError):
        stitcher.result()
    stitcher.add(np.ones((4, 4, 1), np.float32), 0, 0)
    np.testing.assert_array_equal(stitcher.result(4, 4), 1.0)
    with pytest.raises(RuntimeError):
        stitcher.result(5, 4)
    assert stitcher.coverage()[4:].sum() == 0
    assert not stitcher.coverage().flags.writeable


def test_stitcher_errors():
    window = blend_window(4, 4, "cosine")
    stitcher = Stitcher(10, 10, 2, window)
    with pytest.raises(ValueError):
        stitcher.add(np.zeros((4, 4, 1), np.float32), 0, 0)   # wrong channel count
    with pytest.raises(ValueError):
        stitcher.add(np.zeros((4, 4, 2), np.float32), 7, 0)   # leaves the image
    with pytest.raises(ValueError):
        stitcher.add(np.zeros((4, 4, 2), np.float32), 0, -1)
    with pytest.raises(ValueError):
        stitcher.add_batch(np.zeros((2, 4, 4, 2), np.float32), [(0, 0)])
    with pytest.raises(ValueError):
        stitcher.result(11, 10)
    with pytest.raises(ValueError):
        Stitcher(3, 10, 1, window)                              # window taller than the image
    with pytest.raises(ValueError):
        Stitcher(10, 10, 1, np.zeros((4, 4), np.float32))       # not strictly positive


# ---------------------------------------------------------------------------------------------
# fit_tile: the tile that computes the least area


@pytest.mark.parametrize("h,w,overlap,multiple,max_side,expected", [
    (1920, 2560, 64, 32, 1536, (992, 1312)),   # 2 x 2 tiles, 5.2 Mpx (30 tiles of 512: 7.9 Mpx)
    (512, 512, 64, 32, 1536, (512, 512)),      # one tile, no padding
    (100, 70, 64, 32, 1536, (128, 96)),        # small image: one tile just larger than the overlap
])
def test_fit_tile_known_cases(h, w, overlap, multiple, max_side, expected):
    assert tiling.fit_tile(h, w, overlap, multiple, max_side) == expected


def test_fit_tile_is_minimal_and_valid():
    rng = np.random.default_rng(7)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 5000, 2))
        overlap, multiple, max_side = int(rng.choice([0, 16, 64])), int(rng.choice([1, 8, 32])), int(rng.choice([256, 1024]))
        th, tw = tiling.fit_tile(h, w, overlap, multiple, max_side)
        assert th % multiple == 0 and tw % multiple == 0 and overlap < min(th, tw) and max(th, tw) <= max_side
        ph, pw, grid = tiling.plan(h, w, th, tw, overlap)
        area = len(grid) * th * tw
        # no square tile of the allowed sizes computes less area
        smallest = -(-(overlap + 1) // multiple) * multiple
        for side in np.linspace(smallest, max_side, 12).astype(int) // multiple * multiple:
            side = int(max(side, smallest))
            _, _, g = tiling.plan(h, w, side, side, overlap)
            assert area <= len(g) * side * side


def test_fit_tile_rejects_impossible_geometry():
    with pytest.raises(ValueError):
        tiling.fit_tile(100, 100, overlap=64, multiple=32, max_side=64)


# ---------------------------------------------------------------------------------------------
# the layout of a run: options, then the model's metadata, then the defaults

BARE = ModelInfo(height=None, width=None, channels=3, num_classes=1)           # metadata without tiling
TUNED = ModelInfo(height=None, width=None, channels=3, num_classes=1, multiple=16,
                  tile=(100, 100), overlap=10, blend="gaussian")                 # metadata with tiling


def test_resolve_layout_options_then_metadata_then_defaults():
    assert resolve_layout(BARE) == Layout(None, 64, "cosine", 1, fit=True)    # dynamic size: fit by default
    assert resolve_layout(TUNED) == Layout(None, 10, "gaussian", 16, fit=True)
    assert resolve_layout(TUNED, 100) == Layout((112, 112), 10, "gaussian", 16)  # the tile rounded up to 16
    assert resolve_layout(TUNED, (50, 200), 5, "none") == Layout((64, 208), 5, "none", 16)
    assert resolve_layout(TUNED, 40).overlap == 10 and resolve_layout(TUNED, 16).overlap == 8  # default: <= half
    assert resolve_layout(TUNED, 16, overlap=15).overlap == 15                 # given: anything below the tile
    assert resolve_layout(TUNED, fixed_size=(32, 48)) == Layout((32, 48), 10, "gaussian", 16)
    assert resolve_layout(BARE, fixed_size=(32, 32)).overlap == 16
    whole = resolve_layout(TUNED, (64, 64), 8, whole=True)
    assert whole == Layout(None, 0, "gaussian", 16) and whole.whole and not whole.fit
    before = asdict(TUNED)
    resolve_layout(TUNED, FIT, image_size=(300, 400))
    assert asdict(TUNED) == before


def test_resolve_layout_fit_picks_the_tile_from_the_image_size():
    pending = resolve_layout(TUNED, FIT)
    assert pending == Layout(None, 10, "gaussian", 16, fit=True) and not pending.whole
    assert resolve_layout(BARE, FIT).overlap == 64                             # not limited: no tile yet
    fitted = resolve_layout(TUNED, FIT, image_size=(1920, 2560))
    assert fitted == pending.fitted(1920, 2560) == Layout(tiling.fit_tile(1920, 2560, 10, 16, FIT_MAX_SIDE),
                                                          10, "gaussian", 16)
    assert resolve_layout(TUNED, (64, 64), image_size=(1920, 2560)).tile == (64, 64)  # only fit looks at it
    with pytest.raises(ValueError, match="fitted"):
        pending.cut(np.zeros((40, 40, 3), np.float32))


@pytest.mark.parametrize("options, message", [
    (dict(tile=FIT, fixed_size=(32, 32)), "fixed at 32x32; tile fit is not possible"),
    (dict(tile=64, fixed_size=(32, 32)), "fixed at 32x32; tile 64x64 is not possible"),
    (dict(whole=True, fixed_size=(32, 32)), "--whole needs a model that accepts any input size"),
    (dict(tile=64, overlap=64), "overlap must be"),
    (dict(tile=FIT, overlap=FIT_MAX_SIDE), "overlap must be"),
    (dict(blend="median"), "blend must be one of none, cosine, gaussian"),
    (dict(tile=(0, 64)), "tile must be a positive size"),
    (dict(tile=(64, 64, 3)), "tile must be a positive size"),
])
def test_resolve_layout_rejects_what_the_model_does_not_allow(options, message):
    with pytest.raises(FlexunetError, match=message):
        resolve_layout(BARE, **options)


# ---------------------------------------------------------------------------------------------
# the tiled engine's steps


def test_batches_fill_across_images_and_split_where_the_tile_shape_changes():
    x = np.zeros((100, 100, 3), np.float32)
    tiled = [TiledImage(x, Layout((64, 64), 16)) for _ in range(3)]              # 4 tiles each
    order = [[(tiled.index(img), i) for img, i in batch] for batch in batches(tile_refs(tiled), 5)]
    assert order == [[(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)], [(1, 1), (1, 2), (1, 3), (2, 0), (2, 1)],
                     [(2, 2), (2, 3)]]
    whole = [TiledImage(np.zeros(shape, np.float32), Layout(None, multiple=8)) for shape in
             [(20, 30, 3), (17, 30, 3), (40, 40, 3)]]                            # 24x32, 24x32, 40x40
    assert [len(batch) for batch in batches(tile_refs(whole), 4)] == [2, 1]


def test_a_tiled_image_blends_only_once_every_tile_is_in():
    image = TiledImage(np.ones((100, 100, 1), np.float32), Layout((64, 64), 16))
    with pytest.raises(RuntimeError, match="4 of 4 tiles"):
        image.probabilities()
    assert [image.add(np.full((64, 64, 2), 0.25, np.float32), i) for i in range(4)] == [False] * 3 + [True]
    np.testing.assert_allclose(image.probabilities(), 0.25)


def test_predict_image_checks_what_the_model_returns():
    x = np.zeros((70, 90, 3), np.float32)
    with pytest.raises(ModelError, match=r"tiny: output of shape \(2, 32, 32\)"):
        predict_image(x, lambda batch: batch[..., 0], Layout((32, 32), 8), batch_size=2, name="tiny")
    probs = predict_image(x + 1, lambda batch: batch[..., :1] * 0.5, Layout((32, 32), 8), batch_size=2)
    assert probs.shape == (70, 90, 1) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, 0.5)

