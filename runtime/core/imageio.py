"""The one image reader and writer of the project (OpenCV, BGR channel order, uint8).

Reading goes through ``numpy.fromfile`` + ``cv2.imdecode`` so that any path works and so that a
corrupt or truncated file is reported as :class:`~flexunet.core.errors.ImageReadError` naming the file.
Writing encodes in memory and renames a complete temporary file into place.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from flexunet.core.atomic import write_bytes
from flexunet.core.errors import FlexunetError, ImageReadError

# Decoder warnings (e.g. "PNG input buffer is incomplete") would reach the user's terminal beside
# our own one-line report of the same file; keep OpenCV's log to errors.
if hasattr(cv2, "utils") and hasattr(cv2.utils, "logging"):
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def is_image_file(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FlexunetError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files and folders given on a command line -> the image files they name, in order, no repeats."""
    out: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        p = Path(item)
        found = list_images(p) if p.is_dir() else [p]
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


def _decode(path: Path, flags: int) -> np.ndarray:
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data.size == 0:
        raise ImageReadError(f"{path}: empty file")
    img = cv2.imdecode(data, flags)
    if img is None or img.size == 0:
        raise ImageReadError(f"{path}: cannot decode image (corrupt or unsupported format)")
    if img.dtype != np.uint8:  # 16-bit PNG/TIFF: scale to 8 bits
        img = (img.astype(np.float32) * (255.0 / float(np.iinfo(img.dtype).max))).round().astype(np.uint8)
    return img


def read_image(path: str | os.PathLike, channels: int = 3) -> np.ndarray:
    """Read an image as uint8: HxWx3 in BGR order (``channels=3``) or HxWx1 (``channels=1``)."""
    path = Path(path)
    if channels == 3:
        return _decode(path, cv2.IMREAD_COLOR)
    if channels == 1:
        return _decode(path, cv2.IMREAD_GRAYSCALE)[..., None]
    raise ValueError(f"channels must be 1 or 3, not {channels}")


def read_mask(path: str | os.PathLike, color: bool = False) -> np.ndarray:
    """Read a mask: HxW uint8 grayscale, or HxWx3 BGR when ``color`` (categorised masks)."""
    path = Path(path)
    if color:
        return _decode(path, cv2.IMREAD_COLOR)
    return _decode(path, cv2.IMREAD_GRAYSCALE)


def encode_image(path: str | os.PathLike, image: np.ndarray) -> bytes:
    ext = Path(path).suffix.lower() or ".png"
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(image))
    if not ok:
        raise FlexunetError(f"{path}: cannot encode image as {ext}")
    return buf.tobytes()


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Encode ``image`` (uint8, BGR or grayscale) by the file's extension and write it atomically."""
    data = encode_image(path, image)
    try:
        return write_bytes(path, data)
    except OSError as exc:
        raise FlexunetError(f"{path}: cannot write ({exc.strerror or exc})") from None
