"""How images are cut into model inputs: :class:`Layout`, and :func:`resolve_layout`, the one place
that decides the tile, overlap and blend of a run.

Each setting comes from the first of: the option given (API argument or command-line option), the
model (its fixed input size, then the :class:`~flexunet.core.modelinfo.ModelInfo` stored with it),
the defaults of :class:`~flexunet.core.modelinfo.ModelInfo` for metadata that does not say:

* tile: the option; a fixed-size model's input size; ``fit`` for a dynamic-size model;
* overlap: the option; the overlap measured at export (``measured_overlap``: the smallest at which
  tiles agree with a whole-image pass, :mod:`flexunet.export.margin`); the model's ``overlap`` (its
  config's ``[tiledinfer] overlapping``); 64;
* batch: the option; the most tiles whose inputs, probabilities and network activations
  (``activation_bytes`` per pixel, recorded at export) fit in the memory budget
  (:func:`budget_batch`; default :data:`DEFAULT_MEMORY_BUDGET`).

Tiles start at multiples of the model's size ``multiple`` (images are padded to it, as for a
whole-image pass), so every tile pools on the whole image's grid.  The
geometry itself (grids, padding, windows, :func:`~flexunet.core.tiling.fit_tile`) is
:mod:`flexunet.core.tiling` and :mod:`flexunet.core.blending`; tiles are never resized.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from flexunet.core import blending, machine, tiling
from flexunet.core.errors import FlexunetError
from flexunet.core.modelinfo import ModelInfo
from flexunet.core.tiling import BLEND_MODES

FIT = "fit"            # tile="fit": the tile that computes the least area for the image size
FIT_MAX_SIDE = 1536    # largest fitted tile side (bounds activation memory)
FLOAT32 = 4            # bytes per value of model inputs, probabilities, canvases and windows
#: Memory for the batches of a run (inputs, probabilities and network activations of one batch):
#: with it a folder run of any length stays under 2 GiB resident (benchmarks/tmm_targets.py).
DEFAULT_MEMORY_BUDGET = 1 << 30
#: Activation bytes per input pixel assumed for a model whose metadata does not record them.
DEFAULT_ACTIVATION_BYTES = 1024
MAX_BUDGET_BATCH = 8   # a batch picked from the budget has at most this many tiles


@dataclass(frozen=True)
class Layout:
    """How an image is cut into model inputs.

    Attributes:
        tile: ``(height, width)`` of the tiles, or None for one pass over the whole image (or for
            a ``fit`` layout not fitted to an image yet).
        overlap: minimum overlap of neighbouring tiles (and the cosine ramp length), pixels.
        blend: blending window of overlapping tiles: one of :data:`~flexunet.core.tiling.BLEND_MODES`.
        multiple: whole-image passes pad the image, and fitted tiles are rounded, to a multiple of this.
        fit: the tile is chosen from the image size (:meth:`fitted`); such a layout cuts nothing
            until it is fitted.
        max_side: largest side of a fitted tile.
    """

    tile: tuple[int, int] | None
    overlap: int = 0
    blend: str = "cosine"
    multiple: int = 1
    fit: bool = False
    max_side: int = FIT_MAX_SIDE

    @property
    def whole(self) -> bool:
        """One padded pass over the whole image."""
        return self.tile is None and not self.fit

    def fitted(self, height: int, width: int) -> "Layout":
        """For a ``fit`` layout, the layout with the tile that computes the least area for a
        ``height x width`` image (:func:`~flexunet.core.tiling.fit_tile`); any other layout as it is."""
        if not self.fit:
            return self
        overlap = _round_up(self.overlap, self.multiple)  # tiles start on the size multiple
        tile = tiling.fit_tile(height, width, overlap, self.multiple, max(self.max_side, overlap + self.multiple + 1))
        return replace(self, tile=tile, fit=False, max_side=FIT_MAX_SIDE)

    def cut(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int], list[tuple[int, int]], np.ndarray | None]:
        """``(padded image, tile size, tile corners, blending window or None for a whole pass)``.

        The image is reflect-padded at the bottom/right: to a tile when smaller than one, and to
        ``multiple`` (as for a whole pass: tiles then start at multiples of it); tiles are never resized.

        Raises:
            ValueError: for a ``fit`` layout (fit it to the image first).
        """
        if self.fit:
            raise ValueError("a 'fit' layout chooses its tile from an image size: use layout.fitted(h, w)")
        h, w = image.shape[:2]
        if self.tile is None:
            ph, pw = tiling.padded_size(h, w, 1, 1, self.multiple)
            return tiling.pad_image(image, ph, pw, mode="reflect"), (ph, pw), [(0, 0)], None
        th, tw = self.tile
        ph, pw, grid = tiling.plan(h, w, th, tw, self.overlap, self.multiple)
        window = blending.blend_window(th, tw, self.blend, self.overlap)
        return tiling.pad_image(image, ph, pw, mode="reflect"), (th, tw), list(grid), window

    def tiles(self, image: np.ndarray) -> np.ndarray:
        """The (N, h, w, C) model inputs this layout cuts from a pre-processed image (a copy)."""
        padded, (th, tw), corners, _ = self.cut(image)
        return np.stack([padded[y:y + th, x:x + tw] for y, x in corners])


def tile_memory(tile: tuple[int, int], channels: int, classes: int, batch_size: int) -> int:
    """Bytes a tiled run needs at least for one batch of ``tile``-sized tiles (float32): the batch of
    inputs and its probabilities, the pre-processed image they are cut from (at least a tile), the
    stitching canvas (probability sums and weights) and the blending window (built in float64).
    The model's own activations come on top."""
    values = batch_size * (channels + classes) + channels + (classes + 1) + 3
    return int(tile[0]) * int(tile[1]) * values * FLOAT32


