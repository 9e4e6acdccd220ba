"""Tiling geometry shared by training, tiled inference, benchmarks and parity (numpy only).

The conventions, stated once:

* Images are ``HxW`` or ``HxWxC`` arrays indexed ``[y, x]``; tiles are described by their top-left
  corner ``(y, x)`` and a fixed size ``(tile_h, tile_w)``.
* Tiles are never resized.  Along each axis the start offsets step by ``tile - overlap`` and the
  last tile is shifted inward so that it ends exactly at the image border (it then overlaps its
  neighbour by more than ``overlap``).
* An image smaller than a tile is padded at the bottom/right (:func:`padded_size`,
  :func:`pad_image`, or both at once with :func:`plan`) and the prediction is cropped back with
  :meth:`~flexunet.core.blending.Stitcher.result`.
* Overlapping predictions are blended by :mod:`flexunet.core.blending` with one of
  :data:`BLEND_MODES`; :func:`fit_tile` picks a tile size for an image size.

Modelled on MONAI's ``sliding_window_inference`` helpers: geometry lives in small pure functions;
the blending windows and the ``Stitcher`` live in :mod:`flexunet.core.blending`, which builds on
this module (never the other way round).
"""
from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

BLEND_MODES = ("none", "cosine", "gaussian")  # blending windows of overlapping tiles (core.blending)
#: Defaults of a model whose metadata (or training config) does not say: its tiles overlap by
#: DEFAULT_OVERLAP pixels, blended with DEFAULT_BLEND; DEFAULT_TILE is the tile side of a model
#: that records neither a tile nor an input size.
DEFAULT_OVERLAP = 64
DEFAULT_BLEND = "cosine"
DEFAULT_TILE = 512
PAD_MODES = ("reflect", "constant")


