"""Errors a user can act on, and the exit codes the ``flexunet`` command documents.

Every error raised for bad input is a :class:`FlexunetError` (or subclass) whose message is one
line naming the file and the cause.  The command line prints ``error: <message>`` and exits with
the error's ``exit_code``; it never shows a traceback for these.
"""
from __future__ import annotations

import os
import stat
import unicodedata

EXIT_OK = 0
EXIT_FAILED = 1        # the job ran but its verdict is negative (parity failed, export verification failed)
EXIT_USAGE = 2         # bad config value, bad option, missing or mismatched model, missing dependency
EXIT_SKIPPED = 3       # the run finished but some inputs were unreadable and were skipped
EXIT_INTERRUPTED = 130  # Ctrl-C

EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 verdict failed (parity, export verification); "
    "2 bad input (config, option, model, missing dependency); "
    "3 finished but some inputs were skipped; 130 interrupted (Ctrl-C, or SIGTERM during a folder run)."
)


def first_line(exc: BaseException | str, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when it has none), at most ``limit``
    characters: what a one-line error quotes of a library's exception."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__ if isinstance(exc, BaseException) else ""
    return text.splitlines()[0][:limit]


def one_line(text: str) -> str:
    """``text`` with its control characters escaped (``\\n``, ``\\x1b``...): a report that names a
    file called ``a\\nb.png`` stays on its one line."""
    return "".join(ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) == "Cc" else ch
                   for ch in text)


class FlexunetError(Exception):
    """An error caused by the user's input or environment, reported in one line."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(FlexunetError):
    """A config value that the project uses has a wrong type or range."""


class ImageReadError(FlexunetError):
    """An image file is missing, unreadable or corrupt."""


class ModelError(FlexunetError):
    """A model file is missing, corrupt, or does not match what is asked of it."""


class VerificationError(FlexunetError):
    """An exported artifact does not reproduce the reference model."""

    exit_code = EXIT_FAILED


class MissingDependencyError(FlexunetError):
    """An optional dependency (TensorFlow, TensorRT, a GPU) is not available here."""


def require_model_file(path: str | os.PathLike, missing: str = "no such model file") -> None:
    """ModelError unless ``path`` is a regular file: ``missing`` when nothing is there, else what is
    (a folder, a FIFO...) instead of a model file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise ModelError(f"{path}: {missing}") from None
    if not stat.S_ISREG(mode):
        what = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise ModelError(f"{path}: {what}, not a model file")
