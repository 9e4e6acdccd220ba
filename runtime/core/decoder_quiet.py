"""Keeping the image decoders quiet: libpng, libjpeg, libtiff and OpenCV's log write to file
descriptor 2 while decoding; flexunet reports the file itself in one line, so those lines are
dropped and every other line written meanwhile is kept (:func:`quiet_decoders`)."""
from __future__ import annotations

import atexit
import contextlib
import os
import re
import sys
import tempfile
import threading
from typing import Iterator

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


#: Context manager: decode inside ``with quiet_decoders():``.
quiet_decoders = _QuietStderr()
