"""How much weight rounding a model's masks tolerate: mask dice vs FP32 with perturbed weights.

    python benchmarks/weight_headroom.py --data-root ../shared/data \
        $(for p in projects/*/reduced/export/model.onnx; do echo --model $p; done)

When an INT8 model fails its parity check, this tells the quantiser's share from the model's:
the FP32 ONNX model is run on tiles of the held-out [test] images with only its convolution weights
changed, activations left in FP32, and each variant's masks are compared with the unchanged model's
(pooled mask dice, the parity maths of runtime.parity):

* ``fp16 weights``: every weight rounded to float16;
* ``int8 weights``: every weight rounded as the INT8 export rounds it (per output channel,
  symmetric, 127 levels, flexunet.export.int8_bias.int8_rounded) -- the INT8 model's weights without its
  activation rounding;
* ``int8 weights, bias-corrected``: the same, each layer's bias absorbing the mean error of its
  rounded weights on the calibration tiles (tiles of the [train] images; the export does this for
  the first convolution only) -- a fair best case for an INT8 model with these weights, whose
  activations are rounded too;
* per layer: only that layer's weights rounded to INT8, bias-corrected;
* ``INT8 model``: model.int8.onnx beside the model, if there, itself.

A model whose masks change by more than the parity tolerance with bias-corrected INT8 weights and
FP32 activations cannot be expected to pass as all-INT8, whatever the calibration (which sets only
the activations' ranges).  Writes
benchmarks/results/<name>.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_results  # noqa: E402

CONV_TYPES = ("Conv", "ConvTranspose")


def output_channels_first(w: np.ndarray, op_type: str) -> np.ndarray:
    """Conv weights are (out, in, kh, kw); ConvTranspose weights (in, out, kh, kw)."""
    return np.swapaxes(w, 0, 1) if op_type == "ConvTranspose" else w


def perturbed(model, change, only: str | None = None, input_means: dict | None = None):
    """A copy of ``model`` whose convolution weights (all, or node ``only``'s) are
    ``change(weights with output channels first)``.

    ``input_means`` (input tensor name -> per-channel mean, see :func:`input_means`): each changed
    layer's bias also absorbs the mean output error of its changed weights
    (:func:`flexunet.export.int8_bias.rounding_bias_shift`, the export's first-layer correction; for a
    ConvTranspose divided by its stride area, the factor by which its outputs outnumber its
    inputs)."""
    import copy

    from onnx import helper, numpy_helper

    from flexunet.export.int8_bias import rounding_bias_shift, subtract_from_bias

    model = copy.deepcopy(model)
    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if not (n.op_type in CONV_TYPES and n.input[1] in inits and (only is None or n.name == only)):
            continue
        w = output_channels_first(numpy_helper.to_array(inits[n.input[1]]), n.op_type).astype(np.float64)
        new = change(w)
        inits[n.input[1]].CopyFrom(numpy_helper.from_array(
            output_channels_first(new, n.op_type).astype(np.float32), n.input[1]))
        mean = (input_means or {}).get(n.input[0])
        if mean is None or mean.size != w.shape[1]:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if attrs.get("group", 1) != 1:
            continue
        share = 1.0
        if n.op_type == "ConvTranspose":
            share = 1.0 / float(np.prod(attrs.get("strides", [1, 1])))
        subtract_from_bias(model, n, share * rounding_bias_shift(w, new, mean))
    return model


def input_means(model, tiles: np.ndarray, batch: int = 4) -> dict:
    """Per-channel means of every convolution's (NCHW) input tensor on ``tiles`` (NHWC)."""
    import copy

    import onnx
    import onnxruntime as ort

    want = sorted({n.input[0] for n in model.graph.node if n.op_type in CONV_TYPES})
    probe = copy.deepcopy(model)
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in want if t not in outputs)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feed = session.get_inputs()[0].name
    sums: dict[str, np.ndarray] = {}
    for i in range(0, len(tiles), batch):
        for name, value in zip(names, session.run(None, {feed: tiles[i:i + batch]})):
            if name in want and value.ndim == 4:
                sums[name] = sums.get(name, 0) + value.astype(np.float64).sum(axis=(0, 2, 3)) / (
                    value.shape[2] * value.shape[3])
    return {k: v / len(tiles) for k, v in sums.items()}


def label_of(model: Path) -> str:
    """``projects/<name>/reduced/export/model.onnx`` -> ``<name>``; else the path."""
    parts = model.resolve().parts
    return parts[-4] if len(parts) >= 4 and parts[-2] == "export" else str(model)


