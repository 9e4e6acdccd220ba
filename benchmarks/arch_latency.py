"""512x512 tile latency of every architecture flexunet builds, Keras vs its ONNX FP32 export.

    python benchmarks/arch_latency.py [--mirror GIT_DIR] [--repeat 5] [--name arch_latency]
                                      [--only ARCH[,ARCH...]]

Each architecture is built (random weights: latency does not depend on them) from the ``[model]``
section of the seed API's ``projects/<folder>/Acute-Lymphoblastic-Leukemia/train_eval_infer.config``
(taken from the API's git directory, as ``seed_configs.py`` does), with the input set to 512x512,
converted by flexunet's exporter code (``export.onnx.convert``), and timed at batch 1: Keras
``predict_on_batch`` and ONNX Runtime (CPU, all cores) in turn on the same tile, median of
``--repeat`` calls after a warm-up. It also reports the ONNX model's max |Δp| against Keras on that
tile. Results: ``benchmarks/results/<name>.{json,md}``. ``--only`` measures the architectures named and
keeps the other rows of an existing ``<name>.json`` (each row records the date it was measured and the
machine's load average then). The seed's ``TensorflowU2Net`` folder's config names TensorflowUNet3Plus
(the seed's U2Net class builds from it anyway): its row builds TensorflowU2Net from it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import RESULTS, timeit_interleaved, write_results

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_configs import MIRROR, extract  # noqa: E402

FOLDERS = {  # seed API project folder -> the architecture its ALL config builds
    "TensorflowSlightlyFlexibleUNet": "TensorflowUNet", "TensorflowAttentionUNet": "TensorflowAttentionUNet",
    "TensorflowUNet3Plus": "TensorflowUNet3Plus", "TensorflowMultiResUNet": "TensorflowMultiResUNet",
    "TensorflowSharpUNet": "TensorflowSharpUNet", "TensorflowDeepLabV3Plus": "TensorflowDeepLabV3Plus",
    "TensorflowEfficientUNet": "TensorflowEfficientUNet",
    "TensorflowEfficientNetB7UNet": "TensorflowEfficientNetB7UNet", "TensorflowU2Net": "TensorflowU2Net",
}
NOTE = """
Random weights and raw 0..255 inputs: the networks without an x/255 inside (AttentionUNet, UNet3Plus,
SharpUNet, DeepLabV3Plus, U2Net, the EfficientNets' own scaling aside) run with large untrained activations
here, so the max |Δp| of this table is not an export figure; exports of trained models are verified at
|Δp| ≤ 1e-4 (measured 1.2e-7 to 3.6e-6 in the tests). Bilinear upsampling (AttentionUNet, UNet3Plus, U2Net)
is one weightless layer that exports to an ONNX Resize (train/architectures/bilinear.py).
"""
SIDE = 512


def measure_one(config: Path, repeat: int, arch: str) -> dict:
    from flexunet.architectures import build
    from flexunet.core.config import load_config
    from flexunet.core.modelinfo import ModelInfo
    from flexunet.export.onnx import convert
    from flexunet.runtime.backends import load_backend

    cfg = load_config(config)
    cfg.model = dataclasses.replace(cfg.model, model=arch, image_height=SIDE, image_width=SIDE)
    model = build(cfg)
    info = ModelInfo.from_config(cfg)
    x = np.random.default_rng(0).uniform(0, 255, (1, SIDE, SIDE, cfg.model.image_channels)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = convert(model, Path(tmp) / "model.onnx", info)
        ort = load_backend(onnx_path, backend="onnxruntime")
        diff = float(np.abs(ort.predict(x) - np.asarray(model.predict_on_batch(x))).max())
        times = timeit_interleaved({"keras": lambda: model.predict_on_batch(x), "onnx": lambda: ort.predict(x)},
                                   repeat=repeat, warmup=1, settle=0)
    return {"architecture": cfg.model.model, "parameters": int(model.count_params()),
            "keras_ms": 1000 * statistics.median(times["keras"]), "onnx_ms": 1000 * statistics.median(times["onnx"]),
            "onnx_max_abs_diff": diff, "measured": time.strftime("%Y-%m-%d %H:%M"),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def markdown(rows: list[dict]) -> str:
    lines = [f"# {SIDE}x{SIDE} tile latency, batch 1 (median; random weights)", "",
             "| architecture | parameters | Keras ms | ONNX Runtime FP32 ms | ONNX/Keras speed | ONNX max \\|Δp\\| "
             "| measured (load avg) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['architecture']} | | | | | {r['error']} | |")
            continue
        lines.append(f"| {r['architecture']} | {r['parameters']:,} | {r['keras_ms']:.0f} | {r['onnx_ms']:.0f} | "
                     f"{r['keras_ms'] / r['onnx_ms']:.2f}x | {r['onnx_max_abs_diff']:.1e} | "
                     f"{r.get('measured', 'earlier')} ({r.get('load_average_1min', '?')}) |")
    return "\n".join(lines) + "\n" + NOTE


def merged(name: str, rows: list[dict]) -> list[dict]:
    """``rows`` in place of the same architectures' rows of an existing ``<name>.json``, in FOLDERS order."""
    path = RESULTS / f"{name}.json"
    data = json.loads(path.read_text()) if path.exists() else {"rows": []}
    old = [{"measured": data.get("date", "earlier")[:16], **r} for r in data["rows"]]
    by_arch = {r["architecture"]: r for r in old} | {r["architecture"]: r for r in rows}
    return [by_arch[a] for a in FOLDERS.values() if a in by_arch]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mirror", type=Path, default=MIRROR, help="the seed API's git directory")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--name", default="arch_latency")
    ap.add_argument("--only", default="", help="comma-separated architectures to measure (others kept from <name>.json)")
    args = ap.parse_args(argv)
    only = {a.strip() for a in args.only.split(",") if a.strip()}
    if only - set(FOLDERS.values()):
        ap.error(f"--only: unknown architecture(s) {sorted(only - set(FOLDERS.values()))}; "
                 f"choose from {list(FOLDERS.values())}")
    from flexunet.core.console import import_tensorflow_quietly

    import_tensorflow_quietly()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        extract(args.mirror, Path(tmp))
        for folder, arch in FOLDERS.items():
            if only and arch not in only:
                continue
            config = Path(tmp) / "projects" / folder / "Acute-Lymphoblastic-Leukemia" / "train_eval_infer.config"
            try:
                row = measure_one(config, args.repeat, arch)
            except Exception as exc:  # noqa: BLE001 -- a row says what failed; the others still run
                row = {"architecture": arch, "error": str(exc).splitlines()[0][:160]}
            print(row, flush=True)
            rows.append(row)
    rows = merged(args.name, rows) if only else rows
    write_results(args.name, {"side": SIDE, "rows": rows}, markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
