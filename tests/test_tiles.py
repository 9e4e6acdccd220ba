"""The one tile sampler (runtime.tiles): what it draws, from where, and its refusals."""
from __future__ import annotations

import numpy as np
import pytest

from flexunet.core.errors import FlexunetError
from flexunet.core.imageio import read_image
from flexunet.core.modelinfo import ModelInfo
from flexunet.core.preprocess import Preprocess
from flexunet.runtime.layout import Layout
from flexunet.runtime.tiles import image_tiles, with_symmetries

INFO = ModelInfo(height=32, width=32, channels=3, num_classes=1, preprocess=Preprocess(scale=1 / 255))


def test_tiles_are_preprocessed_grid_cells_of_the_images(make_images, tmp_path):
    (path,) = make_images(tmp_path / "in", [(64, 96)])                # a 2x3 grid of 32x32 tiles
    tiles = image_tiles([path], INFO, count=100)
    assert tiles.shape == (6, 32, 32, 3) and tiles.dtype == np.float32
    expected = read_image(path)[32:64, 64:96].astype(np.float32) / 255  # the last cell in grid order
    np.testing.assert_allclose(tiles[-1], expected, atol=1e-6)


def test_a_random_subset_in_grid_order_and_unreadable_files_skipped(make_images, tmp_path, caplog):
    paths = make_images(tmp_path / "in", [(64, 96), (64, 64)])
    bad = tmp_path / "in" / "broken.png"
    bad.write_bytes(b"not a png")
    every = image_tiles(paths, INFO, count=100)
    some = image_tiles([paths[0], bad, paths[1]], INFO, count=4, seed=3)
    assert len(every) == 10 and len(some) == 4
    rows = [int(np.flatnonzero((every == t).all(axis=(1, 2, 3)))[0]) for t in some]
    assert rows == sorted(rows) and len(set(rows)) == 4
    assert "broken.png" in caplog.text
    with pytest.raises(FlexunetError, match="no readable images among 1 file"):
        image_tiles([bad], INFO, count=4)


def test_fit_layout_is_fitted_to_the_first_image_and_augment_adds_views(make_images, tmp_path):
    paths = make_images(tmp_path / "in", [(40, 50)])
    fitted = image_tiles(paths, INFO, count=8, layout=Layout(None, 8, fit=True))
    assert fitted.shape == (1, 40, 50, 3)                          # one tile covers the image
    views = image_tiles(paths, INFO, count=3, augment=True)        # 4 cells, no views needed
    assert len(views) == 3
    few = image_tiles(paths[:1], INFO, count=12, augment=True)
    assert len(few) == 12 and len(with_symmetries(few[:1], 100)) == 8
