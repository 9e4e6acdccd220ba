"""The outputs of a whole-slide run, written as regions come, never a full-resolution array in memory.

For a slide segmented into OUT under the name ``<stem>``:

* ``<stem>.tif``: the label mask (0/255 for a binary model, class indices otherwise) as a tiled
  (256 x 256, deflate), pyramidal BigTIFF: each level half the previous one (nearest sampling) in
  successive directories, with the analysed resolution (microns per pixel) in its resolution tags.
  OpenSlide, QuPath and tifffile read it.  While the slide runs, each level's tiles live in a
  temporary file (tile-major; background never written, so the file stays sparse); the TIFF is
  assembled from them at the end, tile by tile.
* ``<stem>.geojson``: a QuPath-compatible FeatureCollection: one Polygon annotation (with holes)
  per object and region, in level-0 slide pixels, with the class name and colour.  Objects that
  cross a region border are cut there.
* ``<stem>_preview.png``: a thumbnail of the slide with the mask overlaid and the tissue outlined;
  ``<stem>_tissue.png``: the tissue mask used.

Every file is written under a temporary name in OUT and renamed when complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np

from flexunet.core import masks
from flexunet.core.atomic import temporary_affixes, write_file
from flexunet.core.errors import MissingDependencyError
from flexunet.core.imageio import write_image

TILE = 256
OUTLINE_BGR = (255, 128, 0)  # tissue outline in the preview


def _temporary(dest: Path) -> Path:
    """A temporary file beside ``dest`` with the project's temporary name (removed by ``--resume``)."""
    prefix, suffix = temporary_affixes(dest)
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=dest.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)  # the GeoJSON is renamed into place: the usual permissions
    return Path(name)


