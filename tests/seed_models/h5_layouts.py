"""Write the four HDF5 layouts the seed's ``ModelCheckpoint`` writes, from a layer spec and arrays.

For the architectures whose real files are too big to keep (see recipe.py), the tests write the
seed's files themselves: ``<arch>.<keras>.spec.json`` (recorded by make_seed_models.py from the model
the seed's own code built) gives every layer of ``model.layers`` in order with its class and its
weights (the name Keras writes in ``weight_names``, short name, shape, dtype); the arrays come from
recipe.py.  :func:`structure` is what the tests compare with the real files kept in this folder.

Layouts (README.md, "HDF5 layout facts"): ``keras3`` (Keras 3 legacy whole model), ``keras3-weights``
(Keras 3 ``.weights.h5``), ``tfkeras2`` (tf.keras 2 whole model), ``tfkeras2-weights`` (tf.keras 2
weights only, the seed's ``best_model.h5`` with ``save_weights_only = True``).  Optimizer state is
written as an untrained checkpoint has it (iteration and learning rate).  h5py and numpy only.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

__all__ = ["LAYOUTS", "load_spec", "write_layout", "structure", "recipe_arrays", "file_arrays",
           "lambda_entry", "weighted"]

LAYOUTS = ("keras3", "keras3-weights", "tfkeras2", "tfkeras2-weights")
KERAS_VERSION = {"keras3": "3.15.1", "tfkeras2": "2.21.0"}


def load_spec(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def weighted(spec: dict) -> list:
    """The spec's weight-owning layers, in order."""
    return [layer for layer in spec["layers"] if layer[2]]


