"""Image sizes read from file headers (PNG, JPEG, BMP, TIFF) without decoding: how
:mod:`flexunet.core.imageio` refuses an image too large to decode before it decodes it."""
from __future__ import annotations

import struct

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
