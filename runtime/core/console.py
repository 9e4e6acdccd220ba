"""Console plumbing shared by every command: one-line errors with documented exit codes, the
``flexunet`` logger, and TensorFlow imported without its start-up chatter (only when asked for)."""
from __future__ import annotations

import functools
import logging
import os
import sys

import click

from flexunet.core.errors import EXIT_INTERRUPTED, EXIT_USAGE, FlexunetError


class _WarningFormatter(logging.Formatter):
    def format(self, record):
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        return prefix + record.getMessage()


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
    """Turn project errors into one-line messages and documented exit codes (no tracebacks)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FlexunetError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in ("tensorflow", "keras", "tf2onnx", "matplotlib"):
                click.echo(f"error: {exc.name} is not installed; this command needs the training "
                           "extra: pip install 'flexunet[train]'", err=True)
                sys.exit(EXIT_USAGE)
            raise

    return wrapper
