"""The worker side of make_seed_models.py: runs in its own process with a seed's src/ on sys.path,
builds the seed's model with the seed's own class and writes its files (TensorFlow imported here
only)."""
from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import sys
import time
from pathlib import Path

from seed_configs import BATCH, SEED, TRAINED

HERE = Path(__file__).resolve().parent


def _no_download(*args, **kwargs):
    raise RuntimeError(f"make_seed_models: download refused ({args[:2]})")


@contextlib.contextmanager
def _imagenet_structure():
    """Build as for ``weights="imagenet"`` without fetching or loading anything: ``get_file`` returns
    a name that is never opened and ``Model.load_weights`` does nothing (the random initial weights
    stay).  EfficientNet adds a weightless per-channel 1/sqrt(ImageNet stddev) scaling only then,
    and every seed user built it so."""
    saved = []
    for name in ("keras.src.utils.file_utils", "tf_keras.src.utils.data_utils"):
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        saved.append((mod, "get_file", mod.get_file))
        mod.get_file = lambda *a, **k: "/nonexistent/imagenet-weights-never-read.h5"
    for name in ("keras.src.models.model", "tf_keras.src.engine.training"):
        try:
            cls = importlib.import_module(name).Model
        except Exception:
            continue
        saved.append((cls, "load_weights", cls.load_weights))
        cls.load_weights = lambda self, *a, **k: None
    try:
        yield
    finally:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)


def _no_weights(fn):
    imagenet_structure = getattr(fn, "__name__", "").startswith("EfficientNet")

    def wrapped(*a, **kw):
        if imagenet_structure:
            kw["weights"] = "imagenet"
            with _imagenet_structure():
                return fn(*a, **kw)
        kw["weights"] = None
        return fn(*a, **kw)
    wrapped._seed_no_weights = True
    return wrapped


def _wants_weights(fn) -> bool:
    if not callable(fn) or getattr(fn, "_seed_no_weights", False):
        return False
    try:
        return "weights" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _patch_applications(tf, src: str | None = None) -> None:
    """Every Keras Applications constructor gets weights=None; any get_file raises."""
    modules = [tf.keras.applications]
    for name in ("keras.applications", "keras._tf_keras.keras.applications", "tf_keras.applications"):
        try:
            modules.append(importlib.import_module(name))
        except Exception:
            pass
    for mod in modules:
        for name in dir(mod):
            fn = getattr(mod, name)
            if name[:1].isupper() and _wants_weights(fn):
                setattr(mod, name, _no_weights(fn))
    # names the seed's modules imported before the patch (from tensorflow.keras.applications import X)
    for mod in list(sys.modules.values()):
        if src and str(getattr(mod, "__file__", "") or "").startswith(src):
            for name, fn in list(vars(mod).items()):
                if name[:1].isupper() and _wants_weights(fn) and "applications" in getattr(fn, "__module__", ""):
                    setattr(mod, name, _no_weights(fn))
    for name, attr in (("keras.src.utils.file_utils", "get_file"), ("keras.utils", "get_file"),
                       ("tf_keras.src.utils.data_utils", "get_file"), ("tf_keras.utils", "get_file")):
        try:
            setattr(importlib.import_module(name), attr, _no_download)
        except Exception:
            pass


def _layer_facts(model) -> dict:
    layers, lambdas, custom = [], [], []
    for layer in model.layers:
        cls = type(layer)
        if cls.__name__ == "Lambda":
            lambdas.append(layer.name)
        if not cls.__module__.startswith(("keras.", "tf_keras.")):
            custom.append(f"{layer.name}:{cls.__module__}.{cls.__name__}")
        if layer.weights:
            layers.append({
                "name": layer.name, "class": cls.__name__, "trainable": bool(layer.trainable),
                "weights": [[w.path if hasattr(w, "path") else w.name, list(map(int, w.shape))]
                            for w in layer.weights]})
    ops = {}
    for op in getattr(model, "operations", []):       # Keras 3: ops that are not layers (x + y, ...)
        if not hasattr(op, "weights") or type(op).__module__.startswith("keras.src.ops"):
            key = f"{type(op).__module__}.{type(op).__name__}"
            ops[key] = ops.get(key, 0) + 1
    return {"layers": layers, "lambda_layers": lambdas, "custom_layers": custom, "op_nodes": ops,
            "n_layers": len(model.layers),
            "classes": sorted({type(layer).__name__ for layer in model.layers})}


