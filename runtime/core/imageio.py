"""The one image reader and writer of the project (OpenCV, BGR channel order, uint8).

Reading takes the file's bytes and decodes them with ``cv2.imdecode``, so that any path works and
so that every input that cannot become an image is reported as
:class:`~flexunet.core.errors.ImageReadError` naming the file: missing, a broken symbolic link or
a link loop, not a regular file (a FIFO is never waited on), corrupt or truncated, or larger than
:func:`max_image_pixels` (checked from the header before decoding, and again after), or too large
for the memory.  What the decoders print (``libpng error: ...``) is kept off the terminal.
Writing encodes in memory and renames a complete temporary file into place.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from flexunet.core.atomic import write_bytes
from flexunet.core.decoder_quiet import quiet_decoders
from flexunet.core.errors import FlexunetError, ImageReadError
from flexunet.core.image_headers import header_size
from flexunet.core.machine import total_memory

# Decoder warnings (e.g. "PNG input buffer is incomplete") would reach the user's terminal beside
# our own one-line report of the same file; keep OpenCV's log to errors.
if hasattr(cv2, "utils") and hasattr(cv2.utils, "logging"):
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")

#: Environment variable that sets the largest image decoded, in pixels (width x height).
MAX_PIXELS_ENV = "FLEXUNET_MAX_IMAGE_PIXELS"
#: Bytes of memory a folder run may need per pixel of a slide: the decoded image, its float32
#: pre-processed and padded copies, the blend accumulators, probabilities and labels (about 45 for a
#: binary model), with room for the other slides in flight.
RUN_BYTES_PER_PIXEL = 64
_OPENCV_MAX_PIXELS = 1 << 30  # OpenCV's own default limit (OPENCV_IO_MAX_IMAGE_PIXELS)


#: The default limit: OpenCV's, or what this machine's memory can segment if that is less.
MAX_IMAGE_PIXELS = min(_OPENCV_MAX_PIXELS, (total_memory() or 1 << 62) // RUN_BYTES_PER_PIXEL)


def max_image_pixels() -> int:
    """The largest image :func:`read_image` decodes, in pixels: ``$FLEXUNET_MAX_IMAGE_PIXELS``, else
    :data:`MAX_IMAGE_PIXELS`.  (OpenCV refuses more than ``$OPENCV_IO_MAX_IMAGE_PIXELS``, 2^30 by
    default, whatever this says.)

    Raises:
        FlexunetError: the variable is not a whole number of at least 1.
    """
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return MAX_IMAGE_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise FlexunetError(f"{MAX_PIXELS_ENV}={value[:40]!r}: expected a whole number of pixels (at least 1)")
    return limit


# -- listing inputs ------------------------------------------------------------------------------------
def is_image_file(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FlexunetError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def _folder_inputs(folder: Path) -> list[Path]:
    """Entries of ``folder`` with image names, sorted: files, and what looks like one but cannot be
    read (broken links, link loops, FIFOs), which :func:`read_image` then reports; not folders."""
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if is_image_file(e.name) and not _is_dir(e)]
    except OSError as exc:
        raise FlexunetError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None
    return [folder / name for name in sorted(names)]


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a link loop
        return False


def _named_input(path: Path) -> list[Path]:
    """The image files one command-line input names: a folder's images, or the file itself.

    Raises:
        FlexunetError: the path does not exist, is a broken link or a link loop, or is neither a
            folder nor a regular file (a FIFO, a device).
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise FlexunetError(_open_error(path, exc, "no such file or folder")) from None
    if stat.S_ISDIR(mode):
        return _folder_inputs(path)
    if not stat.S_ISREG(mode):
        raise FlexunetError(f"{path}: not a regular file or a folder ({_kind(mode)})")
    return [path]


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files and folders given on a command line -> the image files they name, in order, no repeats.

    A folder gives the entries with image names directly inside it (not hidden, not folders),
    those that cannot be read included, so that a run reports them as skipped inputs.

    Raises:
        FlexunetError: a named path that is missing, a broken link or a link loop, or neither a
            folder nor a regular file.
    """
    out: list[Path] = []
    seen: set[str] = set()
    for item in inputs:
        for f in _named_input(Path(item)):
            key = os.path.realpath(f)  # never raises, unlike Path.resolve() on a link loop
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


# -- reading -------------------------------------------------------------------------------------------
def _open_error(path: Path, exc: OSError, missing: str = "no such file") -> str:
    """The one-line error for a path that cannot be opened (or examined)."""
    if isinstance(exc, FileNotFoundError):
        return f"{path}: {missing}" + (" (a broken symbolic link)" if os.path.islink(path) else "")
    if exc.errno == errno.ELOOP:
        return f"{path}: symbolic link loop"
    return f"{path}: cannot read ({exc.strerror or exc})"


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))
    return next((name for test, name in kinds if test(mode)), "not a file")


def _read_file(path: Path) -> np.ndarray:
    """The bytes of a regular file (opened without blocking: a FIFO is refused, not waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ImageReadError(_open_error(path, exc)) from None
    try:
        with open(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise ImageReadError(f"{path}: not a regular file ({_kind(mode)})")
            return np.fromfile(f, dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except MemoryError:
        raise ImageReadError(f"{path}: not enough memory to read it") from None


def _check_pixels(path: Path, width: int, height: int, limit: int) -> None:
    if width * height > limit:
        raise ImageReadError(f"{path}: {width}x{height} image ({width * height} pixels) is above the limit of "
                             f"{limit} pixels (set {MAX_PIXELS_ENV} to change it)")


def _decode(path: Path, flags: int, digest=None) -> np.ndarray:
    limit = max_image_pixels()
    data = _read_file(path)
    if data.size == 0:
        raise ImageReadError(f"{path}: empty file")
    if digest is not None:
        digest.update(data)
    size = header_size(data)
    if size is not None:
        _check_pixels(path, *size, limit)
    try:
        with quiet_decoders():
            img = cv2.imdecode(data, flags)
        if img is None or img.size == 0:
            raise ImageReadError(f"{path}: cannot decode image (corrupt or unsupported format)")
        _check_pixels(path, img.shape[1], img.shape[0], limit)  # formats whose header was not read
        if img.dtype != np.uint8:  # 16-bit PNG/TIFF: scale to 8 bits
            img = (img.astype(np.float32) * (255.0 / float(np.iinfo(img.dtype).max))).round().astype(np.uint8)
    except MemoryError:
        raise ImageReadError(f"{path}: not enough memory to decode it") from None
    except cv2.error as exc:
        what = "too large for OpenCV (OPENCV_IO_MAX_IMAGE_PIXELS)" if "MAX_IMAGE_PIXELS" in str(exc) else \
            "cannot decode image (corrupt or unsupported format)"
        raise ImageReadError(f"{path}: {what}") from None
    return img


def read_image(path: str | os.PathLike, channels: int = 3, *, digest=None) -> np.ndarray:
    """Read an image as uint8: HxWx3 in BGR order (``channels=3``) or HxWx1 (``channels=1``).

    ``digest``: a hashlib object updated with the file's bytes, the very bytes decoded.
    """
    path = Path(path)
    if channels == 3:
        return _decode(path, cv2.IMREAD_COLOR, digest)
    if channels == 1:
        return _decode(path, cv2.IMREAD_GRAYSCALE, digest)[..., None]
    raise ValueError(f"channels must be 1 or 3, not {channels}")


def read_mask(path: str | os.PathLike, color: bool = False) -> np.ndarray:
    """Read a mask: HxW uint8 grayscale, or HxWx3 BGR when ``color`` (categorised masks)."""
    path = Path(path)
    if color:
        return _decode(path, cv2.IMREAD_COLOR)
    return _decode(path, cv2.IMREAD_GRAYSCALE)


# -- writing -------------------------------------------------------------------------------------------
def encode_image(path: str | os.PathLike, image: np.ndarray) -> bytes:
    ext = Path(path).suffix.lower() or ".png"
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(image))
    if not ok:
        raise FlexunetError(f"{path}: cannot encode image as {ext}")
    return buf.tobytes()


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Encode ``image`` (uint8, BGR or grayscale) by the file's extension and write it atomically.

    Raises:
        WriteError: it cannot be written (:mod:`flexunet.core.atomic`).
    """
    return write_bytes(path, encode_image(path, image))
