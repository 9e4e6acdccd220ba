"""Reading a seed ``train_eval_infer.config`` file as data: INI sections whose values are literals.

The file is never executed.  Each value goes through :func:`ast.literal_eval` only, plus an explicit
allow-list of the symbolic OpenCV names the seeds write (``cv2.COLOR_BGR2HSV``, ``cv2.INTER_CUBIC``
...), which are kept as their portable names (no cv2 import here).  A value that is not a literal
becomes an :class:`Unparsable` that remembers its text, line and reason, so the caller can warn
with the file position and fall back to the key's default.

The INI structure is read by hand (not :mod:`configparser`) to keep line numbers: ``;``/``#``
comment lines, ``; comment`` after a value, ``key = value`` or ``key: value``, indented
continuation lines for multi-line lists and dicts, section names and keys in any case.
Structural faults (no ``]``, a value outside any section, no separator) are a one-line
:class:`~flexunet.core.errors.ConfigError` naming the file and line.
"""
from __future__ import annotations

import ast
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexunet.core.errors import ConfigError

# Symbolic names the seeds write; the allow-list maps each to a portable name.
COLOR_CONVERSIONS = (
    "COLOR_BGR2RGB", "COLOR_RGB2BGR", "COLOR_BGR2GRAY", "COLOR_RGB2GRAY",
    "COLOR_BGR2HSV", "COLOR_BGR2HSV_FULL", "COLOR_RGB2HSV", "COLOR_RGB2HSV_FULL",
    "COLOR_BGR2HLS", "COLOR_BGR2HLS_FULL", "COLOR_BGR2LAB", "COLOR_RGB2LAB",
    "COLOR_BGR2LUV", "COLOR_BGR2YUV", "COLOR_BGR2YCrCb", "COLOR_BGR2XYZ",
)
INTERPOLATIONS = ("INTER_NEAREST", "INTER_LINEAR", "INTER_CUBIC", "INTER_AREA", "INTER_LANCZOS4")
SYMBOLS = {f"cv2.{n}": n for n in COLOR_CONVERSIONS + INTERPOLATIONS}


def brief(value: Any, limit: int = 60) -> str:
    """``repr(value)`` for a one-line message, cut to ``limit`` characters (``...`` and the full
    length said) so that a config value of any length never floods the terminal."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class Unparsable:
    """Marker for a value ``ast.literal_eval`` refused; carries the text and its line."""

    def __init__(self, text: str, line: int, reason: str):
        self.text, self.line, self.reason = text, line, reason


@dataclass
class RawValue:
    """A value's text as written (continuation lines joined, comments dropped) and its line."""

    text: str
    line: int


def read_literals(path: Path) -> dict[str, dict[str, Any]]:
    """Every section's keys and their parsed values (or :class:`Unparsable`), names lower-cased."""
    sections = read_sections(path)
    return {name: {k: parse_literal(v) for k, v in keys.items()} for name, keys in sections.items()}


def _read_text(path: Path) -> str:
    try:
        mode = os.stat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # reading a FIFO would wait for a writer
            raise ConfigError(f"{path}: not a regular file")
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (cannot decode as UTF-8)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_sections(path: Path) -> dict[str, dict[str, RawValue]]:
    """The INI structure of ``path``: section -> key -> :class:`RawValue`."""
    sections: dict[str, dict[str, RawValue]] = {}
    current: dict[str, RawValue] | None = None
    last_key: str | None = None
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in ";#":
            continue
        if line[0] in " \t" and current is not None and last_key is not None:
            # continuation of the previous value (multi-line dicts and lists)
            current[last_key].text += "\n" + strip_inline_comment(stripped)
            continue
        if stripped.startswith("["):
            current = sections.setdefault(_section_name(path, lineno, stripped), {})
            last_key = None
            continue
        if current is None:
            raise ConfigError(f"{path}:{lineno}: a value outside any [section]: {brief(stripped)}")
        last_key, value = _key_value(path, lineno, stripped)
        current[last_key] = RawValue(strip_inline_comment(value), lineno)
    return sections


def _section_name(path: Path, lineno: int, stripped: str) -> str:
    end = stripped.find("]")
    if end < 0:
        raise ConfigError(f"{path}:{lineno}: malformed section header {brief(stripped)}")
    return stripped[1:end].strip().lower()


def _key_value(path: Path, lineno: int, stripped: str) -> tuple[str, str]:
    key, sep, value = stripped.partition("=")
    if not sep:
        key, sep, value = stripped.partition(":")
    if not sep:
        raise ConfigError(f"{path}:{lineno}: expected 'key = value', got {brief(stripped)}")
    return key.strip().lower(), value.strip()


def strip_inline_comment(value: str) -> str:
    """Drop a trailing ``; comment`` (preceded by whitespace) outside quotes."""
    quote = None
    escaped = False
    for i, ch in enumerate(value):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == ";" and i > 0 and value[i - 1] in " \t":
            return value[:i].rstrip()
    return value


def parse_literal(raw: RawValue) -> Any:
    """The value a :class:`RawValue` holds: an allow-listed symbol's name, a Python literal, or
    an :class:`Unparsable` saying why not."""
    text = raw.text
    if text == "":
        return Unparsable(text, raw.line, "empty value")
    bare = text.split("#", 1)[0].strip()  # a symbol may carry a trailing '# comment'
    if bare in SYMBOLS:
        return bare
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        reason = "not a Python literal"
        if isinstance(exc, SyntaxError) and exc.msg:
            reason += f" ({exc.msg})"
        return Unparsable(text, raw.line, reason)
