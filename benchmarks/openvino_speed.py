"""OpenVINO vs ONNX Runtime on the CPU: latency per tile and agreement with ONNX Runtime FP32 on real tiles.

    flexunet export projects/demo/models/best_model.keras -o /tmp/ov_demo --int8 \
        --calibration-images projects/demo/dataset/train/images
    python benchmarks/openvino_speed.py --onnx /tmp/ov_demo/model.onnx --int8 /tmp/ov_demo/model.int8.onnx \
        --images projects/demo/dataset/test/images --name openvino_speed_demo

Times, on the same real tiles of --images (cut at the model's tile size, or --tile for a
dynamic-size export) and in one process: ONNX Runtime FP32, OpenVINO FP32, OpenVINO BF16 (CPUs with
BF16 only) and, with --int8, ONNX Runtime and OpenVINO on the QDQ INT8 file.  The engines are called
in turn (:func:`benchmarks.common.timeit_interleaved`: warm-up excluded, one untimed call before each
timed one, every engine under the same machine load), ONNX Runtime without thread spinning so that
its idle threads do not compete with the engine timed next.  Reports per batch size the median
ms per tile and its ratio to ONNX Runtime FP32 (>1: faster), and each engine's max/mean |Δp| and
mask dice against ONNX Runtime FP32 on all tiles; writes benchmarks/results/<name>.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import percentiles, timeit_interleaved, write_results  # noqa: E402

REFERENCE = "ort_fp32"


def _parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", type=Path, required=True, help="the exported FP32 model.onnx")
    ap.add_argument("--int8", type=Path, default=None, help="its QDQ model.int8.onnx (optional)")
    ap.add_argument("--images", type=Path, nargs="+", required=True, help="image files or folders for the tiles")
    ap.add_argument("--tiles", type=int, default=32, help="real tiles for agreement (timing uses the first ones)")
    ap.add_argument("--tile", type=int, default=None, help="tile side for a dynamic-size export [default: the model's]")
    ap.add_argument("--batch-sizes", default="1,4")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="threads of every engine [default: all cores]")
    ap.add_argument("--throughput", action="store_true",
                    help="also time OpenVINO with PERFORMANCE_HINT=THROUGHPUT: a batch's tiles run one per "
                         "infer request of an AsyncInferQueue, the streams concurrently")
    ap.add_argument("--name", default="openvino_speed")
    return ap.parse_args(argv)


def _engines(args) -> dict[str, tuple[str, object]]:
    """name -> (description, backend) of every engine that can run here, ONNX Runtime FP32 first."""
    from flexunet.core.machine import cpu_has_bf16
    from flexunet.runtime.backends.onnx import OnnxBackend
    from flexunet.runtime.backends.openvino import OpenVinoBackend

    def ort(path):
        return OnnxBackend(path, provider="cpu", threads=args.threads, spinning=False)

    def ov(path, precision):
        return OpenVinoBackend(path, precision=precision, threads=args.threads)

    bf16 = cpu_has_bf16()
    specs = [("ort_fp32", "ONNX Runtime FP32", lambda: ort(args.onnx)),
             ("ov_fp32", "OpenVINO FP32", lambda: ov(args.onnx, "fp32")),
             ("ov_bf16", "OpenVINO BF16", lambda: ov(args.onnx, "bf16")) if bf16 else None]
    if args.int8:
        specs += [("ort_int8", "ONNX Runtime INT8 (QDQ)", lambda: ort(args.int8)),
                  ("ov_int8", "OpenVINO on the QDQ INT8 file (f32 hint)", lambda: ov(args.int8, "fp32")),
                  ("ov_int8_bf16", "OpenVINO on the QDQ INT8 file (bf16 hint)", lambda: ov(args.int8, "bf16"))
                  if bf16 else None]
    if args.throughput:
        best = "bf16" if bf16 else "fp32"
        specs.append((f"ov_{best}_throughput", f"OpenVINO {best.upper()}, THROUGHPUT hint, async queue",
                      lambda: Throughput(args.onnx, best, args.threads)))
    return {name: (label, make()) for name, label, make in filter(None, specs)}


class Throughput:
    """OpenVINO with ``PERFORMANCE_HINT=THROUGHPUT``: the tiles of a batch run one per infer request
    of an ``AsyncInferQueue`` (as many requests as OpenVINO says are optimal), the CPU streams
    concurrently; results in tile order."""

    def __init__(self, path: Path, precision: str, threads: int | None):
        import openvino as ov
        from flexunet.core.machine import cpu_threads
        from flexunet.runtime.backends.openvino import DEVICE, PRECISIONS, openvino_version

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": "THROUGHPUT",
                  "INFERENCE_NUM_THREADS": threads or cpu_threads()}
        self.compiled = core.compile_model(core.read_model(str(path)), DEVICE, config)
        requests = self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        streams = self.compiled.get_property("NUM_STREAMS")
        self.queue = ov.AsyncInferQueue(self.compiled, requests)
        self.name = f"openvino {openvino_version(ov)} {DEVICE} {precision} THROUGHPUT ({streams} streams, " \
                    f"{requests} requests)"

    def predict(self, batch):
        import numpy as np

        out = [None] * len(batch)

        def done(request, index):
            out[index] = request.get_output_tensor(0).data.copy()

        self.queue.set_callback(done)
        for i in range(len(batch)):
            self.queue.start_async({0: batch[i:i + 1]}, i)
        self.queue.wait_all()
        return np.concatenate(out)

    def close(self):
        self.queue = self.compiled = None


def _tiles(args):
    """(model info, the real pre-processed tiles)."""
    from flexunet.core.imageio import expand_inputs
    from flexunet.runtime.backends.onnx import OnnxBackend
    from flexunet.runtime.layout import Layout
    from flexunet.runtime.tiles import image_tiles

    with OnnxBackend(args.onnx, provider="cpu") as probe:
        info = probe.info
    layout = Layout((args.tile, args.tile), 0) if args.tile else None
    return info, image_tiles(expand_inputs(args.images), info, args.tiles, seed=12345, layout=layout)


def _agreement(engines: dict, tiles, threshold: float) -> dict[str, dict]:
    """Each engine's max/mean |Δp| and mask dice against ONNX Runtime FP32, on all tiles."""
    from flexunet.core.compare import compare
    from flexunet.export.verify import predict_batches

    reference = predict_batches(engines[REFERENCE][1].predict, tiles)
    return {name: compare(reference, predict_batches(backend.predict, tiles), threshold).to_dict()
            for name, (_, backend) in engines.items() if name != REFERENCE}


