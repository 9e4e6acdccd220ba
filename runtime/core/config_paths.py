"""Where a config's relative paths point: the config file's folder, or ``--data-root`` for the
dataset inputs.

The seeds write dataset paths relative to their project folder (``../../../dataset/<Name>/train/
images``); with a data root those are re-rooted under it by :func:`reroot`.  Outputs (model and
evaluation folders, inference output) always stay beside the config.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath


def reroot(path: str, data_root: Path) -> Path:
    """Re-root a relative dataset path under ``data_root``.

    Leading ``.`` and ``..`` components are dropped, and so is a leading ``dataset`` folder (the
    seeds' convention ``../../../dataset/<Name>/train/images``), so
    ``../../../dataset/Tiled-MultipleMyeloma/images`` becomes ``<data_root>/Tiled-MultipleMyeloma/images``.
    Absolute paths are returned unchanged.
    """
    p = PurePosixPath(path.replace("\\", "/"))
    if p.is_absolute():
        return Path(path)
    parts = list(p.parts)
    while parts and parts[0] in (".", ".."):
        parts.pop(0)
    if parts and parts[0] == "dataset":
        parts.pop(0)
    return Path(data_root, *parts)


def resolve(value: str, config_folder: Path, data_root: Path | None = None,
            dataset_input: bool = False) -> Path:
    """A path as written in the config -> an absolute, normalised path: a relative dataset input
    re-rooted under ``data_root`` when one is given, anything else relative to ``config_folder``."""
    if data_root is not None and dataset_input and not os.path.isabs(value):
        resolved = reroot(value, data_root)
    else:
        resolved = config_folder / value
    return Path(os.path.normpath(resolved))
