"""The tiling facts an export measures and records in the model's metadata: the overlap at which tiles
agree with a whole-image pass (``measured_overlap``), and the memory the network's activations take
per input pixel (``activation_bytes``).  The runtime's defaults come from them
(:func:`flexunet.runtime.layout.resolve_layout`).

The overlap is measured, not derived from an architecture's receptive field, so it holds for any
network that converts to ONNX: on real images of the config's data (training images first), centre crops of two tiles a
side (reflect-padded when smaller), the exported FP32 model runs once over the whole crop and then
tiled (the model's tile, its size multiple, the cosine blend) with overlaps growing by the size
multiple; the smallest overlap whose tiled masks agree with the whole-image ones at
:data:`AGREEMENT_DICE` (pooled) and whose 99.9th percentile of ``|Δp|`` stays within
:data:`MAX_TAIL_DIFF` on every crop is recorded.  Two tiles a side put seams and tile corners
in every crop, more of them per pixel than the larger tiles ``fit`` uses, so the figure errs on the
safe side.  A fixed-size export is measured on a dynamic-size conversion of the same Keras model.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from flexunet.core.compare import compare
from flexunet.core.imageio import expand_inputs, read_image
from flexunet.core.modelinfo import ModelInfo

log = logging.getLogger("flexunet")

AGREEMENT_DICE = 0.9995   # pooled tiled vs whole mask dice on the measurement crops
MAX_TAIL_DIFF = 0.01      # 99.9th percentile of |Δp| on each crop
MEASURE_IMAGES = 2        # images of the config's data measured


def activation_bytes(onnx_path: Path, info: ModelInfo) -> int:
    """Bytes per input pixel of every intermediate tensor of the graph (float32 assumed), from ONNX
    shape inference at the model's tile size and batch 1: an upper bound of what an engine keeps
    (engines reuse buffers)."""
    import onnx
    from onnx import shape_inference

    model = onnx.load_model(str(onnx_path), load_external_data=False)
    th, tw = info.tile_size
    for dim, value in zip(model.graph.input[0].type.tensor_type.shape.dim, (1, th, tw, info.channels)):
        dim.ClearField("dim_param")
        dim.dim_value = value
    for out in model.graph.output:
        for dim in out.type.tensor_type.shape.dim:
            dim.ClearField("dim_param")
    inferred = shape_inference.infer_shapes(model)
    total = 0
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims):
            total += int(np.prod(dims)) * 4
    return int(np.ceil(total / (th * tw)))


def measurement_paths(cfg, count: int = MEASURE_IMAGES) -> list[Path]:
    """The first ``count`` images of the config's [train], else [eval], else [test] images (the
    training images first: held-out images stay unseen by every step of the export)."""
    for split in (cfg.train, cfg.eval, cfg.test) if cfg is not None else ():
        folder = split.image_datapath
        if folder is not None and Path(folder).is_dir():
            paths = expand_inputs([folder])
            if split.files:
                paths = [p for p in paths if p.name in set(split.files) or p.stem in set(split.files)]
            excluded = set(getattr(split, "exclude_files", None) or ())
            paths = [p for p in paths if p.name not in excluded and p.stem not in excluded]
            if paths:
                return paths[:count]
    return []


def measurement_crop(x: np.ndarray, side: int) -> np.ndarray:
    """The centre ``side x side`` crop of a pre-processed image, reflect-padded where it is smaller."""
    h, w = x.shape[:2]
    ch, cw = min(h, side), min(w, side)
    crop = x[(h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]
    if (ch, cw) != (side, side):
        crop = np.pad(crop, ((0, side - ch), (0, side - cw), (0, 0)), mode="symmetric")
    return np.ascontiguousarray(crop)


def _agreement(whole: list[np.ndarray], tiled: list[np.ndarray], threshold: float) -> dict:
    pooled = None
    tails = []
    for p, q in zip(whole, tiled):
        c = compare(p, q, threshold)
        pooled = c if pooled is None else pooled + c
        tails.append(float(np.quantile(np.abs(p - q), 0.999)))
    return {"dice": pooled.dice, "max_abs_diff": pooled.max_abs_diff, "tail_abs_diff": max(tails)}


def measure_overlap(predict, crops: list[np.ndarray], info: ModelInfo, tile: int,
                    batch_size: int = 2) -> tuple[int, list[dict]]:
    """The smallest overlap (a multiple of ``info.multiple``, at most half of ``tile``) whose tiles
    agree with the whole crops, and one row of figures per overlap tried; half the tile (the
    largest the runtime uses) when none agrees."""
    from flexunet.runtime.layout import Layout
    from flexunet.runtime.segment import predict_image

    step = info.multiple
    whole = [predict_image(c, predict, Layout(None, multiple=step), 1) for c in crops]
    rows = []
    candidates = list(range(step, tile // 2 + 1, step)) or [tile // 2]
    for overlap in candidates:
        layout = Layout((tile, tile), overlap, "cosine", step)
        tiled = [predict_image(c, predict, layout, batch_size) for c in crops]
        row = {"overlap": overlap, **_agreement(whole, tiled, info.threshold)}
        row["agrees"] = row["dice"] >= AGREEMENT_DICE and row["tail_abs_diff"] <= MAX_TAIL_DIFF
        rows.append(row)
        log.info(f"tiling overlap {overlap}: dice vs whole {row['dice']:.5f}, "
                 f"|Δp| p99.9 {row['tail_abs_diff']:.4f}")
        if row["agrees"]:
            return overlap, rows
    return candidates[-1], rows


def measure(onnx_path: Path, info: ModelInfo, cfg) -> dict:
    """Measure a dynamic-size FP32 ONNX model on the config's images (synthetic ones when there are
    none) and return the report entry; ``measured_overlap`` and ``activation_bytes`` of ``info``
    are set."""
    from flexunet.runtime.backends.onnx import OnnxBackend

    tile = min(info.tile_size)
    tile -= tile % info.multiple
    side = 2 * tile
    paths = measurement_paths(cfg)
    if paths:
        images, source = [info.preprocess(read_image(p)) for p in paths], [str(p) for p in paths]
    else:
        from flexunet.train.synth import render_sample

        rng = np.random.default_rng(0)
        images = [info.preprocess(render_sample(rng, side, side, "tiles")[0]) for _ in range(MEASURE_IMAGES)]
        source = "synthetic"
    crops = [measurement_crop(x.astype(np.float32), side) for x in images]
    with OnnxBackend(onnx_path, provider="cpu") as backend:
        overlap, rows = measure_overlap(backend.predict, crops, info, tile)
    info.measured_overlap = int(overlap)
    info.activation_bytes = activation_bytes(onnx_path, info)
    return {"measured_overlap": info.measured_overlap, "agrees": rows[-1]["agrees"], "tile": tile,
            "crop": side, "images": source, "criteria": {"dice": AGREEMENT_DICE, "tail_abs_diff": MAX_TAIL_DIFF},
            "tried": rows, "activation_bytes": info.activation_bytes}
