"""The builders' shared setting checks: one-line ``ValueError`` messages for the values a network
cannot be built with (the registry turns them into a ConfigError naming the config file)."""
from __future__ import annotations

import numbers

__all__ = ["require_common"]


def require_common(arch: str, height, width, multiple: int, dropout_rate, **ints) -> None:
    """``ints``: name -> (value, lowest allowed) integers; ``dropout_rate`` in [0, 1); ``height`` and
    ``width`` (``None``: any) positive multiples of ``multiple``."""
    for what, (value, low) in ints.items():
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
            raise ValueError(f"{what} must be an int >= {low} for {arch}; got {value!r}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1); got {dropout_rate!r}")
    for what, size in (("image_height", height), ("image_width", width)):
        if size is not None and (size < 1 or size % multiple):
            raise ValueError(f"{what} must be a positive multiple of {multiple} for {arch}; got {size}")