def measure(model_path: Path, args) -> dict:
    """Every variant's mask dice vs ``model_path`` on tiles of its held-out images."""
    import onnx

    from flexunet.core.compare import compare
    from flexunet.core.config import CONFIG_FILENAME, load_config
    from flexunet.core.imageio import list_images
    from flexunet.export.int8_bias import int8_rounded
    from flexunet.export.onnx import read_info
    from flexunet.runtime.tiles import image_tiles
    from flexunet.export.verify import onnx_predict
    from flexunet.train.dataset import split_pairs

    info = read_info(model_path)
    calibration: list[Path] = []
    if args.images:
        images, where = list_images(args.images), str(args.images)
    else:
        cfg_path = args.config or next(
            (c for c in (Path(info.source_config_path) if info.source_config_path else None,
                         model_path.resolve().parent.parent / CONFIG_FILENAME) if c and c.is_file()), None)
        if cfg_path is None:
            raise SystemExit(f"error: {model_path}: its training config was not found; pass --config or --images")
        cfg = load_config(cfg_path, data_root=args.data_root)
        images, where = [p.image for p in split_pairs(cfg, "test")], f"[test] split of {cfg_path}"
        calibration = [p.image for p in split_pairs(cfg, "train")]
    tiles = image_tiles(images, info, args.tiles)
    model = onnx.load_model(str(model_path))
    means = input_means(model, image_tiles(calibration, info, args.calibration_count, augment=True)
                        if calibration else tiles)
    reference = onnx_predict(model_path, tiles)
    name = label_of(model_path)

    rows: list[dict] = []

    def score(what: str, candidate: Path, layer: str | None = None) -> None:
        a = compare(reference, onnx_predict(candidate, tiles), info.threshold)
        rows.append({"variant": what, "layer": layer, "dice": round(a.dice, 6),
                     "max_abs_diff": round(a.max_abs_diff, 6)})
        print(f"{name}: {what:28s} {layer or '':30s} dice {a.dice:.4f}  max |dp| {a.max_abs_diff:.3g}",
              flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "variant.onnx"

        def saved(variant) -> Path:
            onnx.save_model(variant, str(path))
            return path

        score("fp16 weights", saved(perturbed(model, lambda w: w.astype(np.float16).astype(np.float64))))
        score("int8 weights", saved(perturbed(model, int8_rounded)))
        score("int8 weights, bias-corrected", saved(perturbed(model, int8_rounded, input_means=means)))
        if not args.no_layers:
            for n in model.graph.node:
                if n.op_type in CONV_TYPES:
                    score("int8 weights, one layer", saved(perturbed(model, int8_rounded, n.name, means)), n.name)
    int8_path = model_path.with_name("model.int8.onnx")
    if int8_path.is_file():
        score("INT8 model", int8_path)
    return {"model": str(model_path), "label": name, "images": [str(p) for p in images], "where": where,
            "tiles": int(len(tiles)), "means_from": "its [train] images" if calibration
            else "the measured images", "rows": rows}


def markdown(results: list[dict]) -> str:
    variants = ["fp16 weights", "int8 weights", "int8 weights, bias-corrected", "INT8 model"]
    md = ["# Weight headroom: mask dice vs the unchanged FP32 model", "",
          "Tiles of each model's held-out images; only the weights are rounded (activations FP32) except "
          "in the INT8 model itself; bias correction from the mean inputs on "
          + "; ".join(sorted({f"tiles of {r['means_from']}" for r in results})) + ".", "",
          "| model | tiles | " + " | ".join(variants) + " | most sensitive layer (alone, bias-corrected) |",
          "|---|---|" + "---|" * (len(variants) + 1)]
    for r in results:
        whole = {x["variant"]: x["dice"] for x in r["rows"] if x["layer"] is None}
        layers = sorted((x for x in r["rows"] if x["layer"]), key=lambda x: x["dice"])
        worst = f"{layers[0]['layer']} {layers[0]['dice']:.4f}" if layers else "–"
        md.append(f"| {r['label']} | {r['tiles']} | "
                  + " | ".join(f"{whole[v]:.4f}" if v in whole else "–" for v in variants) + f" | {worst} |")
    for r in results:
        layers = sorted((x for x in r["rows"] if x["layer"]), key=lambda x: x["dice"])
        if layers:
            md += ["", f"{r['label']}: layers whose INT8 weights alone (bias-corrected) change the masks most:", "",
                   "| layer | dice vs FP32 |", "|---|---|"]
            md += [f"| {x['layer']} | {x['dice']:.4f} |" for x in layers[:8]]
    return "\n".join(md) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, action="append", required=True,
                    help="an exported FP32 model.onnx (repeatable); model.int8.onnx beside it is measured too")
    ap.add_argument("--config", type=Path, default=None,
                    help="training config for the [test] split (default: the one each model was exported from)")
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--images", type=Path, default=None, help="folder of images instead of the [test] split")
    ap.add_argument("--tiles", type=int, default=32, help="at most this many tiles of those images")
    ap.add_argument("--calibration-count", type=int, default=64,
                    help="tiles of the [train] images for the bias correction's input means")
    ap.add_argument("--no-layers", action="store_true", help="skip the per-layer figures")
    ap.add_argument("--name", default="weight_headroom")
    args = ap.parse_args(argv)
    results = [measure(m, args) for m in args.model]
    out = write_results(args.name, {"results": results}, markdown(results))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
