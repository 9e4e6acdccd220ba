"""Inference backends behind one small interface (see :mod:`runtime.backends.base`).

Importing this package loads no inference library; :func:`load_backend` imports the one asked for.
"""
from flexunet.runtime.backends.base import BACKENDS, Backend, load_backend

__all__ = ["BACKENDS", "Backend", "load_backend"]