def check_memory(layout: Layout, info: ModelInfo, batch_size: int = 1, source: str = "--tile {}") -> None:
    """Refuse a tiled layout whose batches cannot fit in the memory available to this process
    (:func:`~flexunet.core.machine.available_memory`); whole-image and unfitted ``fit`` layouts
    are not checked (their size comes with the image).

    Raises:
        FlexunetError: one line naming where the tile comes from (``source``, see
            :func:`tile_source`), the batch size and both figures.
    """
    if layout.tile is None:
        return
    need = tile_memory(layout.tile, info.channels, info.num_classes, batch_size)
    free = machine.available_memory()
    if need > free:
        tile = source.format("x".join(map(str, layout.tile)))
        batch = "one tile" if batch_size == 1 else f"a batch of {batch_size} tiles"
        raise FlexunetError(
            f"{tile} needs about {need / 2**30:.1f} GiB for {batch} (inputs, probabilities, stitching "
            f"canvas; float32) but {free / 2**30:.1f} GiB is available; use a smaller --tile or --batch-size")


def size_pair(value, what: str) -> tuple[int, int]:
    """``512`` or ``(512, 768)`` -> ``(h, w)`` of positive ints.

    Raises:
        FlexunetError: anything else.
    """
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in pair):
        raise FlexunetError(f"{what} must be a positive size or a (height, width) pair, got {value!r}")
    return int(pair[0]), int(pair[1])


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def activation_bytes(info: ModelInfo) -> int:
    """Bytes per input pixel of the network's intermediate tensors: recorded at export (the sum over
    the graph's tensors, an upper bound of what an engine keeps), else :data:`DEFAULT_ACTIVATION_BYTES`."""
    return int(info.activation_bytes) if info.activation_bytes else DEFAULT_ACTIVATION_BYTES


def batch_tile_bytes(tile: tuple[int, int], info: ModelInfo) -> int:
    """Bytes one tile adds to a batch: its float32 input and probabilities and the network's
    activations (:func:`activation_bytes`)."""
    return int(tile[0]) * int(tile[1]) * (activation_bytes(info) + (info.channels + info.num_classes) * FLOAT32)


