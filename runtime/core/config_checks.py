"""The value checks of the config schema: each turns a parsed literal into the key's typed value.

A check returns the normalised value (``(3,3)`` for ``3``, ``"elu"`` for ``"ELU"``, an RGB tuple for
``"green"``) or raises :class:`Invalid` with a short reason; the loader turns that into a one-line
:class:`~flexunet.core.errors.ConfigError` naming file, section and key.  :func:`key` declares a
schema field: its default, its check, the seeds' other spellings of its name, and whether it is a
path (resolved against the config's folder) and a dataset input (re-rooted by ``--data-root``).
"""
from __future__ import annotations

import re
from dataclasses import field
from typing import Any, Callable

from flexunet.core.config_reader import brief

# Named colours accepted by [segmentation] black/white and rgb_map keys (RGB).
NAMED_COLORS = {
    "black": (0, 0, 0), "white": (255, 255, 255), "red": (255, 0, 0), "green": (0, 255, 0),
    "blue": (0, 0, 255), "yellow": (255, 255, 0), "cyan": (0, 255, 255), "magenta": (255, 0, 255),
    "orange": (255, 165, 0), "purple": (128, 0, 128), "gray": (128, 128, 128), "grey": (128, 128, 128),
}


class Invalid(ValueError):
    """A literal of the wrong type or outside the key's range."""


def key(default: Any, check: Callable[[Any], Any] | None = None, *, aliases: tuple[str, ...] = (),
        path: bool = False, data: bool = False):
    """A schema field: ``default``, its ``check``, other spellings, path and dataset-input flags."""
    meta = {"check": check, "aliases": aliases, "path": path, "data": data}
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def _optional(check: Callable[[Any], Any], optional: bool) -> Callable[[Any], Any]:
    """``check``, letting ``None`` through when the key is optional."""
    if not optional:
        return check
    return lambda v: None if v is None else check(v)


def integer(lo: int | None = None, hi: int | None = None, optional: bool = False):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            raise Invalid(f"expected an integer, got {brief(v)}")
        if lo is not None and v < lo:
            raise Invalid(f"must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise Invalid(f"must be <= {hi}, got {v}")
        return v
    return _optional(check, optional)


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, optional: bool = False):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise Invalid(f"expected a number, got {brief(v)}")
        v = float(v)
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise Invalid(f"must be {'>' if lo_open else '>='} {lo}, got {v}")
        if hi is not None and (v > hi or (hi_open and v == hi)):
            raise Invalid(f"must be {'<' if hi_open else '<='} {hi}, got {v}")
        return v
    return _optional(check, optional)


def boolean(v):
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise Invalid(f"expected True or False, got {brief(v)}")


def string(choices: tuple[str, ...] | None = None, optional: bool = False):
    """A quoted string; with ``choices``, one of them in any case (returned as spelled there)."""
    def check(v):
        if not isinstance(v, str):
            raise Invalid(f"expected a quoted string, got {brief(v)}")
        if choices is not None and v not in choices:
            match = {c.lower(): c for c in choices}.get(v.lower())
            if match is None:
                raise Invalid(f"{brief(v)} is not one of {', '.join(choices)}")
            return match
        return v
    return _optional(check, optional)


def path_text(optional: bool = True):
    def check(v):
        if not isinstance(v, str) or not v.strip():
            raise Invalid(f"expected a quoted path, got {brief(v)}")
        return v
    return _optional(check, optional)


def pair(lo: int = 1, odd: bool = False, equal: bool = False, optional: bool = False):
    """A pair of integers like ``(3,3)`` (a bare int means both), each ``>= lo``."""
    def check(v):
        if isinstance(v, int) and not isinstance(v, bool):
            v = (v, v)
        if (not isinstance(v, (tuple, list)) or len(v) != 2
                or any(isinstance(x, bool) or not isinstance(x, int) for x in v)):
            raise Invalid(f"expected a pair of integers like (3,3), got {brief(v)}")
        v = (int(v[0]), int(v[1]))
        if min(v) < lo:
            raise Invalid(f"values must be >= {lo}, got {v}")
        if odd and (v[0] % 2 == 0 or v[1] % 2 == 0):
            raise Invalid(f"kernel sizes must be odd, got {v}")
        if equal and v[0] != v[1]:
            raise Invalid(f"both values must be equal, got {v}")
        return v
    return _optional(check, optional)


def string_list(v):
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise Invalid(f"expected a list of quoted strings, got {brief(v)}")
    return list(v)


def number_list(v):
    if not isinstance(v, (list, tuple)) or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v):
        raise Invalid(f"expected a list of numbers, got {brief(v)}")
    return [float(x) for x in v]


def integer_list(lo: int = 1, optional: bool = False):
    def check(v):
        if (not isinstance(v, (list, tuple)) or not v
                or any(isinstance(x, bool) or not isinstance(x, int) or x < lo for x in v)):
            raise Invalid(f"expected a list of integers >= {lo}, got {brief(v)}")
        return [int(x) for x in v]
    return _optional(check, optional)


def symbol(names: tuple[str, ...]):
    """One of the allow-listed OpenCV ``names``, written with or without ``cv2.``; None is off."""
    def check(v):
        if isinstance(v, str):
            name = v[4:] if v.startswith("cv2.") else v
            if name in names:
                return name
        raise Invalid(f"{brief(v)} is not one of the allowed names: " + ", ".join("cv2." + n for n in names))
    return _optional(check, True)


def color(v):
    """A colour name, ``'#rrggbb'`` or an ``(r,g,b)`` tuple -> an RGB tuple."""
    if isinstance(v, str):
        if v.lower() in NAMED_COLORS:
            return NAMED_COLORS[v.lower()]
        m = re.fullmatch(r"#([0-9a-fA-F]{6})", v)
        if m:
            h = m.group(1)
            return tuple(int(h[i:i + 2], 16) for i in (0, 2, 4))
    if (isinstance(v, (tuple, list)) and len(v) == 3
            and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 255 for x in v)):
        return tuple(v)
    raise Invalid(f"expected a colour name, '#rrggbb' or an (r,g,b) tuple, got {brief(v)}")


def class_color_map(v):
    """``{colour: class_index}`` -> ``{(r,g,b): class_index}``; None is no map."""
    if v is None:
        return None
    if not isinstance(v, dict) or not v:
        raise Invalid(f"expected a dict {{(r,g,b): class_index, ...}}, got {brief(v)}")
    out: dict[tuple[int, int, int], int] = {}
    for k, c in v.items():
        rgb = color(k)
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise Invalid(f"class index for {brief(k)} must be an integer >= 0, got {brief(c)}")
        out[rgb] = c
    return out
