"""Read the seeds' ``train_eval_infer.config`` files safely into a typed :class:`Config`.

This module is the public face of the config rooms: :func:`load_config` reads the file as data
(:mod:`flexunet.core.config_reader`), fills the schema (:mod:`flexunet.core.config_schema`, value
checks in :mod:`flexunet.core.config_checks`) and resolves paths (:mod:`flexunet.core.config_paths`).
Everything callers use is importable from here.

Rules, in the order they apply to each key the project uses:

* a value that is not a Python literal (the seeds ship ``generator = Flase`` and
  ``angles = [90. 180, 270,]``) gives one warning naming the file, line, section and key, and the
  key takes its default;
* a literal of the wrong type or outside its range is a :class:`~flexunet.core.errors.ConfigError`:
  one line naming file, section and key (exit code 2);
* keys the project does not use are kept in ``Config.raw`` and otherwise ignored;
* a config must describe its network: an empty file, no ``[model]`` or an empty one is a
  ConfigError (it would build the default model without a word).

Config values quoted in warnings and errors are cut to 60 characters (:func:`brief`).

Both spellings the seeds use are accepted: ``[eval]`` or ``[valid]``, ``image_datapath`` /
``mask_datapath`` or ``images_dir`` / ``masks_dir``.  Relative paths resolve against the config
file's folder; with ``data_root`` the dataset input paths are re-rooted there instead (see
:func:`reroot`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

from flexunet.core.config_checks import NAMED_COLORS, Invalid
from flexunet.core.config_paths import reroot, resolve
from flexunet.core.config_reader import (
    COLOR_CONVERSIONS, INTERPOLATIONS, SYMBOLS, Unparsable, brief, read_literals,
)
from flexunet.core.config_schema import (
    ACTIVATIONS, MODEL_NAMES, SECTION_TYPES, UNET_MODEL_NAMES, Config, DatasetConfig, GeneratorConfig,
    ImageConfig, InferConfig, MaskConfig, ModelConfig, SegmentationConfig, SplitConfig,
    TiledInferConfig, TrainConfig, check_consistency, class_colors, class_names,
)
from flexunet.core.errors import ConfigError

__all__ = [
    "CONFIG_FILENAME", "load_config", "reroot", "class_colors", "class_names", "ConfigError",
    "Config", "ModelConfig", "SplitConfig", "TrainConfig", "InferConfig", "TiledInferConfig",
    "SegmentationConfig", "ImageConfig", "MaskConfig", "DatasetConfig", "GeneratorConfig",
    "COLOR_CONVERSIONS", "INTERPOLATIONS", "SYMBOLS", "MODEL_NAMES", "UNET_MODEL_NAMES", "ACTIVATIONS",
    "NAMED_COLORS",
]

log = logging.getLogger("flexunet")

#: The name of a project's config file; a folder given for a config means this file in it.
CONFIG_FILENAME = "train_eval_infer.config"

_MISSING = object()

# (file, section, key, line) already warned about in this process: a broken value is logged once.
_warned: set[tuple[str, str, str, int]] = set()


def load_config(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> Config:
    """Parse and validate a seed-format config file (or a folder's ``train_eval_infer.config``).

    Raises :class:`ConfigError` (one line: file, section, key, cause) for values of the wrong
    type or range; logs one warning per unparsable value and uses the default.
    """
    config_path = Path(path).expanduser().absolute()
    if config_path.is_dir():
        config_path = config_path / CONFIG_FILENAME
    root = Path(data_root).expanduser().absolute() if data_root is not None else None
    if root is not None and not root.is_dir():
        raise ConfigError(f"{root}: --data-root is not a folder")
    raw = read_literals(config_path)
    _require_model(config_path, raw)

    sink: list[str] = []
    if "eval" in raw and "valid" in raw:
        _warn(config_path, "valid", "*", Unparsable("", 0, "both [eval] and [valid] present"),
              "[eval]", sink)
    eval_name = "eval" if "eval" in raw or "valid" not in raw else "valid"

    built = {}
    for name, cls in SECTION_TYPES.items():
        src = eval_name if name == "eval" else name
        built[name] = _build_section(cls, src, raw.get(src, {}), config_path, root, sink)

    cfg = Config(path=config_path, data_root=root, raw=raw, warnings=sink, **built)
    check_consistency(cfg)
    return cfg


def _require_model(config_path: Path, raw: dict) -> None:
    """A config must describe its network: an empty file, or one without ``[model]`` or with an empty
    ``[model]``, would silently build the default model."""
    if raw.get("model"):
        return
    what = ("the config is empty (no sections)" if not raw else
            "no [model] section" if "model" not in raw else "[model] is empty")
    raise ConfigError(f"{config_path}: {what}: [model] must describe the network (image_width, "
                      "image_height, num_layers, base_filters, ...)")


def _warn(config_path: Path, section: str, key: str, bad: Unparsable, default: Any,
          sink: list[str]) -> None:
    msg = (f"{config_path}:{bad.line}: [{section}] {key} = {brief(bad.text)}: {bad.reason}; "
           f"using the default {brief(default)}")
    sink.append(msg)
    ident = (str(config_path.resolve()), section, key, bad.line)
    if ident not in _warned:
        _warned.add(ident)
        log.warning(msg)


def _build_section(cls, name: str, values: dict[str, Any], config_path: Path,
                   data_root: Path | None, sink: list[str]):
    """One section's dataclass from its parsed values: checked, paths resolved, defaults kept."""
    kwargs = {}
    for f in fields(cls):
        used_key, value = _given(f, values)
        if value is _MISSING:
            continue
        if isinstance(value, Unparsable):
            _warn(config_path, name, used_key, value, _default_of(f), sink)
            continue
        value = _checked(f, value, f"{config_path}: [{name}] {used_key}")
        if f.metadata.get("path") and value is not None:
            value = resolve(value, config_path.parent, data_root, f.metadata.get("data", False))
        kwargs[f.name] = value
    obj = cls(**kwargs)
    # Defaults that are paths still need resolving against the config folder.
    for f in fields(cls):
        if f.metadata.get("path") and f.name not in kwargs:
            v = getattr(obj, f.name)
            if isinstance(v, str):
                setattr(obj, f.name, resolve(v, config_path.parent))
    return obj


def _given(f: Field, values: dict[str, Any]) -> tuple[str | None, Any]:
    """The key spelling used for field ``f`` and its value (the field's own name first)."""
    for key in (f.name, *f.metadata.get("aliases", ())):
        if key in values:
            return key, values[key]
    return None, _MISSING


def _checked(f: Field, value: Any, where: str) -> Any:
    check = f.metadata.get("check")
    if check is None:
        return value
    try:
        return check(value)
    except Invalid as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _default_of(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None
