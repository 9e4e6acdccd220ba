"""INT8 vs FP32 ONNX on CPU: latency per 512x512 tile and mask dice against FP32 on real tiles.

    python benchmarks/int8_speed.py --model projects/Tiled-MultipleMyeloma/reduced/models/best_model.keras \
        --data-root ../shared/data --images ../shared/data/Tiled-MultipleMyeloma/images

Exports the model (FP32 + INT8 calibrated on tiles of --images), then times both ONNX Runtime
sessions on the same real tiles in one run (warm-up excluded, repeated), and writes
benchmarks/results/int8_speed.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import percentiles, timeit, write_results  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--images", type=Path, required=True, help="real images: calibration and test tiles")
    ap.add_argument("--calibration-count", type=int, default=64)
    ap.add_argument("--tiles", type=int, default=32, help="real tiles for timing and dice")
    ap.add_argument("--batch-sizes", default="1,4")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--int8-weights", choices=["auto", "7", "8"], default="auto")
    ap.add_argument("--name", default="int8_speed")
    args = ap.parse_args(argv)

    from runtime.cli import import_tensorflow_quietly

    import_tensorflow_quietly()
    from export import onnx as ox
    from export.exporter import ExportOptions, run_export
    from export.tiles import tiles_from_images
    from runtime.imageio import list_images

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        report = run_export(args.model, ExportOptions(
            out_dir=out, config=args.config, data_root=args.data_root, int8=True,
            calibration_images=args.images, calibration_count=args.calibration_count, int8_min_dice=0.0,
            int8_weights=args.int8_weights))
        info = ox.read_info(out / "model.onnx")
        # timing/dice tiles: a different draw (seed) from the calibration tiles
        tiles = tiles_from_images(list_images(args.images), info, args.tiles, seed=12345)
        from runtime.backends.onnx import OnnxBackend

        fp32 = OnnxBackend(out / "model.onnx", provider="cpu", threads=args.threads)
        int8 = OnnxBackend(out / "model.int8.onnx", provider="cpu", threads=args.threads)
        p32 = ox.predict_batches(fp32.predict, tiles)
        p8 = ox.predict_batches(int8.predict, tiles)
        agree = ox.agreement(p32, p8, info.threshold)
        rows = []
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            batch = tiles[:bs]
            t32 = timeit(lambda: fp32.predict(batch), args.repeat, warmup=2)
            t8 = timeit(lambda: int8.predict(batch), args.repeat, warmup=2)
            l32, l8 = percentiles(t32), percentiles(t8)
            rows.append({"batch": bs, "fp32_ms_per_tile": 1e3 * l32["p50"] / bs,
                         "int8_ms_per_tile": 1e3 * l8["p50"] / bs, "speedup": l32["p50"] / l8["p50"],
                         "fp32_latency_s": l32, "int8_latency_s": l8})
        sizes = {k: v.get("bytes") for k, v in report["artifacts"].items()}

    tile = f"{tiles.shape[1]}x{tiles.shape[2]}"
    md = [f"# INT8 vs FP32 ONNX Runtime (CPU), {tile} tiles", "",
          f"model: `{args.model}` ({report['parameters']:,} parameters); tiles: {len(tiles)} real tiles from "
          f"`{args.images}`; INT8 calibrated on {args.calibration_count} other tiles, "
          f"{report['artifacts']['model.int8.onnx']['weight_bits']}-bit weights; CPU VNNI: "
          f"{report['artifacts']['model.int8.onnx']['cpu_has_vnni']}", "",
          "| batch | FP32 ms/tile | INT8 ms/tile | speed-up |", "|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['batch']} | {r['fp32_ms_per_tile']:.1f} | {r['int8_ms_per_tile']:.1f} | {r['speedup']:.2f}x |")
    md += ["", f"INT8 vs FP32 on the same tiles: mask dice {agree.dice:.4f}, max |Δp| {agree.max_abs_diff:.3f}, "
               f"mean |Δp| {agree.mean_abs_diff:.4f}", ""]
    text = "\n".join(md)
    print(text)
    write_results(args.name, {"model": str(args.model), "tile": tile, "tiles": len(tiles), "rows": rows,
                              "int8_vs_fp32": agree.to_dict(), "sizes_bytes": sizes}, text)


if __name__ == "__main__":
    main()
