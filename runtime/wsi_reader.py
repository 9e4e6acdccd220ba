"""Whole-slide images read lazily, region by region: which inputs are slides, their pyramid levels and
microns per pixel, and :class:`SlideView`, the slide at the resolution a model works at.

Two readers, both optional (``pip install 'flexunet[wsi]'``):

* OpenSlide (``openslide-python`` with the self-contained ``openslide-bin`` library) for the scanner
  formats (``.svs .ndpi .mrxs .scn .vms .vmu .bif .svslide``);
* ``tifffile`` with ``zarr`` for generic pyramidal TIFF and OME-TIFF (pyramids as SubIFDs or as
  successive reduced directories), which decodes only the TIFF tiles (or strips) a region touches.

A ``.tif``/``.tiff`` input is a slide when it has more than one resolution level, or when its first
level has more than :data:`SLIDE_MIN_PIXELS` pixels; any other TIFF stays a plain image, decoded whole
by :func:`~flexunet.core.imageio.read_image`.  Regions come back as BGR uint8 arrays, like plain images.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import cv2
import numpy as np

from flexunet.core.errors import ImageReadError, MissingDependencyError, first_line

#: Scanner formats, read with OpenSlide.
SCANNER_EXTENSIONS = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
TIFF_EXTENSIONS = (".tif", ".tiff")
SLIDE_EXTENSIONS = SCANNER_EXTENSIONS + TIFF_EXTENSIONS
#: A single-level TIFF with more pixels than this (8192 x 8192) is read as a slide, region by region.
SLIDE_MIN_PIXELS = 1 << 26
INSTALL_HINT = "pip install 'flexunet[wsi]'"
_LEVEL_MATCH = 0.02  # a level within 2% of the wanted downsample is used without rescaling


def _missing(what: str, exc: Exception) -> MissingDependencyError:
    return MissingDependencyError(f"{what} needs {first_line(exc, 120)}; install the slide readers with {INSTALL_HINT}")


def is_slide(path: str | os.PathLike) -> bool:
    """Whether ``path`` is read as a whole-slide image: a scanner format, or a TIFF with a pyramid or
    more than :data:`SLIDE_MIN_PIXELS` pixels (an unreadable TIFF is left to the plain reader)."""
    suffix = Path(path).suffix.lower()
    if suffix in SCANNER_EXTENSIONS:
        return True
    if suffix not in TIFF_EXTENSIONS:
        return False
    try:
        import tifffile
    except ImportError:
        return False
    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            height, width = _yx(series.axes, series.levels[0].shape)
            return len(series.levels) > 1 or height * width > SLIDE_MIN_PIXELS
    except Exception:  # noqa: BLE001 -- not a TIFF tifffile reads: the plain reader reports it
        return False


def _yx(axes: str, shape: tuple) -> tuple[int, int]:
    return int(shape[axes.index("Y")]), int(shape[axes.index("X")])


def _to_bgr(array: np.ndarray, axes: str) -> np.ndarray:
    """A region from a TIFF level (``YX``, ``YXS``, ``SYX``/``CYX`` axes) as BGR uint8."""
    array = np.asarray(array)
    if axes[0] in "SC" and array.ndim == 3:
        array = np.moveaxis(array, 0, -1)
    if array.dtype != np.uint8:
        top = float(np.iinfo(array.dtype).max) if array.dtype.kind in "ui" else max(float(array.max()), 1.0)
        array = np.clip(array.astype(np.float32) * (255.0 / top), 0, 255).round().astype(np.uint8)
    if array.ndim == 2 or array.shape[2] == 1:
        return cv2.cvtColor(array.reshape(array.shape[:2]), cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(array[..., 2::-1])  # RGB(A) -> BGR


class SlideReader:
    """A slide's pyramid: ``levels`` ``(height, width)``, ``downsamples`` (level 0 = 1.0), ``mpp``
    (microns per level-0 pixel, None when the file does not say) and :meth:`read`."""

    path: Path
    levels: list[tuple[int, int]]
    downsamples: list[float]
    mpp: float | None
    kind: str

    def read(self, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
        """The BGR uint8 region at ``(y, x)`` of ``level`` (level coordinates, inside the level)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> "SlideReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class TiffSlide(SlideReader):
    """A generic pyramidal TIFF / OME-TIFF through tifffile's zarr store (tiles decoded on demand)."""

    kind = "tifffile"

    def __init__(self, path: Path):
        try:
            import tifffile
            import zarr
        except ImportError as exc:
            raise _missing(f"{path}: reading a pyramidal TIFF", exc) from None
        self.path = path
        self._tf = tifffile.TiffFile(path)
        try:
            series = self._tf.series[0]
            self._axes = series.axes
            if self._axes not in ("YX", "YXS", "SYX", "CYX"):
                raise ImageReadError(f"{path}: TIFF axes {self._axes} are not supported (YX, YXS, SYX or CYX)")
            self.levels = [_yx(series.axes, lv.shape) for lv in series.levels]
            root = zarr.open(series.aszarr(), mode="r")
            self._arrays = [root[str(i)] for i in range(len(self.levels))] if len(self.levels) > 1 else [root]
            if hasattr(self._arrays[0], "keys"):  # a one-level group
                self._arrays = [self._arrays[0]["0"]]
            self.downsamples = [self.levels[0][1] / w for _, w in self.levels]
            self.mpp = self._mpp(series)
        except BaseException:
            self._tf.close()
            raise

    def _mpp(self, series) -> float | None:
        ome = self._tf.ome_metadata or ""
        found = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', ome)
        if found and float(found.group(1)) > 0:
            return float(found.group(1))
        page = series.pages[0] if series.pages else self._tf.pages[0]
        tags = page.tags
        if "XResolution" not in tags or "ResolutionUnit" not in tags:
            return None
        num, den = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value)
        per_unit = {2: 25400.0, 3: 10000.0}.get(unit)  # inch, centimetre -> microns
        if not per_unit or not num or not den:
            return None
        return per_unit * den / num

    def read(self, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
        array = self._arrays[level]
        index = tuple(slice(y, y + height) if a == "Y" else slice(x, x + width) if a == "X" else slice(None)
                      for a in self._axes)
        return _to_bgr(array[index], self._axes)

    def close(self) -> None:
        self._tf.close()


class OpenSlideSlide(SlideReader):
    """A scanner format through OpenSlide (transparent, unscanned areas read as white)."""

    kind = "openslide"

    def __init__(self, path: Path):
        try:
            import openslide
        except ImportError as exc:
            raise _missing(f"{path}: reading a {path.suffix} slide", exc) from None
        self.path = path
        try:
            self._slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as exc:
            raise ImageReadError(f"{path}: cannot read the slide ({first_line(exc, 160)})") from None
        self.levels = [(h, w) for w, h in self._slide.level_dimensions]
        self.downsamples = [float(d) for d in self._slide.level_downsamples]
        mpp = self._slide.properties.get("openslide.mpp-x")
        self.mpp = float(mpp) if mpp else None

    def read(self, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
        ds = self.downsamples[level]
        region = np.asarray(self._slide.read_region((int(round(x * ds)), int(round(y * ds))), level, (width, height)))
        rgb = region[..., :3].copy()
        rgb[region[..., 3] == 0] = 255
        return np.ascontiguousarray(rgb[..., ::-1])

    def close(self) -> None:
        self._slide.close()


def open_slide(path: str | os.PathLike) -> SlideReader:
    """The reader of a slide: OpenSlide for scanner formats, tifffile for TIFF.

    Raises:
        ImageReadError: the file is missing, corrupt or not a slide (one line naming it).
        MissingDependencyError: the reader it needs is not installed.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    reader = OpenSlideSlide if path.suffix.lower() in SCANNER_EXTENSIONS else TiffSlide
    try:
        slide = reader(path)
    except (ImageReadError, MissingDependencyError):
        raise
    except MemoryError:
        raise ImageReadError(f"{path}: not enough memory to open the slide") from None
    except Exception as exc:  # noqa: BLE001 -- tifffile/zarr raise many kinds for a corrupt file
        raise ImageReadError(f"{path}: cannot read the slide ({first_line(exc, 160)})") from None
    if not slide.levels or min(min(lv) for lv in slide.levels) < 1:
        slide.close()
        raise ImageReadError(f"{path}: the slide has no pixels")
    return slide


class SlideView:
    """A slide at the resolution a model works at ("analysed" pixels).

    The level is the coarsest one whose downsample does not exceed the one wanted
    (``model_mpp / slide_mpp``); when it is not within 2% of it, regions are rescaled (area
    interpolation when shrinking).  Without both mpp values: level 0, no rescaling.

    Attributes:
        level: the pyramid level read.
        scale: level pixels per analysed pixel (1.0: no rescaling).
        height, width: the analysed image size.
        downsample: level-0 pixels per analysed pixel (for coordinates on the slide).
        mpp: microns per analysed pixel (None when unknown).
    """

    def __init__(self, reader: SlideReader, model_mpp: float | None = None, slide_mpp: float | None = None):
        self.reader = reader
        slide_mpp = slide_mpp or reader.mpp
        wanted = model_mpp / slide_mpp if model_mpp and slide_mpp else 1.0
        fits = [i for i, d in enumerate(reader.downsamples) if d <= wanted * (1 + _LEVEL_MATCH)]
        self.level = max(fits, key=lambda i: reader.downsamples[i]) if fits else 0
        ds = reader.downsamples[self.level]
        self.scale = 1.0 if abs(wanted / ds - 1) <= _LEVEL_MATCH else wanted / ds
        lh, lw = reader.levels[self.level]
        self.height, self.width = max(1, round(lh / self.scale)), max(1, round(lw / self.scale))
        self.downsample = ds * self.scale
        self.mpp = slide_mpp * self.downsample if slide_mpp else None

    def read(self, y: int, x: int, height: int, width: int) -> np.ndarray:
        """The BGR uint8 ``height x width`` region at analysed ``(y, x)``."""
        if self.scale == 1.0:
            return self.reader.read(self.level, y, x, height, width)
        lh, lw = self.reader.levels[self.level]
        y0, x0 = int(math.floor(y * self.scale)), int(math.floor(x * self.scale))
        y1 = min(lh, max(y0 + 1, int(math.ceil((y + height) * self.scale))))
        x1 = min(lw, max(x0 + 1, int(math.ceil((x + width) * self.scale))))
        region = self.reader.read(self.level, y0, x0, y1 - y0, x1 - x0)
        interp = cv2.INTER_AREA if self.scale > 1 else cv2.INTER_LINEAR
        return cv2.resize(region, (width, height), interpolation=interp)

    def thumbnail(self, max_side: int) -> np.ndarray:
        """The whole slide as a BGR image of at most ``max_side`` pixels a side, read from the
        smallest level that is still at least that large, in blocks (bounded memory)."""
        h0, w0 = self.reader.levels[0]
        t = min(1.0, max_side / max(h0, w0))
        th, tw = max(1, round(h0 * t)), max(1, round(w0 * t))
        big = [i for i, (h, w) in enumerate(self.reader.levels) if max(h, w) >= max(th, tw)]
        level = max(big, key=lambda i: self.reader.downsamples[i]) if big else 0
        lh, lw = self.reader.levels[level]
        out = np.empty((th, tw, 3), np.uint8)
        step_y, step_x = max(1, 2048 * th // lh), max(1, 2048 * tw // lw)  # thumbnail pixels per block
        for ty0 in range(0, th, step_y):
            ty1 = min(th, ty0 + step_y)
            ly0, ly1 = ty0 * lh // th, max(ty0 * lh // th + 1, ty1 * lh // th)
            for tx0 in range(0, tw, step_x):
                tx1 = min(tw, tx0 + step_x)
                lx0, lx1 = tx0 * lw // tw, max(tx0 * lw // tw + 1, tx1 * lw // tw)
                part = self.reader.read(level, ly0, lx0, ly1 - ly0, lx1 - lx0)
                out[ty0:ty1, tx0:tx1] = cv2.resize(part, (tx1 - tx0, ty1 - ty0), interpolation=cv2.INTER_AREA)
        return out
