"""Write files under a temporary name in the destination folder and rename them when complete.

A reader never sees a half-written output: either the previous file (or none) or the whole new one.
A write that fails (disk full, a name the file system refuses) raises :class:`WriteError` naming the
file and removes the temporary file.

Temporary names are ``.<start of the name>.<8 random characters>.part<suffix>``: hidden, at most
:data:`TEMP_NAME_BYTES` bytes whatever the destination's name, and recognised by
:func:`is_temporary` (so that a run stopped by SIGKILL or a power cut can be cleaned up:
:func:`remove_temporary`).
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from flexunet.core.errors import FlexunetError

#: Bytes of the destination's name kept at the start of a temporary name.
TEMP_HEAD_BYTES = 64
#: Longest suffix (``.png``, ``.json``...) a temporary name keeps for writers that infer the format.
TEMP_SUFFIX_BYTES = 16
#: Longest temporary file name: well under the 255 bytes of common file systems.
TEMP_NAME_BYTES = 1 + TEMP_HEAD_BYTES + 1 + 8 + len(".part") + TEMP_SUFFIX_BYTES
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.part(\.[^.]+)?")  # mkstemp's random part: [a-z0-9_]


class WriteError(FlexunetError):
    """A file could not be written; ``errno`` says why (``ENOSPC``, ``ENAMETOOLONG``...)."""

    def __init__(self, path: str | os.PathLike, exc: OSError):
        self.path, self.errno, self.reason = Path(path), exc.errno, exc.strerror or str(exc)
        super().__init__(f"{path}: cannot write ({self.reason})")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def _cut(name: str, limit: int) -> str:
    """``name`` cut to at most ``limit`` bytes (whole characters only)."""
    raw = os.fsencode(name)
    return name if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


def temporary_affixes(dest: Path) -> tuple[str, str]:
    """``(prefix, suffix)`` of the temporary names of ``dest`` (mkstemp puts 8 characters between)."""
    suffix = dest.suffix if len(os.fsencode(dest.suffix)) <= TEMP_SUFFIX_BYTES else ""
    return f".{_cut(dest.name, TEMP_HEAD_BYTES)}.", ".part" + suffix


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary name of this module."""
    return _TEMPORARY.fullmatch(name) is not None


def remove_temporary(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files this module left directly in ``folder`` (a run that was killed);
    returns them.  Only for folders where no other write is under way."""
    removed = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if is_temporary(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _tmp_name(dest: Path) -> Path:
    prefix, suffix = temporary_affixes(dest)
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=dest.parent)
    os.close(fd)
    os.chmod(name, _FILE_MODE)  # mkstemp makes 0600 files; outputs get the usual permissions
    return Path(name)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it to ``dest``, on error remove it.

    The temporary name keeps ``dest``'s suffix so that writers which infer the format from the
    extension (OpenCV, numpy, matplotlib) still work.

    Raises:
        WriteError: the folder or the temporary file cannot be made, or the rename failed (an
            OSError raised by the caller's writing is passed on as it is; :func:`write_bytes` and
            :func:`write_text` turn it into a WriteError).
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_name(dest)
    except OSError as exc:
        raise WriteError(dest, exc) from None
    try:
        yield tmp
        try:
            os.replace(tmp, dest)
        except OSError as exc:
            raise WriteError(dest, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``dest``; on success it replaces ``dest`` (a folder)."""
    import shutil

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # a normal folder once renamed, not mkdtemp's 0700
        yield tmp
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.rmdir(old)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_file(dest: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` a temporary path beside ``dest``, then rename it to ``dest``; returns ``dest``.

    Raises:
        WriteError: it cannot be written (an OSError of ``write`` included); no temporary file is left.
    """
    try:
        with atomic_path(dest) as tmp:
            write(tmp)
    except OSError as exc:
        raise WriteError(dest, exc) from None
    return Path(dest)


def write_text(dest: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``dest`` atomically (:func:`write_file`)."""
    return write_file(dest, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes(dest: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``dest`` atomically (:func:`write_file`)."""
    return write_file(dest, lambda tmp: tmp.write_bytes(data))
