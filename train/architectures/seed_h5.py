"""Seed ``best_model.h5`` models loaded into flexunet's own rebuild of their architecture.

The network is rebuilt from the training config with flexunet's builder (:func:`build`), then the
file's weight arrays (read as data by :mod:`flexunet.architectures.seed_h5_format`, never its code)
are assigned layer by layer: the n-th weight-owning layer of the file to the n-th of the rebuilt
model (``model.layers`` order, the order the seed's Keras wrote), every array checked for shape.
Keras 3 ``.weights.h5`` files name layers by class and per-class number instead, so there the
rebuilt model's layers are keyed the same way. Anything that does not fit (a missing or an extra
layer, a different number of weights, a wrong shape) is refused in one line naming the file and the
first layer that does not fit, with both names and shapes.

The config of a ``.h5`` is ``--config`` when given, else ``train_eval_infer.config`` beside the
model or in its parent folder (the seed layout is ``<project>/models/best_model.h5`` with
``<project>/train_eval_infer.config``): :func:`find_seed_config`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flexunet.architectures.seed_h5_format import (
    SeedLayer, SeedWeights, read_seed_weights, shapes_text, snake_case,
)
from flexunet.core.config import CONFIG_FILENAME
from flexunet.core.errors import ModelError

__all__ = ["SEED_SUFFIX", "SeedLoad", "find_seed_config", "load_seed_weights", "rebuild_seed_model",
           "is_seed_model"]

SEED_SUFFIX = ".h5"


def is_seed_model(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a seed HDF5 model (``.h5``, ``.weights.h5`` included)."""
    return Path(path).suffix.lower() == SEED_SUFFIX


@dataclass
class SeedLoad:
    """What :func:`load_seed_weights` loaded: the file's layout, its weight-owning layers and weight
    arrays (all of them went into the model), their parameters, and how many layers the file lists."""

    path: Path
    description: str
    layers: int
    weights: int
    parameters: int
    entries: int

    def summary(self) -> str:
        return (f"{self.path}: {self.description}; loaded {self.layers} layers with weights "
                f"({self.weights} arrays, {self.parameters:,} values) of the {self.entries} layers it lists")


def find_seed_config(model_path: str | os.PathLike, config: str | os.PathLike | None = None) -> Path:
    """The training config of a seed ``.h5``: ``config`` when given, else ``train_eval_infer.config``
    beside the model, else in its parent folder.

    Raises:
        ModelError: none of them exists (one line saying to pass --config).
    """
    if config is not None:
        return Path(config)
    model_path = Path(model_path)
    folder = model_path.resolve().parent
    for candidate in (folder / CONFIG_FILENAME, folder.parent / CONFIG_FILENAME):
        if candidate.is_file():
            return candidate
    raise ModelError(f"{model_path}: no {CONFIG_FILENAME} beside the model or in its parent folder; "
                     "pass --config with the config it was trained with")


def _variables(layer, legacy: bool) -> list:
    """A layer's weights in the order its file stores them (legacy HDF5: trainable first)."""
    if legacy:
        return list(layer.trainable_weights) + list(layer.non_trainable_weights)
    return list(layer.weights)


def _ours(model, legacy: bool) -> list[tuple[str, object, list]]:
    """(key, layer, variables) of the model's weight-owning layers in ``model.layers`` order; the
    key is how a Keras 3 ``.weights.h5`` file names the layer (class name, numbered per class)."""
    used: dict[str, int] = {}
    found = []
    for layer in model.layers:
        base = snake_case(type(layer).__name__)
        if base in used:
            used[base] += 1
            key = f"{base}_{used[base]}"
        else:
            used[base] = 0
            key = base
        variables = _variables(layer, legacy)
        if variables:
            found.append((key, layer, variables))
    return found


def _describe(layer: SeedLayer | None, ours, built_from: str) -> str:
    seed = f"the file's {layer.name!r} ({shapes_text(layer.shapes)})" if layer else "nothing in the file"
    if ours is None:
        return f"{seed} vs nothing in the model built from {built_from}"
    _, our_layer, variables = ours
    shapes = [tuple(v.shape) for v in variables]
    return f"{seed} vs {our_layer.name!r} ({shapes_text(shapes)}) built from {built_from}"


def _pairs(seed: SeedWeights, ours: list, built_from: str) -> list[tuple[SeedLayer, tuple]]:
    """The file's layers paired with the model's; a ModelError at the first one that does not fit."""
    if seed.format == "keras3-weights":
        pairs = [(seed.by_key.get(entry[0]), entry) for entry in ours]
        used = {entry[0] for entry in ours}
        extra = [layer for key, layer in sorted(seed.by_key.items()) if key not in used]
        pairs += [(layer, None) for layer in extra]
    else:
        n = max(len(seed.layers), len(ours))
        pairs = [(seed.layers[i] if i < len(seed.layers) else None, ours[i] if i < len(ours) else None)
                 for i in range(n)]
    for index, (layer, entry) in enumerate(pairs):
        fits = layer is not None and entry is not None and \
            layer.shapes == [tuple(v.shape) for v in entry[2]]
        if not fits:
            where = f"layer {index + 1} with weights" if seed.format != "keras3-weights" else \
                f"layer {entry[0] if entry else layer.name!r}"
            raise ModelError(f"{seed.path}: does not fit the rebuilt model at {where}: "
                             f"{_describe(layer, entry, built_from)} "
                             f"(the file has {len(seed.layers)} layers with weights, the model {len(ours)})")
    return pairs


def load_seed_weights(model, path: str | os.PathLike | SeedWeights,
                      built_from: str | os.PathLike = "the config") -> SeedLoad:
    """Assign a seed ``.h5`` file's weights to ``model`` (flexunet's rebuild of its architecture).

    Args:
        model: the rebuilt ``keras.Model``.
        path: the seed ``.h5`` (any of the four layouts of :mod:`~flexunet.architectures.seed_h5_format`),
            or what :func:`~flexunet.architectures.seed_h5_format.read_seed_weights` read of it.
        built_from: what the model was built from (the config), named in a mismatch error.

    Returns:
        What was loaded (layout, layer and weight counts).

    Raises:
        ModelError: an unreadable file, or one that does not fit ``model`` (one line naming the file
            and the first layer that does not fit: the file's name and shapes, the model's). Nothing
            is assigned then.
    """
    seed = path if isinstance(path, SeedWeights) else read_seed_weights(path)
    if not seed.layers:
        raise ModelError(f"{seed.path}: {seed.description} holds no weights")
    ours = _ours(model, legacy=seed.format != "keras3-weights")
    pairs = _pairs(seed, ours, str(built_from))
    for layer, (_, _, variables) in pairs:
        for variable, array in zip(variables, layer.arrays):
            variable.assign(array.astype(variable.dtype, copy=False))
    return SeedLoad(seed.path, seed.description, len(pairs), seed.weight_count, seed.parameters, seed.entries)


def rebuild_seed_model(cfg, path: str | os.PathLike | SeedWeights):
    """The network ``cfg`` describes (:func:`flexunet.architectures.build`) with the seed file's
    weights; returns ``(model, SeedLoad)``.

    Raises:
        ConfigError: a config flexunet cannot build (unsupported architecture, bad settings).
        ModelError: the file cannot be read, or does not fit the rebuilt network.
    """
    from flexunet.architectures import build

    seed = path if isinstance(path, SeedWeights) else read_seed_weights(path)  # before building
    model = build(cfg)
    return model, load_seed_weights(model, seed, built_from=cfg.path)