def _short(var) -> str:
    return (var.path if hasattr(var, "path") else var.name).split("/")[-1].split(":")[0]


def _spec(model) -> dict:
    """Every layer of ``model.layers`` with its class and its weights as the legacy HDF5 layouts store
    them (trainable first): the name written in ``weight_names``, the short name, shape and dtype."""
    layers = []
    for layer in model.layers:
        legacy = list(layer.trainable_weights) + list(layer.non_trainable_weights)
        if [id(v) for v in legacy] != [id(v) for v in layer.weights]:
            raise RuntimeError(f"{layer.name}: legacy weight order differs from layer.weights")
        weights = [[v.path if hasattr(v, "path") else v.name, _short(v), list(map(int, v.shape)),
                    str(getattr(v.dtype, "name", v.dtype))] for v in legacy]
        layers.append([layer.name, type(layer).__name__, weights])
    return {"model_name": model.name, "layers": layers}


def _apply_recipe(model) -> int:
    """Assign recipe.py's weights to every weight-owning layer; returns how many layers."""
    sys.path.insert(0, str(HERE))
    from recipe import weight
    index = 0
    for layer in model.layers:
        variables = list(layer.trainable_weights) + list(layer.non_trainable_weights)
        if not variables:
            continue
        for i, var in enumerate(variables):
            dtype = str(getattr(var.dtype, "name", var.dtype))
            var.assign(weight(index, i, _short(var), tuple(var.shape), dtype))
        if hasattr(layer, "finalize_state"):    # Normalization computes its mean/variance from them
            layer.finalize_state()
        index += 1
    return index


def _count(model) -> dict:
    import numpy as np
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = int(model.count_params())
    return {"params": total, "trainable": trainable, "non_trainable": total - trainable}


def _build(arch: str, config: Path, src: str):
    mod = importlib.import_module(arch)
    import tensorflow as tf
    _patch_applications(tf, src)     # the seed's `from tensorflow.keras...` imports rebind tf.keras
    return getattr(mod, arch)(str(config))