class TileStore:
    """One pyramid level's ``uint8`` tiles in a file, tile-major, written in any order."""

    def __init__(self, path: Path, height: int, width: int):
        self.path, self.height, self.width = path, height, width
        self.rows, self.cols = -(-height // TILE), -(-width // TILE)
        self._fd = os.open(path, os.O_RDWR)

    def _offset(self, ty: int, tx: int) -> int:
        return (ty * self.cols + tx) * TILE * TILE

    def get(self, ty: int, tx: int) -> np.ndarray:
        """The tile at tile row ``ty``, column ``tx`` (zeros where nothing was written)."""
        data = os.pread(self._fd, TILE * TILE, self._offset(ty, tx))
        tile = np.zeros(TILE * TILE, np.uint8)
        tile[:len(data)] = np.frombuffer(data, np.uint8)
        return tile.reshape(TILE, TILE)

    def put(self, y: int, x: int, block: np.ndarray) -> None:
        """Write ``block`` at pixel ``(y, x)``; all-zero parts are not written (they read as zeros)."""
        h, w = block.shape
        for ty in range(y // TILE, (y + h - 1) // TILE + 1):
            for tx in range(x // TILE, (x + w - 1) // TILE + 1):
                oy, ox = ty * TILE, tx * TILE
                ys, xs = slice(max(y, oy), min(y + h, oy + TILE)), slice(max(x, ox), min(x + w, ox + TILE))
                part = block[ys.start - y:ys.stop - y, xs.start - x:xs.stop - x]
                if not part.any():
                    continue
                tile = self.get(ty, tx)
                tile[ys.start - oy:ys.stop - oy, xs.start - ox:xs.stop - ox] = part
                os.pwrite(self._fd, tile.tobytes(), self._offset(ty, tx))

    def encoded_tiles(self):
        """Every tile deflate-encoded (TIFF compression 8), row-major (as TIFF stores them); the
        all-zero tile is encoded once."""
        size = TILE * TILE
        zero = bytes(size)
        zero_encoded = zlib.compress(zero)
        for ty in range(self.rows):
            for tx in range(self.cols):
                data = os.pread(self._fd, size, self._offset(ty, tx))
                data = data + bytes(size - len(data)) if len(data) < size else data
                yield zero_encoded if data == zero else zlib.compress(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def polygons(labels: np.ndarray, labels_count: int):
    """``(class, rings)`` per object of each class ``1..labels_count-1``: an outer ring and its holes,
    as ``(n, 2)`` float arrays of pixel ``(x, y)`` (pixel centres; objects too thin for a polygon
    become their bounding box)."""
    for cls in range(1, labels_count):
        mask = (labels == cls).astype(np.uint8)
        if not mask.any():
            continue
        contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        links = hierarchy[0]
        for i, contour in enumerate(contours):
            if links[i][3] != -1:
                continue  # a hole: taken with its outer ring
            rings, child = [_ring(contour, outer=True)], links[i][2]
            while child != -1:
                if len(contours[child]) >= 3:
                    rings.append(_ring(contours[child], outer=False))
                child = links[child][0]
            yield cls, rings


def _ring(contour: np.ndarray, outer: bool) -> np.ndarray:
    """A closed ring; counter-clockwise outer rings and clockwise holes (in x-right, y-up terms)."""
    points = contour.reshape(-1, 2).astype(np.float64)
    if len(points) < 3:
        x, y, w, h = cv2.boundingRect(contour)
        points = np.array([(x, y), (x + w, y), (x + w, y + h), (x, y + h)], np.float64) - 0.5
    points = points + 0.5
    area = 0.5 * np.sum(points[:, 0] * np.roll(points[:, 1], -1) - np.roll(points[:, 0], -1) * points[:, 1])
    if (area < 0) == outer:
        points = points[::-1]
    return np.vstack([points, points[:1]])


class SlideWriter:
    """Writes one slide's outputs as its regions come (see the module's description).

    Args:
        files: ``{"mask": .tif, "geojson": .geojson, "preview": .png, "tissue": .png}`` destinations.
        size: ``(height, width)`` of the analysed image.
        downsample: level-0 slide pixels per analysed pixel (GeoJSON coordinates).
        mpp: microns per analysed pixel, or None.
        class_names, class_colors: per label value (RGB colours).
        binary: labels 0/1 are written 0/255.
        thumbnail: BGR thumbnail of the slide (the preview's background).
        tissue: boolean tissue mask (any size) for the preview outline and ``tissue`` file, or None.
    """

    def __init__(self, files: dict[str, Path], size: tuple[int, int], downsample: float, mpp: float | None,
                 class_names: list, class_colors: list, binary: bool, thumbnail: np.ndarray,
                 tissue: np.ndarray | None):
        try:
            import tifffile  # noqa: F401 -- checked before anything runs
        except ImportError as exc:
            raise MissingDependencyError(f"writing pyramidal TIFF needs {exc.name}; "
                                         "pip install 'flexunet[wsi]'") from None
        self.files, self.size, self.downsample, self.mpp = files, size, downsample, mpp
        self.names, self.colors, self.binary = list(class_names), [tuple(c) for c in class_colors], binary
        self.labels_count = len(self.colors)
        self.thumbnail, self.tissue = thumbnail, tissue
        th, tw = thumbnail.shape[:2]
        self._thumb_labels = np.zeros((th, tw), np.uint8)
        self._thumb_y = ((np.arange(th) + 0.5) * size[0] / th).astype(np.int64)
        self._thumb_x = ((np.arange(tw) + 0.5) * size[1] / tw).astype(np.int64)
        self._temps: list[Path] = []
        self.stores: list[TileStore] = []
        self.features = 0
        try:
            h, w = size
            while True:
                self.stores.append(TileStore(self._temp(files["mask"]), h, w))
                if max(h, w) <= TILE:
                    break
                h, w = -(-h // 2), -(-w // 2)
            self._geojson_tmp = self._temp(files["geojson"])
            self._geojson = open(self._geojson_tmp, "w", encoding="utf-8")
            self._geojson.write('{"type": "FeatureCollection", "features": [')
        except BaseException:
            self.close()
            raise

    def _temp(self, dest: Path) -> Path:
        path = _temporary(dest)
        self._temps.append(path)
        return path

    def add(self, y: int, x: int, labels: np.ndarray) -> None:
        """The class indices of the analysed region whose top-left corner is ``(y, x)``."""
        values = labels * np.uint8(255) if self.binary else labels
        for level, store in enumerate(self.stores):
            f = 1 << level
            oy, ox = (-y) % f, (-x) % f
            part = values[oy::f, ox::f]
            if part.size:
                store.put((y + oy) // f, (x + ox) // f, part)
        self._add_polygons(y, x, labels)
        rows = np.nonzero((self._thumb_y >= y) & (self._thumb_y < y + labels.shape[0]))[0]
        cols = np.nonzero((self._thumb_x >= x) & (self._thumb_x < x + labels.shape[1]))[0]
        if rows.size and cols.size:
            self._thumb_labels[np.ix_(rows, cols)] = labels[np.ix_(self._thumb_y[rows] - y, self._thumb_x[cols] - x)]

    def _add_polygons(self, y: int, x: int, labels: np.ndarray) -> None:
        for cls, rings in polygons(labels, self.labels_count):
            coords = [np.round((ring + (x, y)) * self.downsample, 2).tolist() for ring in rings]
            feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": coords},
                       "properties": {"objectType": "annotation",
                                      "classification": {"name": self._name(cls), "color": list(self.colors[cls])}}}
            self._geojson.write(("," if self.features else "") + "\n" + json.dumps(feature, separators=(",", ":")))
            self.features += 1

    def _name(self, cls: int) -> str:
        return str(self.names[cls]) if cls < len(self.names) else f"class {cls}"

    def finish(self) -> None:
        """Write the TIFF, the GeoJSON, the preview and the tissue mask (each renamed when complete)."""
        self._geojson.write("\n]}\n")
        self._geojson.close()
        write_file(self.files["mask"], self._write_tiff)
        os.replace(self._geojson_tmp, self.files["geojson"])
        preview = masks.overlay(self.thumbnail, self._thumb_labels, self.colors)
        if self.tissue is not None:
            th, tw = self.thumbnail.shape[:2]
            tissue = cv2.resize(self.tissue.astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(tissue, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(preview, contours, -1, OUTLINE_BGR, 1)
            write_image(self.files["tissue"], tissue * np.uint8(255))
        write_image(self.files["preview"], preview)

    def _write_tiff(self, path: Path) -> None:
        import tifffile

        with tifffile.TiffWriter(path, bigtiff=True) as tif:
            for level, store in enumerate(self.stores):
                extra = {}
                if self.mpp:
                    per_cm = 1e4 / (self.mpp * self.size[1] / store.width)
                    extra = dict(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
                tif.write(store.encoded_tiles(), shape=(store.height, store.width), dtype=np.uint8, tile=(TILE, TILE),
                          compression="zlib", photometric="minisblack", subfiletype=1 if level else 0,
                          metadata=None, **extra)

    def close(self) -> None:
        """Remove the temporary files (after :meth:`finish`, or when the slide is abandoned)."""
        with contextlib.suppress(AttributeError, OSError):
            self._geojson.close()
        for store in self.stores:
            store.close()
        for path in self._temps:
            with contextlib.suppress(OSError):
                path.unlink()
