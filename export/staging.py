"""Where an export writes, checked before and made all at once: the artifacts are built in a
temporary folder and renamed into place together, or nothing is.

:func:`check_folder` refuses a destination that cannot be written without creating anything.
:class:`Staging` creates the destination folders, gives the steps a temporary folder inside the
output folder (and, for a Triton repository, a temporary model folder beside its destination),
and :meth:`Staging.commit` renames the finished files into place.  When anything fails before the
commit, the temporary folders are removed, and so are the destination folders the export created
(if they are still empty): a refused export leaves no trace.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from flexunet.core.atomic import atomic_dir
from flexunet.core.errors import FlexunetError


def _missing(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def check_folder(folder: Path, what: str = "output folder") -> None:
    """Refuse (FlexunetError, one line) a folder that could not be created or written: a file in
    its place or on its path, or no permission to write where it would go.  Creates nothing."""
    folder = Path(folder)
    missing = _missing(folder)
    existing = missing[-1].parent if missing else folder
    if not existing.is_dir():
        raise FlexunetError(f"{folder}: {what} is not writable ({existing} is not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FlexunetError(f"{folder}: {what} is not writable (permission denied on {existing})")


class Staging:
    """The destination folders of one export and its temporary folder (:attr:`tmp`, inside
    :attr:`out`); use as a context manager and call :meth:`commit` once everything is verified."""

    def __init__(self, out: Path, *folders: Path):
        self.out = Path(out)
        self.folders = [self.out, *(Path(f) for f in folders)]
        self.tmp: Path | None = None
        self._created: list[Path] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "Staging":
        try:
            for folder in self.folders:
                self._make(folder)
            self.tmp = Path(self._stack.enter_context(
                tempfile.TemporaryDirectory(prefix=".export-", suffix=".part", dir=self.out)))
        except BaseException:
            self._remove_created()
            raise
        return self

    def _make(self, folder: Path) -> None:
        missing = _missing(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FlexunetError(f"{folder}: folder is not writable ({exc.strerror or exc})") from None
        finally:
            self._created += [m for m in missing if m.is_dir()]

    def replacing(self, dest: Path) -> Path:
        """A temporary folder beside folder ``dest`` that replaces it at the commit."""
        return self._stack.enter_context(atomic_dir(dest))

    def commit(self, names: list[str]) -> list[Path]:
        """Rename the files ``names`` that exist in :attr:`tmp` into :attr:`out`, then the folders
        of :meth:`replacing` into place; returns the files' new paths."""
        moved = []
        for name in names:
            src = self.tmp / name
            if src.exists():
                dst = self.out / name
                src.replace(dst)
                moved.append(dst)
        self._stack.close()
        return moved

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self._stack.__exit__(exc_type, exc, tb)
        finally:
            if exc_type is not None:
                self._remove_created()
        return False

    def _remove_created(self) -> None:
        for folder in self._created:  # deepest first; only empty ones
            with contextlib.suppress(OSError):
                folder.rmdir()