def _time_rows(args, engines: dict, tiles) -> list[dict]:
    """Per batch size and engine: latency percentiles, ms per tile and the ratio to ONNX Runtime FP32."""
    rows = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        batch = tiles[:bs]
        fns = {name: (lambda b=backend: b.predict(batch)) for name, (_, backend) in engines.items()}
        times = timeit_interleaved(fns, args.repeat, warmup=2)
        reference = percentiles(times[REFERENCE])["p50"]
        for name in engines:
            lat = percentiles(times[name])
            rows.append({"batch": bs, "engine": name, "ms_per_tile": 1e3 * lat["p50"] / bs,
                         "vs_ort_fp32": reference / lat["p50"], "latency_s": lat})
    return rows


def _markdown(args, engines: dict, tiles, rows: list[dict], agree: dict) -> str:
    sizes = sorted({r["batch"] for r in rows})
    tile = f"{tiles.shape[1]}x{tiles.shape[2]}"
    md = [f"# OpenVINO vs ONNX Runtime (CPU), {tile} tiles", "",
          f"model: `{args.onnx}`" + (f", INT8 `{args.int8}`" if args.int8 else "") + f"; {len(tiles)} real tiles "
          f"from {', '.join(map(str, args.images))}; engines called in turn, {args.repeat} timed calls each; "
          "ratio = ONNX Runtime FP32's median time / the engine's (>1: faster)", "",
          "| engine | name | " + " | ".join(f"batch {b} ms/tile | vs ORT FP32" for b in sizes)
          + " | max \\|Δp\\| vs ORT FP32 | mask dice vs ORT FP32 |",
          "|---|---|" + "---|---|" * len(sizes) + "---|---|"]
    for name, (label, backend) in engines.items():
        cells = []
        for b in sizes:
            r = next(r for r in rows if r["batch"] == b and r["engine"] == name)
            cells.append(f"{r['ms_per_tile']:.2f} | {r['vs_ort_fp32']:.2f}x")
        a = agree.get(name)
        tail = f"{a['max_abs_diff']:.2g} | {a['dice']:.4f}" if a else "reference | reference"
        md.append(f"| {label} | `{backend.name}` | " + " | ".join(cells) + f" | {tail} |")
    return "\n".join(md + [""])


def main(argv=None):
    args = _parse_args(argv)
    info, tiles = _tiles(args)
    engines = _engines(args)
    try:
        agree = _agreement(engines, tiles, info.threshold)
        rows = _time_rows(args, engines, tiles)
        text = _markdown(args, engines, tiles, rows, agree)
        names = {name: {"label": label, "backend": backend.name} for name, (label, backend) in engines.items()}
    finally:
        for _, backend in engines.values():
            backend.close()
    print(text)
    write_results(args.name, {"model": str(args.onnx), "int8_model": str(args.int8) if args.int8 else None,
                              "tile": f"{tiles.shape[1]}x{tiles.shape[2]}", "tiles": len(tiles),
                              "engines": names, "rows": rows, "vs_ort_fp32": agree}, text)


if __name__ == "__main__":
    main()
