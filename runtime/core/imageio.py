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

import atexit
import contextlib
import errno
import os
import re
import stat
import struct
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from flexunet.core.atomic import write_bytes
from flexunet.core.errors import FlexunetError, ImageReadError

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


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


#: The default limit: OpenCV's, or what this machine's memory can segment if that is less.
MAX_IMAGE_PIXELS = min(_OPENCV_MAX_PIXELS, (_memory_bytes() or 1 << 62) // RUN_BYTES_PER_PIXEL)


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


# -- image sizes from headers -----------------------------------------------------------------------------
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _png_size(b: memoryview) -> tuple[int, int] | None:
    if bytes(b[:8]) == b"\x89PNG\r\n\x1a\n" and bytes(b[12:16]) == b"IHDR" and len(b) >= 24:
        return struct.unpack_from(">II", b, 16)
    return None


def _jpeg_size(b: memoryview) -> tuple[int, int] | None:
    """Width and height of the first frame header (SOF), walking the marker segments before it."""
    if bytes(b[:2]) != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(b) and b[i] == 0xFF:
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a segment
            i += 2
        elif marker in _JPEG_SOF:
            if i + 9 > len(b):
                return None
            height, width = struct.unpack_from(">HH", b, i + 5)
            return width, height
        elif marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before them
            return None
        else:
            i += 2 + struct.unpack_from(">H", b, i + 2)[0]
    return None


def _bmp_size(b: memoryview) -> tuple[int, int] | None:
    if bytes(b[:2]) != b"BM" or len(b) < 26:
        return None
    if struct.unpack_from("<I", b, 14)[0] == 12:  # OS/2 BITMAPCOREHEADER
        return struct.unpack_from("<HH", b, 18)
    width, height = struct.unpack_from("<ii", b, 18)  # negative height: rows top-down
    return abs(width), abs(height)


def _tiff_size(b: memoryview) -> tuple[int, int] | None:
    """ImageWidth and ImageLength of the first image file directory (classic TIFF)."""
    order = {b"II": "<", b"MM": ">"}.get(bytes(b[:2]))
    if order is None or len(b) < 8 or struct.unpack_from(order + "H", b, 2)[0] != 42:
        return None
    ifd = struct.unpack_from(order + "I", b, 4)[0]
    if ifd + 2 > len(b):
        return None
    size = {}
    for k in range(struct.unpack_from(order + "H", b, ifd)[0]):
        at = ifd + 2 + 12 * k
        if at + 12 > len(b):
            break
        tag, kind = struct.unpack_from(order + "HH", b, at)
        if tag in (256, 257):
            size[tag] = struct.unpack_from(order + ("H" if kind == 3 else "I"), b, at + 8)[0]
    return (size[256], size[257]) if len(size) == 2 else None


def header_size(data) -> tuple[int, int] | None:
    """``(width, height)`` an image file's header declares (PNG, JPEG, BMP, TIFF), read without
    decoding; None for other formats or a header too damaged to say."""
    b = memoryview(data).cast("B")
    for parse in (_png_size, _jpeg_size, _bmp_size, _tiff_size):
        try:
            size = parse(b)
        except struct.error:  # cut short
            size = None
        if size is not None:
            return tuple(int(v) for v in size)
    return None


# -- keeping the decoders quiet ---------------------------------------------------------------------------
# What libpng, libjpeg, libtiff and OpenCV's log print while decoding; flexunet reports the file itself.
_DECODER_NOISE = re.compile(rb"(?m)^(?:libpng (?:error|warning)|\[ ?(?:WARN|ERROR|INFO|DEBUG)\b|TIFF\w*:|"
                            rb"Corrupt JPEG data|Premature end of JPEG|Invalid SOS|Bogus marker|"
                            rb"Not a JPEG file|JPEG datastream).*\n?")


class _QuietStderr:
    """While any thread decodes, file descriptor 2 points at a temporary file; when the last one
    is done, what was written there goes to the real stderr without the decoders' lines, so the
    lines other threads wrote meanwhile (progress) are delayed, never lost.  At exit stderr is
    given back even if a thread is still decoding."""

    def __init__(self):
        self._lock = threading.Lock()
        self._users = 0
        self._saved: int | None = None
        self._capture = None
        atexit.register(self.release)

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            self._users += 1
            if self._users == 1:
                self._redirect()
        try:
            yield
        finally:
            with self._lock:
                self._users = max(0, self._users - 1)
                if self._users == 0:
                    self._restore()

    def release(self) -> None:
        """Point file descriptor 2 back at stderr now and write out what it held."""
        with self._lock:
            self._users = 0
            self._restore()

    def _redirect(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # no stderr: decode as it is
            sys.stderr.flush()
            capture = tempfile.TemporaryFile()
            try:
                self._saved = os.dup(2)
            except OSError:
                capture.close()
                raise
            self._capture = capture
            os.dup2(capture.fileno(), 2)

    def _restore(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.flush()
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
            self._saved = None
        if self._capture is not None:
            self._capture.seek(0)
            kept = _DECODER_NOISE.sub(b"", self._capture.read())
            self._capture.close()
            self._capture = None
            if kept:
                os.write(2, kept)


_quiet_decoders = _QuietStderr()


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
        with _quiet_decoders():
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
