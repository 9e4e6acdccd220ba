"""Seed ``best_model.h5`` files read as data: their weight arrays, never their code.

A seed model file is HDF5 written by ``ModelCheckpoint`` under Keras 3 or tf.keras 2. Four layouts
occur (tests/seed_models/README.md describes each):

* ``keras3``: a whole model, Keras 3's legacy HDF5 (``model_weights`` group, attributes
  ``layer_names`` and, per layer, ``weight_names``);
* ``tfkeras2``: a whole model, tf.keras 2 (the same groups; weight names end in ``:0``);
* ``tfkeras2-weights``: weights only, tf.keras 2 (``layer_names`` on the root group);
* ``keras3-weights``: Keras 3's native weights file (``.weights.h5``: ``layers/<key>/vars/<i>``,
  the key being the layer's class in snake case, numbered per class in model order).

Only the arrays and their names are read (h5py). ``model_config`` and ``training_config`` are never
read: a seed model's ``Lambda`` layer keeps its function as marshalled bytecode there, and
deserialising it would run that code. :func:`read_seed_weights` returns the weight-owning layers in
the file's order; :mod:`flexunet.architectures.seed_h5` loads them into a rebuilt network.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flexunet.core.errors import MissingDependencyError, ModelError, first_line, require_model_file

__all__ = ["FORMATS", "SeedLayer", "SeedWeights", "read_seed_weights", "snake_case", "shapes_text"]

#: Layout -> what ``flexunet import`` prints for it.
FORMATS = {
    "keras3": "Keras 3 whole model (legacy HDF5)",
    "tfkeras2": "tf.keras 2 whole model (HDF5)",
    "tfkeras2-weights": "weights only (legacy HDF5, as tf.keras 2 writes best_model.h5)",
    "keras3-weights": "Keras 3 weights only (.weights.h5)",
}


@dataclass
class SeedLayer:
    """One weight-owning layer of a seed file: its name in the file and its arrays in order."""

    name: str
    arrays: list[np.ndarray]

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(a.shape) for a in self.arrays]


@dataclass
class SeedWeights:
    """What a seed file holds.

    ``layers`` are the weight-owning layers in the file's model order (legacy layouts), or, for the
    ``keras3-weights`` layout, sorted by key (``by_key`` maps each key to its layer; the order that
    matters there is per class, see :func:`snake_case`). ``entries`` counts every layer the file
    lists, weightless ones included."""

    path: Path
    format: str
    keras_version: str | None
    layers: list[SeedLayer]
    entries: int
    by_key: dict[str, SeedLayer] = field(default_factory=dict)

    @property
    def description(self) -> str:
        version = f", Keras {self.keras_version}" if self.keras_version else ""
        return f"{FORMATS[self.format]}{version}"

    @property
    def weight_count(self) -> int:
        return sum(len(layer.arrays) for layer in self.layers)

    @property
    def parameters(self) -> int:
        return int(sum(a.size for layer in self.layers for a in layer.arrays))


def snake_case(name: str) -> str:
    """A class name as Keras 3 names it in a ``.weights.h5`` file (``Conv2DTranspose`` ->
    ``conv2d_transpose``, ``BatchNormalization`` -> ``batch_normalization``)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def shapes_text(shapes) -> str:
    """``[(5, 5, 3, 4), (4,)]`` -> ``"5x5x3x4, 4"`` (``"no weights"`` when empty)."""
    return ", ".join("x".join(str(d) for d in s) or "scalar" for s in shapes) or "no weights"


def _text(value) -> str:
    """An HDF5 string attribute (h5py 3 gives ``str``, files from older h5py may hold ``bytes``)."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _names(attrs, key: str) -> list[str]:
    """A list-of-strings attribute; weightless layers store an empty float array."""
    if key not in attrs:
        return []
    return [_text(v) for v in np.asarray(attrs[key]).ravel().tolist()]


def _version(*groups) -> str | None:
    for group in groups:
        if "keras_version" in group.attrs:
            return _text(group.attrs["keras_version"])
    return None


def _legacy_layers(path: Path, group) -> tuple[list[SeedLayer], int]:
    """The weight-owning layers of a legacy layout, in ``layer_names`` order."""
    layers, names = [], _names(group.attrs, "layer_names")
    for name in names:
        if name not in group:
            raise ModelError(f"{path}: corrupt seed model: layer {name!r} is listed but has no group")
        sub = group[name]
        weight_names = _names(sub.attrs, "weight_names")
        if not weight_names:
            continue
        arrays = []
        for weight in weight_names:
            if weight not in sub:
                raise ModelError(f"{path}: corrupt seed model: weight {weight!r} of layer {name!r} is missing")
            arrays.append(np.asarray(sub[weight]))
        layers.append(SeedLayer(name, arrays))
    return layers, len(names)


def _keras3_weight_layers(path: Path, group) -> tuple[list[SeedLayer], dict[str, SeedLayer], int]:
    """The weight-owning layers of a ``.weights.h5`` file, keyed as Keras 3 keys them."""
    by_key, entries = {}, 0
    for key in group:
        entries += 1
        variables = group[key].get("vars")
        if variables is None or not len(variables):
            continue
        try:
            order = sorted(variables, key=int)
        except ValueError:
            raise ModelError(f"{path}: corrupt seed model: layers/{key}/vars holds non-numbered "
                             "entries") from None
        by_key[key] = SeedLayer(key, [np.asarray(variables[i]) for i in order])
    return [by_key[k] for k in sorted(by_key)], by_key, entries


def read_seed_weights(path: str | os.PathLike) -> SeedWeights:
    """The weight arrays of a seed ``.h5`` file and which layout it has.

    Raises:
        ModelError: a missing file, a file that is not HDF5, or an HDF5 file of none of the layouts.
        MissingDependencyError: h5py is not installed.
    """
    path = Path(path)
    require_model_file(path)
    try:
        import h5py
    except ImportError as exc:
        raise MissingDependencyError(f"{path}: reading .h5 models needs h5py ({exc}); install it with "
                                     "pip install 'flexunet[train]'") from None
    try:
        handle = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot load model: not an HDF5 file ({first_line(exc, 120)})") from None
    try:
        with handle as h5:
            return _read(path, h5)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        if isinstance(exc, ModelError):
            raise
        raise ModelError(f"{path}: corrupt seed model ({first_line(exc, 160)})") from None


def _read(path: Path, h5) -> SeedWeights:
    if "model_weights" in h5 and "layer_names" in h5["model_weights"].attrs:
        group = h5["model_weights"]
        layers, entries = _legacy_layers(path, group)
        version = _version(h5, group)
        layout = "keras3" if version and version.startswith("3") else "tfkeras2"
        return SeedWeights(path, layout, version, layers, entries)
    if "layer_names" in h5.attrs:
        layers, entries = _legacy_layers(path, h5)
        version = _version(h5)
        layout = "tfkeras2-weights"  # the version (named in the description) tells which Keras wrote it
        return SeedWeights(path, layout, version, layers, entries)
    if "layers" in h5 and hasattr(h5["layers"], "keys"):
        layers, by_key, entries = _keras3_weight_layers(path, h5["layers"])
        return SeedWeights(path, "keras3-weights", None, layers, entries, by_key)
    raise ModelError(f"{path}: cannot load model: an HDF5 file but not a Keras model or weights file "
                     "(no model_weights, layer_names or layers group)")
