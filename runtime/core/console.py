"""Console plumbing shared by every command: one-line errors with documented exit codes, Ctrl-C
(exit 130, one line, whenever it comes), the ``flexunet`` logger, and TensorFlow imported without
its start-up chatter (only when asked for).

Importing this module is cheap (no click): the ``flexunet`` command installs its Ctrl-C handler
with it before anything else is imported.
"""
from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading

from flexunet.core.errors import EXIT_INTERRUPTED, EXIT_USAGE, FlexunetError, one_line

INTERRUPTED = "interrupted"
_FORCE_AFTER = 3  # Ctrl-C presses that end a command at once, even while it is stopping


class _Interrupts:
    """Ctrl-C presses received, and whether a command that stops cleanly is running."""

    count = 0
    graceful = False


def install_interrupt_handler() -> None:
    """Ctrl-C for the ``flexunet`` command: exit 130 with the one line ``interrupted``.

    Before and after a command (start-up, imports, option parsing) nothing is half written, so the
    process says so and ends at once.  While a command runs (:func:`handle_errors`), the first
    Ctrl-C raises ``KeyboardInterrupt`` so that it stops cleanly (threads joined, outputs written
    completely or not at all); the next ones are ignored while it stops, the third ends it at
    once.  Only the main thread can install it; elsewhere this does nothing.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)


def was_interrupted() -> bool:
    """Whether Ctrl-C was pressed since the handler was installed."""
    return _Interrupts.count > 0


def _on_sigint(signum, frame) -> None:
    _Interrupts.count += 1
    if _Interrupts.graceful and _Interrupts.count == 1:
        raise KeyboardInterrupt
    if _Interrupts.graceful and _Interrupts.count < _FORCE_AFTER:
        return  # the command is stopping
    exit_interrupted_now()


def exit_interrupted_now() -> None:
    """Write ``interrupted`` and end the process with exit code 130 without unwinding (what is
    buffered for the terminal is flushed first)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 -- a stream closed or written to when the signal came
            pass
    os.write(2, f"{INTERRUPTED}\n".encode())
    os._exit(EXIT_INTERRUPTED)


def _echo_error(text: str) -> None:
    import click

    click.echo(text, err=True)


class _WarningFormatter(logging.Formatter):
    def format(self, record):
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        return prefix + one_line(record.getMessage())  # one line, whatever the file names in it


def setup_logging(verbose: bool = False) -> None:
    log = logging.getLogger("flexunet")
    if not any(getattr(h, "_flexunet", False) for h in log.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(_WarningFormatter())
        h._flexunet = True
        log.addHandler(h)
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    log.propagate = False


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ and absl start-up chatter out of the user's terminal."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def import_tensorflow_quietly():
    """Import TensorFlow with its C++ start-up logging (CUDA probing, oneDNN notices) hidden.

    Those lines are written to file descriptor 2 before TF_CPP_MIN_LOG_LEVEL takes effect, so the
    descriptor is pointed at /dev/null for the import and the first device query only.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    quiet_tensorflow()
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
    return tf


def handle_errors(fn):
    """Turn project errors into one-line messages and documented exit codes (no tracebacks); a
    command interrupted by Ctrl-C exits 130 with one line, whatever the interruption raised on its
    way out (a library may turn ``KeyboardInterrupt`` into an error of its own)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        outer, _Interrupts.graceful = _Interrupts.graceful, True
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            _interrupted()
        except Exception as exc:
            if was_interrupted():  # the interruption surfaced as another error on its way out
                _interrupted()
            if isinstance(exc, FlexunetError):
                _echo_error(f"error: {one_line(str(exc))}")
                sys.exit(exc.exit_code)
            missing = exc.name if isinstance(exc, ModuleNotFoundError) and exc.name else ""
            if missing.split(".")[0] in ("tensorflow", "keras", "tf2onnx", "matplotlib"):
                _echo_error(f"error: {missing} is not installed; this command needs the training "
                            "extra: pip install 'flexunet[train]'")
                sys.exit(EXIT_USAGE)
            raise
        finally:
            _Interrupts.graceful = outer

    return wrapper


def _interrupted() -> None:
    _echo_error(INTERRUPTED)
    sys.exit(EXIT_INTERRUPTED)
