#!/usr/bin/env python3
"""Make the seed reference models in this folder by running the seed API's own code.

Run by hand, never by the test suite.  The seed sources are NOT part of this repository: extract them
somewhere outside it and pass their ``src/`` folders.  Each architecture is built, compiled and
checkpointed by the seed's own classes in a subprocess of its own (the API and the Lizard seed have
modules of the same names), from the tiny ``<arch>.config`` files written beside this script, then:

* saved by ``ModelCheckpoint(save_best_only=True)`` as the seed's trainer does: the whole model
  (``save_weights_only=False``) for every architecture, and for TensorflowUNet also the weights only
  (``save_weights_only=True``; Keras 3 refuses the seed's ``best_model.h5`` name for that and wants
  ``*.weights.h5``, tf_keras accepts it).  TensorflowUNet and TensorFlowFlexUNet are trained for one
  epoch on a few random images (their files carry the optimizer state); the others get seeded noise on
  their weights and BatchNormalization statistics and are saved by the callback's own end-of-epoch step
  without training, which keeps their files small;
* run on a fixed random uint8 image (a batch of one) fed as ``x / input_divisor`` (1 when the model has
  the seed's x/255 Lambda, else 255); x, input_divisor and the output go to ``<arch>.<keras>.npz``;
* reloaded into a second seed-built model (``load_weights``) to check that the files reproduce it.
* DeepLabV3Plus and EfficientNetB7UNet have fixed widths (ResNet50 / EfficientNetB7 backbones): only
  their layer facts are recorded, no files.

Keras 3 mode (default) neutralises ``tf.compat.v1.disable_eager_execution()`` (Keras 3 cannot save a
model in graph mode).  ``--tf-keras DIR`` adds a run under tf_keras (Keras 2 on TF 2.16+, installed in
DIR with ``pip install --target DIR --no-deps tf_keras==<TF version>``) with ``TF_USE_LEGACY_KERAS=1``:
the HDF5 layout of tf.keras 2.10-2.15 users.  The graph-mode call is neutralised there too: tf_keras
2.21's Adam cannot train in graph mode ("'Adam' object has no attribute 'get_updates'"); the HDF5
layout of the model weights does not depend on it.
Backbones (Keras Applications) are always built with ``weights=None`` and any download raises.

``--counts PROJECTS`` also builds every architecture from
``PROJECTS/<folder>/Acute-Lymphoblastic-Leukemia/train_eval_infer.config`` (full size) and records the
parameter count the seed's code gives, and counts the ``*.config`` files under PROJECTS per
``[model] model``.

Example (seed dependencies tqdm and scikit-image kept outside the project)::

    pip install --target /tmp/seeddeps tqdm scikit-image
    python tests/seed_models/make_seed_models.py --api-src /tmp/seedapi/src \\
        --lizard-src /tmp/seedlizard/src --deps /tmp/seeddeps --tf-keras /tmp/tfkerasdeps \\
        --counts /tmp/seedapi/projects --api-commit <sha> --lizard-commit <sha>
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20240926
BATCH = 1                      # reference batch size
MAX_H5_BYTES = 1_000_000       # larger files are not kept (their facts are still recorded)

# ---------------------------------------------------------------------------------------------------
# Tiny configs, in the seed's train_eval_infer.config format.  The [model] keys are the ones the seed's
# create() methods read; the other sections are what its constructors read.

_COMMON_TAIL = """
[dataset]
datasetclass  = "ImageMaskDataset"

[train]
epochs        = 1
batch_size    = 2
patience      = 10
model_dir     = "./models"
eval_dir      = "./eval"
save_weights_only = {swo}
metrics       = ["binary_accuracy", "val_binary_accuracy"]

[infer]
images_dir    = "./mini_test"
output_dir    = "./mini_test_output"