def _recipe():
    """recipe.py beside this file (imported by path: this folder is not a package)."""
    import importlib.util
    import sys
    name = "seed_models_recipe"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("recipe.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def recipe_arrays(spec: dict) -> list[list[np.ndarray]]:
    """recipe.py's arrays for every weight-owning layer of ``spec``."""
    weight = _recipe().weight
    return [[weight(i, j, short, shape, dtype) for j, (_, short, shape, dtype) in enumerate(layer[2])]
            for i, layer in enumerate(weighted(spec))]


def file_arrays(path: str | Path, spec: dict) -> list[list[np.ndarray]]:
    """The arrays of a real legacy-layout file, in ``spec`` order."""
    import h5py
    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        return [[np.asarray(group[name][w[0]]) for w in weights] for name, _, weights in weighted(spec)]


def _snake(name: str) -> str:
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def lambda_entry(code: str, tf2: bool) -> dict:
    """A ``model_config`` Lambda layer whose function is ``code`` (base64 marshalled bytecode), as
    Keras 3 and tf.keras 2 store it: deserialising the model would run it."""
    if tf2:
        function = {"function": [code, None, None], "function_type": "lambda", "module": "TensorflowUNet"}
    else:
        function = {"function": {"class_name": "__lambda__",
                                 "config": {"code": code, "defaults": None, "closure": None}}}
    return {"class_name": "Lambda", "name": "lambda_payload",
            "config": {"name": "lambda_payload", "trainable": True, **function},
            "inbound_nodes": []}


def _model_config(spec: dict, tf2: bool, payload: str | None = None) -> str:
    layers = [{"class_name": cls, "name": name, "config": {"name": name, "trainable": True},
               "inbound_nodes": []} for name, cls, _ in spec["layers"]]
    if payload:
        layers.insert(1, lambda_entry(payload, tf2))
    config = {"name": spec["model_name"], "layers": layers, "input_layers": [[spec["layers"][0][0], 0, 0]],
              "output_layers": [[spec["layers"][-1][0], 0, 0]]}
    out = {"class_name": "Functional", "config": config}
    out["keras_version" if tf2 else "module"] = "2.21.0" if tf2 else "keras"
    return json.dumps(out)


def _training_config(tf2: bool) -> str:
    return json.dumps({"loss": "binary_crossentropy", "metrics": ["binary_accuracy"],
                       "optimizer_config": {"class_name": "Custom>Adam" if tf2 else "Adam",
                                            "config": {"name": "Adam" if tf2 else "adam",
                                                       "learning_rate": 0.001}}})


def _legacy_weights(group, spec: dict, arrays, tf2: bool) -> None:
    """layer_names, backend, keras_version on ``group``; a group per layer with its weight_names."""
    version = KERAS_VERSION["tfkeras2" if tf2 else "keras3"]
    group.attrs["layer_names"] = [name.encode("utf8") for name, _, _ in spec["layers"]]
    group.attrs["backend"] = b"tensorflow"
    group.attrs["keras_version"] = version.encode("utf8")
    by_name = dict(zip([layer[0] for layer in weighted(spec)], arrays))
    for name, _, weights in sorted(spec["layers"], key=lambda layer: layer[0]):
        sub = group.create_group(name)
        names = [w[0].encode("utf8") for w in weights]
        sub.attrs["weight_names"] = names
        for w, value in zip(weights, by_name.get(name, [])):
            value = np.asarray(value, dtype=w[3])
            assert list(value.shape) == list(w[2]), (name, w, value.shape)
            sub.create_dataset(w[0], data=value)
    group.create_group("top_level_model_weights").attrs["weight_names"] = []


def _optimizer(f, tf2: bool) -> None:
    if tf2:
        group = f.create_group("optimizer_weights")
        group.attrs["weight_names"] = [b"iteration:0"]
        group.create_dataset("iteration:0", data=np.int64(0))
    else:
        group = f.create_group("optimizer_weights")
        group.attrs["weight_names"] = [b"adam/iteration", b"adam/learning_rate"]
        group.create_dataset("adam/iteration", data=np.int64(0))
        group.create_dataset("adam/learning_rate", data=np.float32(0.001))


def _keras3_weights(f, spec: dict, arrays) -> None:
    layers = f.create_group("layers")
    by_name = dict(zip([layer[0] for layer in weighted(spec)], arrays))
    used: dict[str, int] = {}
    for name, cls, weights in spec["layers"]:
        base = _snake(cls)
        used[base] = used.get(base, -1) + 1
        key = base if used[base] == 0 else f"{base}_{used[base]}"
        variables = layers.create_group(key).create_group("vars")
        variables.attrs["name"] = name
        for i, (w, value) in enumerate(zip(weights, by_name.get(name, []))):
            variables.create_dataset(str(i), data=np.asarray(value, dtype=w[3]))
    f.create_group("vars").attrs["name"] = spec["model_name"]
    opt = f.create_group("optimizer").create_group("vars")
    opt.attrs["name"] = "adam"
    opt.create_dataset("0", data=np.int64(0))
    opt.create_dataset("1", data=np.float32(0.001))


def write_layout(path: str | Path, layout: str, spec: dict, arrays, payload: str | None = None) -> Path:
    """Write ``arrays`` (one list per weight-owning layer of ``spec``) as the seed's ``layout``;
    ``payload`` (whole-model layouts): Lambda code to put in ``model_config`` (:func:`lambda_entry`)."""
    import h5py
    path = Path(path)
    tf2 = layout.startswith("tfkeras2")
    with h5py.File(path, "w") as f:
        if layout in ("keras3", "tfkeras2"):
            f.attrs["keras_version"] = KERAS_VERSION["tfkeras2" if tf2 else "keras3"]
            f.attrs["backend"] = "tensorflow"
            f.attrs["model_config"] = _model_config(spec, tf2, payload)
            _legacy_weights(f.create_group("model_weights"), spec, arrays, tf2)
            f.attrs["training_config"] = _training_config(tf2)
            _optimizer(f, tf2)
        elif layout == "tfkeras2-weights":
            _legacy_weights(f, spec, arrays, tf2=True)
        elif layout == "keras3-weights":
            _keras3_weights(f, spec, arrays)
        else:
            raise ValueError(f"unknown layout {layout!r}")
    return path


def _attr(value):
    value = np.asarray(value)
    if value.dtype.kind in "OSU":
        return ("str", tuple(v.decode() if isinstance(v, bytes) else str(v) for v in value.ravel())
                if value.ndim else "scalar")
    return (str(value.dtype), value.shape)


def structure(path: str | Path, skip_optimizer: bool = True) -> dict:
    """Every group and dataset of an HDF5 file: kind, shape, dtype and attributes (string lists by
    value, other strings only as present).  Optimizer state is left out when ``skip_optimizer``
    (a trained checkpoint has more of it)."""
    import h5py
    out = {}
    with h5py.File(path, "r") as f:
        out["/"] = ("group", {k: _attr(v) for k, v in f.attrs.items()})

        def visit(name, obj):
            if skip_optimizer and name.split("/")[0] in ("optimizer_weights", "optimizer") and "/" in name:
                return
            attrs = {k: _attr(v) for k, v in obj.attrs.items()}
            if skip_optimizer and name in ("optimizer_weights", "optimizer"):
                attrs = sorted(attrs)      # which names, not how many (a trained one has more)
            if isinstance(obj, h5py.Dataset):
                out[name] = ("dataset", obj.shape, str(obj.dtype), attrs)
            else:
                out[name] = ("group", attrs)
        f.visititems(visit)
    return out