def checked_int(value: int, name: str, minimum: int) -> int:
    """``value`` as a Python int (numpy integers accepted), checked to be ``>= minimum``."""
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of the tiles along one axis.

    Tiles of size ``tile`` placed at the returned offsets cover ``[0, length)`` and every pair of
    neighbours shares at least ``overlap`` pixels.  Offsets step by ``stride = tile - overlap``
    (rounded down to a multiple of ``align``); the last tile is shifted inward so that it ends
    exactly at ``length``.  The offsets are unique and increasing, the first is 0.

    Args:
        length: size of the (already padded) axis, ``>= tile``.
        tile: tile size along the axis, ``>= 1``.
        overlap: minimum number of pixels shared by neighbouring tiles, ``0 <= overlap < tile``.
        align: every offset is a multiple of it (``length`` and ``tile`` must then be multiples of
            it too).  A network that downsamples by ``align`` then sees the same pooling grid in
            every tile as in the whole image, so tiles agree with a whole-image pass.

    Returns:
        The start offsets, e.g. ``tile_starts(10, 4, 1) == [0, 3, 6]``.

    Raises:
        ValueError: if ``length < tile`` (pad the image first), ``overlap`` is outside
            ``[0, tile)``, or ``length`` or ``tile`` is not a multiple of ``align``.
    """
    tile = checked_int(tile, "tile", 1)
    length = checked_int(length, "length", 1)
    overlap = checked_int(overlap, "overlap", 0)
    align = checked_int(align, "align", 1)
    if overlap >= tile:
        raise ValueError(f"overlap must be smaller than the tile ({tile}), got {overlap}")
    if length < tile:
        raise ValueError(f"length {length} is smaller than the tile {tile}; pad the image first")
    if length % align or tile % align:
        raise ValueError(f"length {length} and tile {tile} must be multiples of align {align}")
    last = length - tile
    stride = max(align, (tile - overlap) // align * align)
    return [*range(0, last, stride), last]


@dataclass(frozen=True)
class TileGrid:
    """The tiles covering an image, as start offsets along each axis (build with :func:`make_grid`).

    Attributes:
        height, width: size of the (possibly padded) image the tiles index.
        tile_h, tile_w: size of every tile.
        overlap: minimum overlap between neighbouring tiles, in pixels, along both axes.
        ys, xs: tile start offsets along y and x (see :func:`tile_starts`).

    Tiles are numbered row-major: tile ``i`` starts at ``(ys[i // len(xs)], xs[i % len(xs)])``.
    """

    height: int
    width: int
    tile_h: int
    tile_w: int
    overlap: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    def __len__(self) -> int:
        """Number of tiles."""
        return len(self.ys) * len(self.xs)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """Top-left corners ``(y, x)`` of the tiles, row-major."""
        return ((y, x) for y in self.ys for x in self.xs)

    def _corner(self, i: int) -> tuple[int, int]:
        """Top-left corner ``(y, x)`` of the ``i``-th tile (negative ``i`` counts from the end)."""
        n = len(self)
        i = operator.index(i)
        if not -n <= i < n:
            raise IndexError(f"tile index {i} out of range for a grid of {n} tiles")
        row, col = divmod(i % n, len(self.xs))
        return self.ys[row], self.xs[col]

    def slices(self, i: int) -> tuple[slice, slice]:
        """``(rows, cols)`` slices selecting the ``i``-th tile from the image: ``image[grid.slices(i)]``."""
        y, x = self._corner(i)
        return slice(y, y + self.tile_h), slice(x, x + self.tile_w)


def make_grid(height: int, width: int, tile_h: int, tile_w: int, overlap: int, align: int = 1) -> TileGrid:
    """Grid of ``tile_h x tile_w`` tiles over a ``height x width`` image.

    The image must be at least the tile size; call :func:`padded_size` and :func:`pad_image` (or
    :func:`plan`) first for smaller ones.  ``overlap`` applies to both axes and must be smaller
    than both tile sides; ``align`` as for :func:`tile_starts`.

    Raises:
        ValueError: for an image smaller than the tile or an invalid overlap.
    """
    ys = tile_starts(height, tile_h, overlap, align)
    xs = tile_starts(width, tile_w, overlap, align)
    return TileGrid(
        height=int(height), width=int(width), tile_h=int(tile_h), tile_w=int(tile_w),
        overlap=int(overlap), ys=tuple(ys), xs=tuple(xs),
    )


def padded_size(height: int, width: int, tile_h: int, tile_w: int, multiple: int = 1) -> tuple[int, int]:
    """Smallest ``(H, W)`` that is ``>= (height, width)``, ``>= (tile_h, tile_w)`` and whose sides
    are multiples of ``multiple``.

    ``multiple`` serves whole-image passes through a UNet, which needs sizes divisible by
    ``2 ** (levels - 1)``; leave it at 1 for tiled inference, where only the tile size matters.
    """
    height = checked_int(height, "height", 1)
    width = checked_int(width, "width", 1)
    tile_h = checked_int(tile_h, "tile_h", 1)
    tile_w = checked_int(tile_w, "tile_w", 1)
    multiple = checked_int(multiple, "multiple", 1)

    def round_up(n: int) -> int:
        return -(-n // multiple) * multiple

    return round_up(max(height, tile_h)), round_up(max(width, tile_w))


def pad_image(image: np.ndarray, height: int, width: int, mode: str = "reflect") -> np.ndarray:
    """Pad an ``HxW`` or ``HxWxC`` array at the bottom and right to ``(height, width)``.

    Args:
        image: the array to pad; its dtype is kept.
        height, width: target size, each ``>=`` the image's.
        mode: ``"reflect"`` mirrors the image without repeating the border pixel (numpy's
            ``"reflect"``; numpy repeats the reflection when the pad is longer than the image and
            replicates the edge of a 1-pixel axis, so even a 1x1 image pads without error), or
            ``"constant"`` pads with zeros.

    Returns:
        The padded array, or ``image`` itself when it already has the target size.

    Raises:
        ValueError: for an unknown mode, an array that is not 2-D/3-D or is empty, or a target
            smaller than the image.
    """
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode must be one of {PAD_MODES}, got {mode!r}")
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC array, got shape {image.shape}")
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"cannot pad an empty image of shape {image.shape}")
    height = checked_int(height, "height", 1)
    width = checked_int(width, "width", 1)
    if height < h or width < w:
        raise ValueError(f"target size {height}x{width} is smaller than the image {h}x{w}")
    if (height, width) == (h, w):
        return image
    widths = ((0, height - h), (0, width - w)) + ((0, 0),) * (image.ndim - 2)
    return np.pad(image, widths, mode=mode)


def extract_tiles(image: np.ndarray, grid: TileGrid, out: np.ndarray | None = None) -> np.ndarray:
    """Copy the grid's tiles of an image into one stacked array.

    Args:
        image: ``HxWxC`` (or ``HxW``) array of exactly the grid's ``height x width``.
        grid: the tiles to cut.
        out: optional preallocated array of shape ``(len(grid), tile_h, tile_w, C)`` (``(len(grid),
            tile_h, tile_w)`` for an ``HxW`` image); tiles are cast to its dtype.

    Returns:
        ``(N, tile_h, tile_w, C)`` array of the tiles in the grid's row-major order (``out`` when
        given, otherwise a new array of the image's dtype).

    Raises:
        ValueError: if the image or ``out`` has the wrong shape.
    """
    if image.ndim not in (2, 3) or image.shape[:2] != (grid.height, grid.width):
        raise ValueError(
            f"image of shape {image.shape} does not match the grid's {grid.height}x{grid.width}"
        )
    shape = (len(grid), grid.tile_h, grid.tile_w) + image.shape[2:]
    if out is None:
        out = np.empty(shape, dtype=image.dtype)
    elif out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, expected {shape}")
    for i, (y, x) in enumerate(grid):
        out[i] = image[y:y + grid.tile_h, x:x + grid.tile_w]
    return out


def plan(height: int, width: int, tile_h: int, tile_w: int, overlap: int,
         multiple: int = 1) -> tuple[int, int, TileGrid]:
    """Padded size and tile grid for a ``height x width`` image.

    The image is padded only when it is smaller than a tile, or to round its size up to
    ``multiple`` (see :func:`padded_size`).  When both tile sides are multiples of ``multiple``,
    the tiles start at multiples of it too (``align``, :func:`tile_starts`): a network that needs
    sizes divisible by ``multiple`` then pools every tile on the whole image's grid.

    Returns:
        ``(padded_h, padded_w, grid)`` with ``grid = make_grid(padded_h, padded_w, ...)``.
    """
    padded_h, padded_w = padded_size(height, width, tile_h, tile_w, multiple)
    align = multiple if tile_h % multiple == 0 and tile_w % multiple == 0 else 1
    return padded_h, padded_w, make_grid(padded_h, padded_w, tile_h, tile_w, overlap, align)


def fit_tile(height: int, width: int, overlap: int, multiple: int = 1, max_side: int = 1536) -> tuple[int, int]:
    """The tile that covers a ``height x width`` image with the least computed area.

    For a model that accepts any size that is a multiple of ``multiple``: over grids of ``ny x nx``
    tiles overlapping by ``overlap``, the tile of each grid is the smallest multiple of ``multiple``
    that still covers the image (``n * tile - (n - 1) * overlap >= side``); sides larger than
    ``max_side`` are not considered (memory).  Returns the ``(tile_h, tile_w)`` with the smallest
    total area ``ny * nx * tile_h * tile_w`` (fewer tiles on ties).  A 1920x2560 slide with overlap
    64 and multiple 32 gets 992x1312 tiles (4 tiles, 5.2 Mpx) instead of 30 tiles of 512 (7.9 Mpx).
    """
    if min(height, width) < 1 or multiple < 1 or overlap < 0 or max_side <= overlap + multiple:
        raise ValueError(f"bad geometry: {height}x{width}, overlap {overlap}, multiple {multiple}, "
                         f"max side {max_side}")

    def options(side: int) -> list[tuple[int, int]]:
        out = []
        for n in range(1, side + 1):
            t = -(-(side + (n - 1) * overlap) // n)
            t = -(-max(t, overlap + 1) // multiple) * multiple
            if t <= max_side:
                out.append((n, t))
            if t <= 2 * overlap or t == multiple:
                break
        return out

    # The area ny*th * nx*tw is a product of one factor per axis: minimise each axis on its own
    # (fewer tiles on ties).
    _, _, th = min((n * t, n, t) for n, t in options(height))
    _, _, tw = min((n * t, n, t) for n, t in options(width))
    return th, tw