[mask]
blur      = False
binarize  = True
threshold = 128
"""


def _api_config(arch: str, model_lines: str, swo: bool = True) -> str:
    return (f"; {arch}.config: tiny reference model for flexunet's seed .h5 tests "
            "(made by make_seed_models.py)\n"
            f"[model]\nmodel          = \"{arch}\"\n" + model_lines.strip() + "\n"
            + _COMMON_TAIL.format(swo=swo))


_TINY_HEAD = """
image_width    = 64
image_height   = 64
image_channels = 3
num_classes    = 1
"""
_TINY_TAIL = """
dropout_rate   = 0.05
learning_rate  = 0.001
loss           = "binary_crossentropy"
metrics        = ["binary_accuracy"]
show_summary   = False
"""


def _levels(base_filters: int, num_layers: int) -> str:
    return f"base_filters   = {base_filters}\nnum_layers     = {num_layers}"


def _tiny(model_lines: str) -> str:
    """The [model] lines of a tiny 64x64 one-class model: these keys between the common ones."""
    return _TINY_HEAD.strip() + "\n" + model_lines.strip() + "\n" + _TINY_TAIL.strip()


CONFIGS = {
    # base_kernels (5,5) and dilation (2,2) exercise the per-level kernel/dilation decrement;
    # normalization=True puts BatchNormalization layers in the file; custom loss/metric names go into
    # the whole model's training_config.
    "TensorflowUNet": _api_config("TensorflowUNet", """
image_width    = 64
image_height   = 64
image_channels = 3
num_classes    = 1
base_filters   = 4
num_layers     = 3
base_kernels   = (5, 5)
dilation       = (2, 2)
normalization  = True
dropout_rate   = 0.05
learning_rate  = 0.001
loss           = "bce_dice_loss"
metrics        = ["dice_coef"]
show_summary   = False
"""),
    "TensorflowAttentionUNet": _api_config("TensorflowAttentionUNet", _tiny(_levels(4, 3))),
    # UNet3Plus always has 5 levels; num_layers only sets how many filter sizes exist and so the
    # decoder width num_layers * base_filters: 6 as in the seed's own configs.
    "TensorflowUNet3Plus": _api_config("TensorflowUNet3Plus", _tiny(_levels(2, 6))),
    "TensorflowMultiResUNet": _api_config("TensorflowMultiResUNet", _tiny(_levels(8, 2))),
    "TensorflowSharpUNet": _api_config("TensorflowSharpUNet", _tiny("""
filters        = [4, 8]
max_filter     = 16
base_ksize     = (5, 5)
dilation       = (1, 1)
base_filters   = 16
num_layers     = 6
""")),
    # DeepLabV3Plus (ResNet50 + 256-wide ASPP) and EfficientNetB7UNet have fixed widths: not tiny.
    "TensorflowDeepLabV3Plus": _api_config("TensorflowDeepLabV3Plus", _tiny(_levels(16, 6))),
    "TensorflowEfficientNetB7UNet": _api_config("TensorflowEfficientNetB7UNet", _tiny(_levels(16, 6))),
    # The Lizard seed's multiclass Flex UNet (its trainer always saves the whole model).
    "TensorFlowFlexUNet": """; TensorFlowFlexUNet.config: tiny multiclass reference model for flexunet's seed .h5 tests