def budget_batch(tile: tuple[int, int], info: ModelInfo, budget: int | None = None) -> int:
    """The batch size a memory budget allows: the most ``tile``-sized tiles whose inputs,
    probabilities and activations (:func:`batch_tile_bytes`) fit in ``budget`` bytes (default
    :data:`DEFAULT_MEMORY_BUDGET`), at most :data:`MAX_BUDGET_BATCH`; 1 when the model records no
    activation size and no budget is given, and one tile does not fit the default by the guess.

    Raises:
        FlexunetError: one line, when not even one tile fits.
    """
    given, budget = budget is not None, DEFAULT_MEMORY_BUDGET if budget is None else int(budget)
    per_tile = batch_tile_bytes(tile, info)
    if per_tile > budget and not (given or info.activation_bytes):
        return 1  # the default budget against a guessed activation size: no refusal on a guess
    if per_tile > budget:
        raise FlexunetError(f"--memory-budget {format_bytes(budget)} is too small for one {tile[0]}x{tile[1]} tile "
                            f"(about {format_bytes(per_tile)}: input, probabilities and network activations); "
                            "raise it or use a smaller --tile")
    return max(1, min(MAX_BUDGET_BATCH, budget // per_tile))


def budget_side(info: ModelInfo, budget: int | None = None) -> int:
    """The largest fitted tile side (at most :data:`FIT_MAX_SIDE`, a multiple of ``info.multiple``)
    whose square tile fits in the memory budget; at least one ``multiple``.  Without activation
    figures in the metadata (or a budget given) the side is :data:`FIT_MAX_SIDE`."""
    if not info.activation_bytes and budget is None:
        return FIT_MAX_SIDE
    budget = DEFAULT_MEMORY_BUDGET if budget is None else int(budget)
    per_pixel = batch_tile_bytes((1, 1), info)
    side = int((budget / per_pixel) ** 0.5) // info.multiple * info.multiple
    return max(info.multiple, min(FIT_MAX_SIDE, side))


_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(text: str) -> int:
    """``"1.5G"``, ``"800M"``, ``"2GiB"`` or a number of bytes -> bytes (binary units).

    Raises:
        FlexunetError: anything else, or a size below 1 MiB.
    """
    value = str(text).strip().lower().removesuffix("ib").removesuffix("b")
    unit = value[-1:] if value[-1:] in _UNITS and value[-1:] else ""
    try:
        number = float(value[:-1] if unit else value)
    except ValueError:
        number = -1.0
    if not number * _UNITS[unit] >= 2**20:
        raise FlexunetError(f"memory budget must be a size like 1G, 1.5GiB or 800M (at least 1M), got {text!r}")
    return int(number * _UNITS[unit])


def format_bytes(n: int) -> str:
    """Bytes as GiB (or MiB below 1 GiB), as the memory messages print them."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def default_overlap(info: ModelInfo) -> int:
    """The model's overlap: measured at export (``measured_overlap``), else its ``overlap``."""
    return int(info.measured_overlap) if info.measured_overlap is not None else int(info.overlap)


def _dynamic(info: ModelInfo, fixed_size) -> bool:
    return fixed_size is None and info.height is None and info.width is None


def _tile(info: ModelInfo, tile, fixed_size: tuple[int, int] | None) -> tuple[int, int] | None:
    """The tile of a tiled layout: the option, else the model's fixed size, else ``fit`` (None) for a
    dynamic-size model, else the model's tile."""
    if fixed_size is not None:
        fixed = (int(fixed_size[0]), int(fixed_size[1]))
        if tile is not None and (tile == FIT or size_pair(tile, "tile") != fixed):
            shown = tile if isinstance(tile, str) else "x".join(map(str, size_pair(tile, "tile")))
            raise FlexunetError(f"the model's input is fixed at {fixed[0]}x{fixed[1]}; tile {shown} is not "
                                "possible (leave it out)")
        return fixed
    if tile == FIT or (tile is None and _dynamic(info, fixed_size)):
        return None
    th, tw = size_pair(tile, "tile") if tile is not None else info.tile_size
    return _round_up(th, info.multiple), _round_up(tw, info.multiple)


def tile_source(tile, fixed_size) -> str:
    """Where a layout's tile comes from (the ``tile`` option given or None, the model's fixed input
    size or None), as :func:`check_memory` names it: a format string with ``{}`` for the tile."""
    if fixed_size is not None:
        return "the model's fixed input size {}"
    return "--tile {}" if tile is not None else "the model's tile {} (metadata key 'tile')"


def resolve_layout(info: ModelInfo, tile=None, overlap: int | None = None, blend: str | None = None, *,
                   whole: bool = False, fixed_size: tuple[int, int] | None = None,
                   image_size: tuple[int, int] | None = None, batch_size: int = 1,
                   memory_budget: int | None = None) -> Layout:
    """The layout of a run, from the options given (None: not given), then the model, then defaults.

    Args:
        info: the model's metadata: its tile (``info.tile_size``: the training input size, else
            512), overlap (measured at export, else the config's), blend and size ``multiple``.
        tile: ``n``, ``(h, w)`` or ``"fit"`` (:data:`FIT`: the tile computing the least area for
            the image size, at most :data:`FIT_MAX_SIDE` and what ``memory_budget`` allows).
            Default: the fixed input size of a fixed-size model, ``fit`` for a dynamic-size one,
            else the model's tile.  A dynamic-size model's tile is rounded up to a multiple of
            ``info.multiple``.
        overlap: minimum overlap of neighbouring tiles, ``0 <= overlap <`` the tile.  Default:
            :func:`default_overlap`, limited to half the tile (not limited for ``fit``, whose tiles
            are larger).
        blend: one of :data:`~flexunet.core.tiling.BLEND_MODES`.  Default: the model's.
        whole: one pass over the whole image padded to ``info.multiple`` (overlap 0); wins over
            ``tile``.
        fixed_size: the ``(h, w)`` input size of a fixed-size model (None: dynamic size): the only
            tile such a model takes.
        image_size: ``(h, w)`` of the image a ``fit`` tile is chosen for; without it a ``fit``
            layout is returned (``layout.fit``: call :meth:`Layout.fitted` per run).
        batch_size: tiles per batch, for the memory check (:func:`check_memory`).
        memory_budget: bytes for one batch (:func:`budget_side` bounds fitted tiles by it).

    Raises:
        FlexunetError: options the model does not allow, out of range, or tile batches that
            cannot fit in the memory available.
    """
    blend = blend or info.blend
    if blend not in BLEND_MODES:
        raise FlexunetError(f"blend must be one of {', '.join(BLEND_MODES)}, got {blend!r}")
    if whole:
        if fixed_size is not None:
            raise FlexunetError(f"--whole needs a model that accepts any input size; this one is fixed at "
                                f"{fixed_size[0]}x{fixed_size[1]} (use tiled inference)")
        return Layout(None, 0, blend, info.multiple)
    size = _tile(info, tile, fixed_size)
    max_side = budget_side(info, memory_budget)
    side = min(size) if size is not None else max_side // 2  # the overlap must stay below it
    if overlap is None:
        overlap = default_overlap(info) if size is None else min(default_overlap(info), side // 2)
    elif not 0 <= overlap < max(side, 1):
        raise FlexunetError(f"overlap must be at least 0 and smaller than the tile, got {overlap}")
    layout = Layout(size, int(overlap), blend, info.multiple, fit=size is None, max_side=max_side)
    source = "the tile {} fitted to the image" if layout.fit else tile_source(tile, fixed_size)
    layout = layout.fitted(*image_size) if image_size is not None else layout
    check_memory(layout, info, batch_size, source)
    return layout
