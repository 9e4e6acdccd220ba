#!/usr/bin/env python3
"""Make the seed reference models in this folder by running the seed API's own code.

Run by hand, never by the test suite.  The seed sources are NOT part of this repository: extract them
somewhere outside it and pass their ``src/`` folders.  Each architecture is built, compiled and
checkpointed by the seed's own classes in a subprocess of its own (``seed_worker.py``; the API and the
Lizard seed have modules of the same names), from the tiny ``<arch>.config`` files (``seed_configs.py``)
written beside this script, then:

* saved by ``ModelCheckpoint(save_best_only=True)`` as the seed's trainer does: the whole model
  (``save_weights_only=False``) and the weights only (``save_weights_only=True``; Keras 3 refuses the
  seed's ``best_model.h5`` name for that and wants ``*.weights.h5``, tf_keras accepts it).
  TensorflowUNet and TensorFlowFlexUNet are trained for one epoch on a few random images (their files
  carry the optimizer state); the others get seeded noise on their weights and BatchNormalization
  statistics and are saved by the callbacks' own end-of-epoch step without training, which keeps
  their files small;
* run on a fixed random uint8 image (a batch of one) fed as ``x / input_divisor`` (1 when the model has
  the seed's x/255 Lambda, else 255); x, input_divisor and the output go to ``<arch>.<keras>.npz``,
  every layer with its weights' names, shapes and dtypes to ``<arch>.<keras>.spec.json``;
* reloaded into a second seed-built model (``load_weights``) to check that the files reproduce it.
* DeepLabV3Plus, EfficientNetB7UNet and EfficientUNet have fixed-width backbones (files of 47-227 MB):
  no file is written; ``recipe.py`` gives every weight, and the seed model's output with them is
  recorded (the tests write the files themselves with ``h5_layouts.py``).

Keras 3 mode (default) neutralises ``tf.compat.v1.disable_eager_execution()`` (Keras 3 cannot save a
model in graph mode).  ``--tf-keras DIR`` adds a run under tf_keras (Keras 2 on TF 2.16+, installed in
DIR with ``pip install --target DIR --no-deps tf_keras==<TF version>``) with ``TF_USE_LEGACY_KERAS=1``:
the HDF5 layout of tf.keras 2.10-2.15 users.  The graph-mode call is neutralised there too: tf_keras
2.21's Adam cannot train in graph mode ("'Adam' object has no attribute 'get_updates'"); the HDF5
layout of the model weights does not depend on it.
Backbones (Keras Applications) are always built with ``weights=None`` and any download raises, except
EfficientNet: built as for ``weights="imagenet"`` (its extra weightless ImageNet-stddev scaling, as
every seed user has it) with the download and the weight loading neutralised.

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
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from seed_configs import (BATCH, CONFIGS, COUNT_EXTRA, COUNT_FOLDERS, FIXED_WIDTH, RECIPE_MODES, SEED,
                          SOURCE, WHOLE_ONLY)

HERE = Path(__file__).resolve().parent
MAX_H5_BYTES = 1_000_000       # larger files are not kept (their facts are still recorded)

# Main process: no TensorFlow here, only subprocesses and h5py; seed_worker.py runs the seed's code.


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
    if h5_rows is None and info.get("all_layers"):
        lines.append("# model.layers order ([weightless]): "
                     + ", ".join(n if w else f"[{n}]" for n, _, w in info["all_layers"]))
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


def _parser() -> argparse.ArgumentParser:
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
    return p


def _provenance(ns, manifest: dict) -> dict:
    old = manifest.get("provenance", {})
    command = "python tests/seed_models/make_seed_models.py " + " ".join(sys.argv[1:])
    reruns = old.get("partial_reruns", [old["partial_rerun"]] if "partial_rerun" in old else [])
    return {
        "api_repository": "sarah-antillia/Tensorflow-Image-Segmentation-API",
        "api_commit": ns.api_commit or old.get("api_commit", ""),
        "lizard_repository": "sarah-antillia/TensorFlow-FlexUNet-Image-Segmentation-Lizard",
        "lizard_commit": ns.lizard_commit or old.get("lizard_commit", ""),
        "command": old.get("command", "") if ns.only else command,
        "partial_reruns": reruns + [command] if ns.only else [],   # since the last full run
        "seed": SEED, "reference_batch": BATCH,
    }


def _keep_files(ns, arch: str, mode: str, info: dict, stage: Path, out: Path) -> dict:
    """The manifest entry of one worker run; its files copied to ``out`` (up to --max-h5-bytes)."""
    entry = {k: v for k, v in info.items() if k not in ("layers", "all_layers")}
    if "error" in info:
        return entry
    h5_rows = None
    files = {}
    for kind, name in info.get("files", {}).items():
        path = stage / name
        if kind == "whole":
            h5_rows = h5_layer_order(path)
        rec = {"file": name, "bytes": path.stat().st_size, "sha256": _sha256(path)}
        if path.suffix == ".h5":
            rec["layout"] = h5_layout(path)
        rec["kept"] = path.stat().st_size <= ns.max_h5_bytes
        if rec["kept"]:
            shutil.copy2(path, out / name)
        files[kind] = rec
    entry["files"] = files
    _write_layers_txt(out / f"{arch}.{mode}.layers.txt", info, h5_rows)
    entry["layers_file"] = f"{arch}.{mode}.layers.txt"
    return entry


def _make_all(ns, manifest: dict, save, stage: Path, out: Path) -> None:
    srcs = {"api": ns.api_src, "lizard": ns.lizard_src}
    models = manifest.setdefault("models", {})
    for arch in [a for a in CONFIGS if (not ns.only or a in ns.only.split(","))]:
        src = srcs[SOURCE[arch]]
        if not src:
            continue
        config = out / f"{arch}.config"
        config.write_text(CONFIGS[arch])
        modes = ["keras3"] + (["tfkeras2"] if ns.tf_keras else [])
        if arch in RECIPE_MODES:
            modes = [m for m in RECIPE_MODES[arch] if m == "keras3" or ns.tf_keras]
        for mode in modes:
            if arch in FIXED_WIDTH:
                info = _run_worker(ns, arch, config, src, mode, "recipe", stage)
            else:       # whole model and weights only, as ModelCheckpoint writes them
                info = _run_worker(ns, arch, config, src, mode, "make", stage, whole_only=arch in WHOLE_ONLY)
            models[f"{arch}.{mode}"] = _keep_files(ns, arch, mode, info, stage, out)
            save()


COUNT_KEYS = ("params", "trainable", "non_trainable", "error", "input_shape", "output_shape", "keras_version")


def _count_jobs(ns, projects: Path):
    """(manifest key, arch, config path, recorded config name, src, mode) of every count."""
    only = ns.only.split(",") if ns.only else None
    all_config = "Acute-Lymphoblastic-Leukemia/train_eval_infer.config"
    for arch, folder in COUNT_FOLDERS.items():
        if not only or arch in only:
            yield (arch, arch, projects / folder / all_config, f"projects/{folder}/{all_config}", ns.api_src,
                   "keras3")
    arch = "TensorflowEfficientUNet"        # builds only under tf.keras 2: its count from there
    if ns.tf_keras and (not only or arch in only):
        folder = COUNT_FOLDERS[arch]
        yield (f"{arch} (tf.keras 2)", arch, projects / folder / all_config, f"projects/{folder}/{all_config}",
               ns.api_src, "tfkeras2")
    for key, (arch, rel) in COUNT_EXTRA.items():
        if not only or arch in only:
            yield key, arch, projects / rel, f"projects/{rel}", ns.api_src, "keras3"
    if ns.lizard_src and (not only or "TensorFlowFlexUNet" in only):
        cfg = Path(ns.lizard_src).parent / "projects/TensorFlowFlexUNet/Lizard/train_eval_infer.config"
        yield ("TensorFlowFlexUNet (Lizard)", "TensorFlowFlexUNet", cfg,
               "projects/TensorFlowFlexUNet/Lizard/train_eval_infer.config (Lizard seed)", ns.lizard_src, "keras3")


def _count_all(ns, manifest: dict, save, stage: Path) -> None:
    projects = Path(ns.counts)
    manifest["config_census"] = count_configs(projects)
    counts = manifest.setdefault("all_config_param_counts", {})
    for key, arch, cfg, name, src, mode in _count_jobs(ns, projects):
        if not cfg.exists():
            continue
        info = _run_worker(ns, arch, cfg, src, mode, "count", stage)
        counts[key] = {k: info.get(k) for k in COUNT_KEYS}
        counts[key]["config"] = name
        save()


def main(argv=None) -> int:
    ns = _parser().parse_args(argv)
    if ns.worker:
        from seed_worker import worker
        worker(ns)
        return 0
    out = Path(ns.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix="seed-stage-"))
    ns.logs = str(stage / "logs")
    Path(ns.logs).mkdir()
    print(f"staging in {stage}")
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest["provenance"] = _provenance(ns, manifest)

    def save():
        manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")

    _make_all(ns, manifest, save, stage, out)
    if ns.counts:
        _count_all(ns, manifest, save, stage)
    save()
    print(f"wrote {manifest_path}; logs in {ns.logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