; (made by make_seed_models.py; sections as in the Lizard seed's config)
[model]
model         = "TensorFlowFlexUNet"
generator     = False
image_width    = 64
image_height   = 64
image_channels = 3
input_normalize = False
normalization  = False
num_classes    = 4
base_filters   = 4
base_kernels   = (7,7)
num_layers     = 3
dropout_rate   = 0.04
dilation       = (1,1)
optimizer      = "Adam"
learning_rate  = 0.0001
clipvalue      = 0.4
loss           = "categorical_crossentropy"
metrics        = ["dice_coef_multiclass"]
show_summary   = False

[dataset]
class_name    = "ImageCategorizedMaskDataset"

[train]
epochs        = 1
batch_size    = 2
patience      = 10
metrics       = ["dice_coef_multiclass", "val_dice_coef_multiclass"]
model_dir     = "./models/"
eval_dir      = "./eval/"
images_dir    = "./dataset/train/images/"
masks_dir     = "./dataset/train/masks/"
save_weights_only  = True

[valid]
images_dir = "./dataset/valid/images/"
masks_dir  = "./dataset/valid/masks/"

[test]
images_dir = "./dataset/test/images/"
masks_dir  = "./dataset/test/masks/"

[infer]
images_dir    = "./mini_test/images/"
output_dir    = "./mini_test_output/"

[image]
color_order = "RGB"

[mask]
mask_file_format = ".png"
rgb_map = {(0,0,0):0, (0,255,0):1, (255,0,0):2, (0,0,255):3}
""",
}

# Trained for one epoch (the files carry optimizer state, as the seed's checkpoints do).  The others are
# checkpointed untrained, with seeded noise added to their weights and BatchNormalization statistics,
# to keep each file small (an optimizer state triples the weights and the HDF5 objects).
TRAINED = {"TensorflowUNet", "TensorFlowFlexUNet"}
SOURCE = {arch: ("lizard" if arch.startswith("TensorFlowFlex") else "api") for arch in CONFIGS}
FIXED_WIDTH = {"TensorflowDeepLabV3Plus", "TensorflowEfficientNetB7UNet"}
# API project folders whose ALL config is counted; the folder of TensorflowUNet is
# TensorflowSlightlyFlexibleUNet.
COUNT_FOLDERS = {
    "TensorflowUNet": "TensorflowSlightlyFlexibleUNet",
    "TensorflowAttentionUNet": "TensorflowAttentionUNet",
    "TensorflowUNet3Plus": "TensorflowUNet3Plus",
    "TensorflowMultiResUNet": "TensorflowMultiResUNet",
    "TensorflowSharpUNet": "TensorflowSharpUNet",
    "TensorflowDeepLabV3Plus": "TensorflowDeepLabV3Plus",
    "TensorflowEfficientNetB7UNet": "TensorflowEfficientNetB7UNet",
    "TensorflowEfficientUNet": "TensorflowEfficientUNet",
    "TensorflowTransUNet": "TensorflowTransUNet",
    "TensorflowSwinUNet": "TensorflowSwinUNet",
    "TensorflowU2Net": "TensorflowU2Net",
}

# ---------------------------------------------------------------------------------------------------
# Worker: runs in its own process with the seed's src/ on sys.path.


def _no_download(*args, **kwargs):
    raise RuntimeError(f"make_seed_models: download refused ({args[:2]})")


def _no_weights(fn):
    def wrapped(*a, **kw):
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


def worker(ns) -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if ns.mode == "tfkeras2":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    ns.src = str(Path(ns.src).resolve())
    sys.path.insert(0, ns.src)
    import numpy as np
    import tensorflow as tf
    # Keras 3 cannot save in graph mode; tf_keras 2.21's Adam cannot train in it (no get_updates).
    tf.compat.v1.disable_eager_execution = lambda: None
    _patch_applications(tf)
    work = Path(ns.workdir)
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    config = Path(ns.config).resolve()
    keras_version = getattr(tf.keras, "__version__", None)
    if keras_version is None:
        import keras
        keras_version = keras.__version__
    info = {"arch": ns.arch, "mode": ns.mode, "config": str(config), "tf_version": tf.__version__,
            "keras_version": keras_version, "eager": tf.executing_eagerly()}
    t0 = time.time()
    seed_obj = _build(ns.arch, config, ns.src)
    model = seed_obj.model
    info.update(_count(model))
    info["build_seconds"] = round(time.time() - t0, 1)
    info["input_shape"] = list(model.input_shape)
    info["output_shape"] = list(model.output_shape)
    info["model_name"] = model.name
    info["output_activation"] = getattr(model.layers[-1], "activation", None).__name__ \
        if getattr(model.layers[-1], "activation", None) else None
    if ns.job == "count":
        Path(ns.result).write_text(json.dumps(info, indent=1))
        return
    info.update(_layer_facts(model))
    if ns.job == "facts":
        Path(ns.result).write_text(json.dumps(info, indent=1))
        return

    # --- make: the seed trainer's checkpoint callbacks.  Models with the seed's x/255 Lambda are fed
    # 0..255, the others 0..1 (as the seed's datasets normalise for them), so outputs do not saturate.
    divisor = 1.0 if info["lambda_layers"] else 255.0
    info["input_divisor"] = divisor
    rng = np.random.default_rng(SEED)
    x_train, y_train = _data(model, 4, rng)
    x_val, y_val = _data(model, 2, rng)
    x_ref, _ = _data(model, BATCH, rng)
    x_train, x_val = (v.astype(np.float32) / np.float32(divisor) for v in (x_train, x_val))
    fed = x_ref.astype(np.float32) / np.float32(divisor)
    stage = Path(ns.stage)
    stage.mkdir(parents=True, exist_ok=True)
    tag = ns.mode
    files = {"whole": stage / f"{ns.arch}.{tag}.h5"}
    callbacks = [tf.keras.callbacks.ModelCheckpoint(str(files["whole"]), verbose=0, save_best_only=True,
                                                    save_weights_only=False)]
    if not ns.whole_only:
        # The seed's own path: best_model.h5 with save_weights_only=True.
        try:
            tf.keras.callbacks.ModelCheckpoint(str(stage / "best_model.h5"), save_best_only=True,
                                               save_weights_only=True)
            info["seed_weights_only_best_model_h5"] = "accepted"
            files["weights"] = stage / (f"{ns.arch}.{tag}-weights.h5")
        except Exception as exc:        # Keras 3 wants *.weights.h5
            info["seed_weights_only_best_model_h5"] = f"{type(exc).__name__}: {exc}"
            files["weights"] = stage / f"{ns.arch}.{tag}.weights.h5"
        callbacks.append(tf.keras.callbacks.ModelCheckpoint(
            str(files["weights"]), verbose=0, save_best_only=True, save_weights_only=True))
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
    y_ref = model.predict(fed, batch_size=BATCH, verbose=0).astype(np.float32)
    npz = stage / f"{ns.arch}.{tag}.npz"
    # model input = x.astype(float32) / input_divisor
    np.savez_compressed(npz, x=x_ref, input_divisor=np.float32(divisor), y=y_ref, arch=np.array(ns.arch),
                        params=np.array(info["params"]), keras_version=np.array(keras_version),
                        tf_version=np.array(tf.__version__))
    info["files"] = {k: v.name for k, v in files.items()}
    info["files"]["reference"] = npz.name
    # --- reload each file into a freshly built seed model
    fresh = _build(ns.arch, config, ns.src).model
    info["reload_max_abs_diff"] = {}
    for kind, path in files.items():
        fresh.load_weights(str(path))
        y2 = fresh.predict(fed, batch_size=BATCH, verbose=0)
        info["reload_max_abs_diff"][kind] = float(np.max(np.abs(y2 - y_ref)))
    info["y_range"] = [float(y_ref.min()), float(y_ref.max())]
    info["y_fraction_unsaturated"] = float(np.mean((y_ref > 1e-4) & (y_ref < 1 - 1e-4)))
    Path(ns.result).write_text(json.dumps(info, indent=1))


# ---------------------------------------------------------------------------------------------------
# Main process: no TensorFlow here, only subprocesses and h5py.


def _run_worker(args, arch: str, config: Path, src: str, mode: str, job: str, stage: Path,
                whole_only: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"seed-{arch}-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--arch", arch,
               "--config", str(config), "--src", src, "--mode", mode, "--job", job,
               "--stage", str(stage), "--workdir", str(Path(tmp) / "cwd"), "--result", str(result)]
        if whole_only:
            cmd.append("--whole-only")
        env = dict(os.environ)
        paths = list(args.deps)
        if mode == "tfkeras2":
            paths.insert(0, args.tf_keras)
        env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).strip(os.pathsep)
        env["CUDA_VISIBLE_DEVICES"] = ""
        log = Path(args.logs) / f"{arch}.{mode}.{job}.log"
        t0 = time.time()
        with open(log, "w") as fh:
            rc = subprocess.call(["nice", "-n", "10"] + cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        seconds = round(time.time() - t0, 1)
        if rc != 0 or not result.exists():
            lines = log.read_text(errors="replace").splitlines()
            errors = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b.*:", line)]
            where = [line.strip() for line in lines if line.strip().startswith("File ") and src in line]
            error = (errors[-1] if errors else (lines[-1] if lines else f"rc={rc}"))[:400]
            if where:
                error += f" (last seed frame: {where[-1].replace(src, '<src>')})"
            print(f"  {arch} [{mode} {job}] FAILED rc={rc} ({seconds}s): {error}")
            return {"arch": arch, "mode": mode, "job": job, "error": error}
        info = json.loads(result.read_text())
        info["seconds"] = seconds
        print(f"  {arch} [{mode} {job}] ok ({seconds}s) params={info.get('params')}")
        return info


def _attr_value(value):
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        value = [v.decode() if isinstance(v, bytes) else v for v in value]
    if isinstance(value, str) and len(value) > 80:
        return f"<str {len(value)} chars>"
    if isinstance(value, list) and len(value) > 6:
        return value[:3] + [f"... {len(value)} items"]
    return value


def h5_layout(path: Path) -> dict:
    """A compact picture of one HDF5 file: attributes of the root and of every group directly under
    it that Keras names itself, the top-level names, counts, and the first weighted layer group."""
    import h5py
    out = {"root_attrs": {}, "top_level": [], "group_attrs": {}, "n_groups": 0, "n_datasets": 0,
           "first_datasets": []}
    with h5py.File(path, "r") as f:
        out["root_attrs"] = {k: _attr_value(v) for k, v in f.attrs.items()}
        keys = list(f.keys())
        out["top_level"] = keys if len(keys) <= 6 else keys[:4] + [f"... {len(keys)} names"]

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out["n_datasets"] += 1
                if len(out["first_datasets"]) < 6:
                    out["first_datasets"].append([name, list(obj.shape), str(obj.dtype)])
            else:
                out["n_groups"] += 1
                if name in ("model_weights", "optimizer_weights", "layers", "optimizer", "vars") and obj.attrs:
                    out["group_attrs"][name] = {k: _attr_value(v) for k, v in obj.attrs.items()}
        f.visititems(visit)
        group = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in group.attrs:
            for lname in group.attrs["layer_names"]:
                lname = lname.decode() if isinstance(lname, bytes) else lname
                g = group[lname]
                if len(g.attrs.get("weight_names", [])):
                    items = []
                    g.visititems(lambda n, o: items.append([f"{g.name}/{n}", list(o.shape)])
                                 if isinstance(o, h5py.Dataset) else None)
                    out["first_weighted_layer"] = {
                        "group": g.name, "attrs": {k: _attr_value(v) for k, v in g.attrs.items()},
                        "subgroups": [f"{g.name}/{n}" for n in g.keys()], "datasets": items}
                    break
    return out


def h5_layer_order(path: Path) -> list:
    """[(layer name, [(weight name, shape), ...])] in layer_names order (legacy HDF5 layouts)."""
    import h5py
    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in group.attrs:
            return []
        rows = []
        for lname in group.attrs["layer_names"]:
            lname = lname.decode() if isinstance(lname, bytes) else lname
            g = group[lname]
            names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs.get("weight_names", [])]
            rows.append([lname, [[n, list(g[n].shape)] for n in names]])
        return rows


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_layers_txt(path: Path, info: dict, h5_rows: list | None) -> None:
    lines = [f"# {info['arch']}: layers with weights, in model.layers order "
             f"(= the legacy .h5 model_weights layer_names order, minus weightless layers)",
             f"# Keras {info['keras_version']}, TF {info['tf_version']}; params {info['params']:,} "
             f"(trainable {info['trainable']:,}, non-trainable {info['non_trainable']:,})",
             f"# config {Path(info['config']).name}; input {info['input_shape']}, output "
             f"{info['output_shape']}; Lambda layers: {info['lambda_layers'] or 'none'}; "
             f"custom layer classes: {info['custom_layers'] or 'none'}",
             "# index\tlayer name\tclass\ttrainable\tweight shapes (in order)"]
    for i, layer in enumerate(info["layers"]):
        shapes = "; ".join(f"{w[0].split('/')[-1]}={'x'.join(map(str, w[1]))}" for w in layer["weights"])
        lines.append(f"{i}\t{layer['name']}\t{layer['class']}\t{layer['trainable']}\t{shapes}")
    if h5_rows is not None:
        layer_rows = [r for r in h5_rows if r[1]]
        same = [r[0] for r in layer_rows] == [l["name"] for l in info["layers"]]
        lines.append(f"# .h5 layer_names: {len(h5_rows)} entries ({len(layer_rows)} with weights); "
                     f"order of those with weights identical to the list above: {same}")
        lines.append("# layer_names order ([weightless]): "
                     + ", ".join(r[0] if r[1] else f"[{r[0]}]" for r in h5_rows))
    path.write_text("\n".join(lines) + "\n")


def count_configs(projects: Path) -> dict:
    by_model: dict = {}
    tei: dict = {}
    for cfg in sorted(projects.rglob("*.config")):
        text = cfg.read_text(errors="replace")
        m = re.search(r'^\s*model\s*=\s*"?([A-Za-z0-9_]+)"?', text, re.M)
        name = m.group(1) if m else "?"
        by_model[name] = by_model.get(name, 0) + 1
        if cfg.name == "train_eval_infer.config":
            tei[name] = tei.get(name, 0) + 1
    return {"all_config_files": by_model, "all_total": sum(by_model.values()),
            "train_eval_infer_config": tei, "train_eval_infer_total": sum(tei.values())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--api-src", help="extracted Tensorflow-Image-Segmentation-API src/")
    p.add_argument("--lizard-src", help="extracted TensorFlow-FlexUNet-Image-Segmentation-Lizard src/")
    p.add_argument("--deps", action="append", default=[], help="extra PYTHONPATH entry (tqdm, skimage)")
    p.add_argument("--tf-keras", help="folder where tf_keras is installed: adds tf.keras-2 files")
    p.add_argument("--counts", help="API projects/ folder: parameter counts and config census")
    p.add_argument("--only", help="comma-separated architectures")
    p.add_argument("--out", default=str(HERE))
    p.add_argument("--api-commit", default="")
    p.add_argument("--lizard-commit", default="")
    p.add_argument("--max-h5-bytes", type=int, default=MAX_H5_BYTES)
    # worker
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--arch", "--config", "--src", "--mode", "--job", "--stage", "--workdir", "--result"):
        p.add_argument(name, help=argparse.SUPPRESS)
    p.add_argument("--whole-only", action="store_true", help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.worker:
        worker(ns)
        return 0

    out = Path(ns.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix="seed-stage-"))
    ns.logs = str(stage / "logs")
    Path(ns.logs).mkdir()
    print(f"staging in {stage}")
    srcs = {"api": ns.api_src, "lizard": ns.lizard_src}
    archs = [a for a in CONFIGS if (not ns.only or a in ns.only.split(","))]
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest["provenance"] = {
        "api_repository": "sarah-antillia/Tensorflow-Image-Segmentation-API",
        "api_commit": ns.api_commit or manifest.get("provenance", {}).get("api_commit", ""),
        "lizard_repository": "sarah-antillia/TensorFlow-FlexUNet-Image-Segmentation-Lizard",
        "lizard_commit": ns.lizard_commit or manifest.get("provenance", {}).get("lizard_commit", ""),
        "command": manifest.get("provenance", {}).get("command", "") if ns.only else
        "python tests/seed_models/make_seed_models.py " + " ".join(sys.argv[1:]),
        "seed": SEED, "reference_batch": BATCH,
    }
    if ns.only:
        manifest["provenance"]["partial_rerun"] = \
            "python tests/seed_models/make_seed_models.py " + " ".join(sys.argv[1:])
    models = manifest.setdefault("models", {})
    for arch in archs:
        src = srcs[SOURCE[arch]]
        if not src:
            continue
        config = out / f"{arch}.config"
        config.write_text(CONFIGS[arch])
        modes = ["keras3"] + (["tfkeras2"] if ns.tf_keras and SOURCE[arch] == "api"
                              and arch not in FIXED_WIDTH else [])
        for mode in modes:
            if arch in FIXED_WIDTH:
                info = _run_worker(ns, arch, config, src, mode, "facts", stage)
            else:
                # weights-only files: TensorflowUNet only (the Flex trainer never writes one; the
                # layout does not depend on the architecture)
                info = _run_worker(ns, arch, config, src, mode, "make", stage,
                                   whole_only=arch != "TensorflowUNet")
            entry = {k: v for k, v in info.items() if k not in ("layers",)}
            if "error" not in info:
                h5_rows = None
                files = {}
                for kind, name in info.get("files", {}).items():
                    path = stage / name
                    if kind == "whole":
                        h5_rows = h5_layer_order(path)
                    rec = {"file": name, "bytes": path.stat().st_size, "sha256": _sha256(path)}
                    if path.suffix == ".h5":
                        rec["layout"] = h5_layout(path)
                    # tf.keras 2 files: TensorflowUNet's only (the others' facts are in layers.txt)
                    keep = (mode == "keras3" or arch == "TensorflowUNet") \
                        and path.stat().st_size <= ns.max_h5_bytes
                    if keep:
                        shutil.copy2(path, out / name)
                    rec["kept"] = keep
                    files[kind] = rec
                entry["files"] = files
                _write_layers_txt(out / f"{arch}.{mode}.layers.txt", info, h5_rows)
                entry["layers_file"] = f"{arch}.{mode}.layers.txt"
            models[f"{arch}.{mode}"] = entry
            manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")

    if ns.counts:
        projects = Path(ns.counts)
        manifest["config_census"] = count_configs(projects)
        counts = manifest.setdefault("all_config_param_counts", {})
        for arch, folder in COUNT_FOLDERS.items():
            if ns.only and arch not in ns.only.split(","):
                continue
            cfg = projects / folder / "Acute-Lymphoblastic-Leukemia" / "train_eval_infer.config"
            if not cfg.exists():
                continue
            info = _run_worker(ns, arch, cfg, ns.api_src, "keras3", "count", stage)
            counts[arch] = {k: info.get(k) for k in ("params", "trainable", "non_trainable", "error",
                                                     "input_shape", "output_shape", "keras_version")}
            counts[arch]["config"] = f"projects/{folder}/Acute-Lymphoblastic-Leukemia/train_eval_infer.config"
            manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        if ns.lizard_src and (not ns.only or "TensorFlowFlexUNet" in ns.only.split(",")):
            lizard_cfg = Path(ns.lizard_src).parent / "projects" / "TensorFlowFlexUNet" / "Lizard" \
                / "train_eval_infer.config"
            if lizard_cfg.exists():
                info = _run_worker(ns, "TensorFlowFlexUNet", lizard_cfg, ns.lizard_src, "keras3", "count",
                                   stage)
                counts["TensorFlowFlexUNet (Lizard)"] = {
                    k: info.get(k) for k in ("params", "trainable", "non_trainable", "error", "input_shape",
                                             "output_shape", "keras_version")}
                counts["TensorFlowFlexUNet (Lizard)"]["config"] = \
                    "projects/TensorFlowFlexUNet/Lizard/train_eval_infer.config (Lizard seed)"
                manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {manifest_path}; logs in {ns.logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