def _data(model, n: int, rng):
    import numpy as np
    _, h, w, c = model.input_shape
    classes = model.output_shape[-1]
    x = rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)
    ref = x[..., 0].astype(np.int32)
    if classes == 1:
        y = (ref > 127).astype(np.float32)[..., None]
    else:
        y = np.eye(classes, dtype=np.float32)[np.minimum(ref * classes // 256, classes - 1)]
    return x, y


def _perturb(model, rng) -> None:
    """Seeded noise on the trainable weights; BatchNormalization statistics away from 0 and 1."""
    import numpy as np
    for layer in model.layers:
        values = layer.get_weights()
        if not values:
            continue
        new = []
        for var, w in zip(layer.weights, values):
            vname = (var.path if hasattr(var, "path") else var.name).split("/")[-1].split(":")[0]
            if "moving_variance" in vname:
                new.append(rng.uniform(0.5, 1.5, w.shape).astype(w.dtype))
            elif "moving_mean" in vname:
                new.append(rng.normal(0.0, 0.1, w.shape).astype(w.dtype))
            elif not (layer.trainable and var.trainable):     # SharpUNet's fixed sharpening kernels
                new.append(w)
            else:
                scale = float(np.std(w)) or 0.05
                new.append((w + rng.normal(0.0, 0.5 * scale, w.shape)).astype(w.dtype))
        layer.set_weights(new)


def _divisor(info) -> float:
    """1 (the model takes 0..255) when it has the seed's x/255 Lambda, else 255: the seed's datasets
    divide images by 255 (EfficientNet backbones then rescale by 1/255 once more: as the seed runs)."""
    return 1.0 if info["lambda_layers"] else 255.0


def _save_reference(ns, model, info, stage: Path, fed, x_ref):
    import numpy as np
    import tensorflow as tf
    y_ref = model.predict(fed, batch_size=BATCH, verbose=0).astype(np.float32)
    npz = stage / f"{ns.arch}.{ns.mode}.npz"
    # model input = x.astype(float32) / input_divisor
    np.savez_compressed(npz, x=x_ref, input_divisor=np.float32(info["input_divisor"]), y=y_ref,
                        arch=np.array(ns.arch), params=np.array(info["params"]),
                        keras_version=np.array(info["keras_version"]), tf_version=np.array(tf.__version__))
    info["y_range"] = [float(y_ref.min()), float(y_ref.max())]
    info["y_fraction_unsaturated"] = float(np.mean((y_ref > 1e-4) & (y_ref < 1 - 1e-4)))
    return npz, y_ref


def _recipe_reference(ns, model, info, stage: Path, spec_file: Path) -> None:
    """recipe.py's weights into the seed's model; its output on the reference input."""
    import numpy as np
    info["input_divisor"] = divisor = _divisor(info)
    rng = np.random.default_rng(SEED)
    _data(model, 4, rng), _data(model, 2, rng)      # the same draws as a "make" job
    x_ref, _ = _data(model, BATCH, rng)
    fed = x_ref.astype(np.float32) / np.float32(divisor)
    info["recipe_layers"] = _apply_recipe(model)
    npz, y_ref = _save_reference(ns, model, info, stage, fed, x_ref)
    info["files"] = {"reference": npz.name, "spec": spec_file.name}
    info["trained"] = "untrained; every weight from recipe.py (no file kept)"
    # the same recipe into a second seed-built model gives the same output
    fresh = _build(ns.arch, Path(ns.config).resolve(), ns.src).model
    _apply_recipe(fresh)
    y2 = fresh.predict(fed, batch_size=BATCH, verbose=0)
    info["reload_max_abs_diff"] = {"recipe": float(np.max(np.abs(y2 - y_ref)))}
    Path(ns.result).write_text(json.dumps(info, indent=1))


def _setup(ns):
    """Environment, sys.path and patches of a worker; returns tensorflow."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if ns.mode == "tfkeras2":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    ns.src = str(Path(ns.src).resolve())
    sys.path.insert(0, ns.src)
    import tensorflow as tf
    # Keras 3 cannot save in graph mode; tf_keras 2.21's Adam cannot train in it (no get_updates).
    # Every compat.v1 module object is patched: keras_unet_collection's `from tensorflow.compat.v1
    # import image` makes `tf.compat.v1` resolve to another module object than the one patched first.
    importlib.import_module("tensorflow.compat.v1")
    for name, mod in list(sys.modules.items()):
        if mod is not None and name.endswith("compat.v1") and hasattr(mod, "disable_eager_execution"):
            mod.disable_eager_execution = lambda: None
    tf.compat.v1.disable_eager_execution = lambda: None
    _patch_applications(tf)
    work = Path(ns.workdir)
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    return tf


def _describe(model, info: dict) -> None:
    info.update(_count(model))
    info["input_shape"] = list(model.input_shape)
    info["output_shape"] = list(model.output_shape)
    info["model_name"] = model.name
    activation = getattr(model.layers[-1], "activation", None)
    info["output_activation"] = activation.__name__ if activation else None


def worker(ns) -> None:
    tf = _setup(ns)
    config = Path(ns.config).resolve()
    keras = importlib.import_module("tf_keras" if ns.mode == "tfkeras2" else "keras")
    info = {"arch": ns.arch, "mode": ns.mode, "config": str(config), "tf_version": tf.__version__,
            "keras_version": keras.__version__, "eager": tf.executing_eagerly()}
    t0 = time.time()
    model = _build(ns.arch, config, ns.src).model
    if not tf.executing_eagerly():
        raise RuntimeError("the seed's import switched eager execution off (disable_eager_execution "
                           "not neutralised)")
    info["build_seconds"] = round(time.time() - t0, 1)
    _describe(model, info)
    if ns.job != "count":
        info.update(_layer_facts(model))
    if ns.job in ("count", "facts"):
        Path(ns.result).write_text(json.dumps(info, indent=1))
        return
    stage = Path(ns.stage)
    stage.mkdir(parents=True, exist_ok=True)
    spec_file = stage / f"{ns.arch}.{ns.mode}.spec.json"
    spec = _spec(model)
    info["all_layers"] = [[name, cls, bool(w)] for name, cls, w in spec["layers"]]
    spec_file.write_text(json.dumps(spec, separators=(",", ":")) + "\n")
    if ns.job == "recipe":
        _recipe_reference(ns, model, info, stage, spec_file)
    else:
        _make_files(ns, tf, model, info, stage)
        info["files"]["spec"] = spec_file.name
    Path(ns.result).write_text(json.dumps(info, indent=1))


def _checkpoints(ns, tf, info: dict, stage: Path):
    """The seed trainer's ModelCheckpoint callbacks: whole model, and (unless whole_only) weights only
    under the seed's best_model.h5 kind of name (Keras 3 wants *.weights.h5 for that)."""
    files = {"whole": stage / f"{ns.arch}.{ns.mode}.h5"}
    callbacks = [tf.keras.callbacks.ModelCheckpoint(str(files["whole"]), verbose=0, save_best_only=True,
                                                    save_weights_only=False)]
    if not ns.whole_only:
        try:
            tf.keras.callbacks.ModelCheckpoint(str(stage / "best_model.h5"), save_best_only=True,
                                               save_weights_only=True)
            info["seed_weights_only_best_model_h5"] = "accepted"
            files["weights"] = stage / f"{ns.arch}.{ns.mode}-weights.h5"
        except Exception as exc:        # Keras 3 wants *.weights.h5
            info["seed_weights_only_best_model_h5"] = f"{type(exc).__name__}: {exc}"
            files["weights"] = stage / f"{ns.arch}.{ns.mode}.weights.h5"
        callbacks.append(tf.keras.callbacks.ModelCheckpoint(
            str(files["weights"]), verbose=0, save_best_only=True, save_weights_only=True))
    return files, callbacks


def _make_files(ns, tf, model, info: dict, stage: Path) -> None:
    """Checkpoint files written by the seed's callbacks, the reference output, and a reload check.
    Models with the seed's x/255 Lambda are fed 0..255, the others 0..1 (as the seed's datasets
    normalise for them), so outputs do not saturate."""
    import numpy as np
    info["input_divisor"] = divisor = _divisor(info)
    rng = np.random.default_rng(SEED)
    x_train, y_train = _data(model, 4, rng)
    x_val, y_val = _data(model, 2, rng)
    x_ref, _ = _data(model, BATCH, rng)
    x_train, x_val = (v.astype(np.float32) / np.float32(divisor) for v in (x_train, x_val))
    fed = x_ref.astype(np.float32) / np.float32(divisor)
    files, callbacks = _checkpoints(ns, tf, info, stage)
    if ns.arch in TRAINED:
        model.fit(x_train, y_train, validation_data=(x_val, y_val),
                  batch_size=2, epochs=1, verbose=0, callbacks=callbacks)
        info["trained"] = "one epoch of model.fit with the ModelCheckpoint callbacks"
    else:
        _perturb(model, rng)
        for cb in callbacks:      # the callbacks' own end-of-epoch save, without an optimizer state
            cb.set_model(model)
            cb.on_train_begin()
            cb.on_epoch_end(0, logs={"loss": 0.5, "val_loss": 0.5})
        info["trained"] = "untrained; seeded noise on weights; ModelCheckpoint.on_epoch_end saved it"
    npz, y_ref = _save_reference(ns, model, info, stage, fed, x_ref)
    info["files"] = {k: v.name for k, v in files.items()}
    info["files"]["reference"] = npz.name
    fresh = _build(ns.arch, Path(ns.config).resolve(), ns.src).model     # reload each file
    info["reload_max_abs_diff"] = {}
    for kind, path in files.items():
        fresh.load_weights(str(path))
        y2 = fresh.predict(fed, batch_size=BATCH, verbose=0)
        info["reload_max_abs_diff"][kind] = float(np.max(np.abs(y2 - y_ref)))
