"""INT8 vs FP32 ONNX on CPU: latency per 512x512 tile and mask dice against FP32 on real tiles.

    python benchmarks/int8_speed.py --model projects/Tiled-MultipleMyeloma/reduced/models/best_model.keras \
        --data-root ../shared/data --name int8_speed_vnni

Exports the model as `flexunet export --int8` does (FP32 + INT8 calibrated on tiles of the config's
[train] images, mixed-precision search included), then times both ONNX Runtime sessions on the same
real tiles of the held-out [test] images in one run (warm-up excluded, repeated, the models
called in turn so that each sees the same machine load, their sessions without thread spinning so
that they do not compete for the cores), and writes
benchmarks/results/<name>.{json,md}.  --images / --calibration-images override the two image sets.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import percentiles, timeit_interleaved, write_results  # noqa: E402


def _parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--images", type=Path, default=None,
                    help="folder of real images for the timing and dice tiles (default: the config's [test] split)")
    ap.add_argument("--calibration-images", type=Path, default=None,
                    help="folder of calibration images (default: the config's [train] split)")
    ap.add_argument("--int8-target-dice", type=float, default=0.99)
    ap.add_argument("--calibration-count", type=int, default=64)
    ap.add_argument("--tiles", type=int, default=32, help="real tiles for timing and dice")
    ap.add_argument("--batch-sizes", default="1,4")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--int8-weights", choices=["auto", "7", "8"], default="auto")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                    help="also time an INT8 variant made by flexunet.export.int8_quantize.quantize_int8 "
                         "with these keyword arguments, e.g. first_fp32:float_first_conv=1 or plain:rewrite=0 "
                         "(repeatable)")
    ap.add_argument("--name", default="int8_speed")
    return ap.parse_args(argv)


def _image_sets(args):
    """(config path, data root, calibration images, timing images, and a description of each)."""
    from flexunet.core.config import load_config
    from flexunet.core.imageio import list_images
    from flexunet.export.exporter import find_config
    from flexunet.train.dataset import split_pairs

    cfg_path, data_root = find_config(args.model, args.config, args.data_root)
    cfg = load_config(cfg_path, data_root=data_root)
    calib_images = args.calibration_images or [p.image for p in split_pairs(cfg, "train")]
    test_images = list_images(args.images) if args.images else [p.image for p in split_pairs(cfg, "test")]
    calib_where = args.calibration_images or f"{len(calib_images)} [train] images"
    test_where = args.images or f"{len(test_images)} held-out [test] images"
    return cfg_path, data_root, calib_images, test_images, calib_where, test_where


def _session(path: Path, threads):
    """An ONNX Runtime CPU session without thread spinning (sessions timed in turn, see timeit_interleaved)."""
    from flexunet.runtime.backends.onnx import OnnxBackend

    return OnnxBackend(path, provider="cpu", threads=threads, spinning=False)


def _variants(args, out: Path, info, calib_images, bits: int, p32, tiles) -> dict:
    """The --variant INT8 models: their options, sessions and agreement with FP32."""
    from flexunet.core.compare import compare
    from flexunet.export.int8_quantize import quantize_int8
    from flexunet.export.tiles import calibration_tiles
    from flexunet.export.verify import predict_batches

    if not args.variant:
        return {}
    calib = calibration_tiles(calib_images, info, args.calibration_count)
    variants = {}
    for spec in args.variant:
        vname, kw = _variant(spec)
        path = out / f"model.{vname}.onnx"
        quantize_int8(out / "model.onnx", path, calib, info.input_name, **{"weight_bits": bits, **kw})
        backend = _session(path, args.threads)
        va = compare(p32, predict_batches(backend.predict, tiles), info.threshold)
        variants[vname] = {"options": kw, "backend": backend, "vs_fp32": va.to_dict()}
    return variants


def _time_rows(args, fp32, int8, variants: dict, tiles) -> list[dict]:
    """Per batch size: FP32, INT8 (and variant) latency percentiles, called in turn."""
    rows = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        batch = tiles[:bs]
        fns = {"fp32": lambda: fp32.predict(batch), "int8": lambda: int8.predict(batch),
               **{k: (lambda b=v["backend"]: b.predict(batch)) for k, v in variants.items()}}
        times = timeit_interleaved(fns, args.repeat, warmup=2)
        l32, l8 = percentiles(times["fp32"]), percentiles(times["int8"])
        rows.append({"batch": bs, "fp32_ms_per_tile": 1e3 * l32["p50"] / bs,
                     "int8_ms_per_tile": 1e3 * l8["p50"] / bs, "speedup": l32["p50"] / l8["p50"],
                     "fp32_latency_s": l32, "int8_latency_s": l8})
        for k, v in variants.items():
            lv = percentiles(times[k])
            v.setdefault("rows", []).append({"batch": bs, "ms_per_tile": 1e3 * lv["p50"] / bs,
                                             "speedup": l32["p50"] / lv["p50"], "latency_s": lv})
    return rows


def _markdown(args, report: dict, tiles, rows, agree, variants, calib_where, test_where) -> str:
    int8 = report["artifacts"]["model.int8.onnx"]
    tile = f"{tiles.shape[1]}x{tiles.shape[2]}"
    md = [f"# INT8 vs FP32 ONNX Runtime (CPU), {tile} tiles", "",
          f"model: `{args.model}` ({report['parameters']:,} parameters); tiles: {len(tiles)} real tiles from "
          f"{test_where}; INT8 calibrated on {args.calibration_count} tiles of {calib_where}, "
          f"{int8['weight_bits']}-bit weights; CPU VNNI: {int8['cpu_has_vnni']}", "",
          "| batch | FP32 ms/tile | INT8 ms/tile | speed-up |", "|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['batch']} | {r['fp32_ms_per_tile']:.1f} | {r['int8_ms_per_tile']:.1f} | {r['speedup']:.2f}x |")
    md += ["", f"INT8 vs FP32 on the same tiles: mask dice {agree.dice:.4f}, max |Δp| {agree.max_abs_diff:.3f}, "
               f"mean |Δp| {agree.mean_abs_diff:.4f}", ""]
    tuning = int8.get("tuning")
    if tuning:
        md += [f"Mixed-precision search (target dice {tuning['target_dice']} on {tuning['check_tiles']} held-out "
               f"calibration tiles): all-INT8 dice {tuning['dice_all_int8']:.4f}; "
               f"{len(tuning['float_nodes'])} of {tuning['candidates']} convolutions kept in FP32 "
               f"({', '.join(tuning['float_nodes']) or 'none'}; {100 * tuning['float_share']:.1f}% of "
               f"multiply-adds, limit {100 * tuning['max_float_share']:.0f}%) -> dice {tuning['dice']:.4f}; "
               f"{tuning['variants_tried']} variants in {tuning['seconds']:.0f} s.", ""]
    if variants:
        md += ["INT8 variants (`quantize_int8` options; speed-up vs the FP32 time of the same batch row):", "",
               "| variant | batch | ms/tile | speed-up | mask dice vs FP32 |", "|---|---|---|---|---|"]
        for vname, v in variants.items():
            opts = ", ".join(f"{k}={val}" for k, val in v["options"].items())
            for r in v["rows"]:
                md.append(f"| {vname} ({opts}) | {r['batch']} | {r['ms_per_tile']:.1f} | {r['speedup']:.2f}x "
                          f"| {v['vs_fp32']['dice']:.4f} |")
        md.append("")
    return "\n".join(md)


def main(argv=None):
    args = _parse_args(argv)
    from flexunet.core.console import import_tensorflow_quietly

    import_tensorflow_quietly()
    from flexunet.core.compare import compare
    from flexunet.export.exporter import ExportOptions, run_export
    from flexunet.export.onnx import read_info
    from flexunet.export.verify import predict_batches
    from flexunet.runtime.tiles import image_tiles

    cfg_path, data_root, calib_images, test_images, calib_where, test_where = _image_sets(args)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        report = run_export(args.model, ExportOptions(
            out_dir=out, config=cfg_path, data_root=data_root, int8=True,
            calibration_images=calib_images, calibration_count=args.calibration_count, int8_min_dice=0.0,
            int8_weights=args.int8_weights, int8_target_dice=args.int8_target_dice))
        info = read_info(out / "model.onnx")
        tiles = image_tiles(test_images, info, args.tiles, seed=12345)
        fp32, int8 = _session(out / "model.onnx", args.threads), _session(out / "model.int8.onnx", args.threads)
        p32 = predict_batches(fp32.predict, tiles)
        agree = compare(p32, predict_batches(int8.predict, tiles), info.threshold)
        bits = report["artifacts"]["model.int8.onnx"]["weight_bits"]
        variants = _variants(args, out, info, calib_images, bits, p32, tiles)
        rows = _time_rows(args, fp32, int8, variants, tiles)
        for v in variants.values():
            del v["backend"]
        sizes = {k: v.get("bytes") for k, v in report["artifacts"].items()}

    text = _markdown(args, report, tiles, rows, agree, variants, calib_where, test_where)
    print(text)
    write_results(args.name, {"model": str(args.model), "tile": f"{tiles.shape[1]}x{tiles.shape[2]}",
                              "tiles": len(tiles), "rows": rows, "int8_vs_fp32": agree.to_dict(),
                              "sizes_bytes": sizes, "int8_tuning": report["artifacts"]["model.int8.onnx"].get("tuning"),
                              "calibration_images": str(calib_where), "test_images": str(test_where),
                              "int8_variants": variants}, text)


def _variant(spec: str) -> tuple[str, dict]:
    """``NAME:KEY=VALUE,...`` -> (NAME, keyword arguments); values 0/1/true/false/integers/strings."""
    name, _, opts = spec.partition(":")
    kw = {}
    for item in filter(None, opts.split(",")):
        key, _, value = item.partition("=")
        low = value.lower()
        kw[key] = {"true": True, "false": False}.get(low, int(value) if value.lstrip("-").isdigit() else value)
    return name, kw


if __name__ == "__main__":
    main()
