"""`flexunet export` of the seeds' standard 8-level UNet (125 M parameters): peak RSS and time.

    python benchmarks/export_seed_model.py [--data-root ../shared/data] [--verify-tiles 4]

Builds the model of projects/Tiled-MultipleMyeloma/train_eval_infer.config (512x512, base_filters 16,
base_kernels (9,9), 8 levels; random weights, fixed seed), saves it as .keras, then runs the real
command (`flexunet export ... -o DIR`, verification against Keras included) in a child process whose
resident memory (children included) is polled every 50 ms.  Target: peak <= 8 GB, <= 3 minutes on
2 cores.  Writes benchmarks/results/export_seed_model.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import write_results  # noqa: E402

CONFIG = REPO / "projects" / "Tiled-MultipleMyeloma" / "train_eval_infer.config"


def _save_model(path: Path) -> int:
    from flexunet.core.console import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras

    from flexunet.core.config import load_config
    from flexunet.train.trainer import build_model, compile_model

    keras.utils.set_random_seed(0)
    cfg = load_config(CONFIG)
    model = build_model(cfg)
    compile_model(cfg, model)
    model.save(path)
    return int(model.count_params())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=None, help="real verification tiles (else synthetic)")
    ap.add_argument("--rss-limit-gb", type=float, default=20.0, help="kill the export above this")
    args = ap.parse_args(argv)
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "seed8.keras"
        params = _save_model(model)
        cmd = [sys.executable, "-m", "flexunet", "export", str(model), "-o", str(tmp / "out"),
               "--config", str(CONFIG)]
        if args.data_root:
            cmd += ["--data-root", str(args.data_root)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ps = psutil.Process(proc.pid)
        peak, killed = 0, False
        while proc.poll() is None:
            try:
                rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            except psutil.Error:
                rss = 0
            peak = max(peak, rss)
            if rss > args.rss_limit_gb * 2**30:
                proc.kill()
                killed = True
            time.sleep(0.05)
        out, err = proc.communicate()
        wall = time.perf_counter() - t0
        report = json.loads((tmp / "out" / "export_report.json").read_text()) if proc.returncode == 0 else {}
    res = {"parameters": params, "returncode": proc.returncode, "killed": killed, "peak_rss_bytes": peak,
           "wall_seconds": wall, "stdout": out[-2000:], "stderr": err[-2000:],
           "export_report": {k: report.get(k) for k in ("artifacts", "verification_tiles", "total_seconds")}}
    conv = report.get("artifacts", {}).get("model.onnx", {})
    md = (f"# `flexunet export` of the 8-level seed UNet ({params:,} parameters)\n\n"
          f"| measure | value |\n|---|---|\n"
          f"| peak RSS (whole command, Keras load + conversion + verification) | {peak / 2**30:.2f} GiB |\n"
          f"| wall time (whole command) | {wall:.0f} s |\n"
          f"| conversion alone | {conv.get('seconds', float('nan'))} s |\n"
          f"| ONNX size | {conv.get('bytes', 0) / 1e6:.0f} MB |\n"
          f"| vs Keras: max abs diff, dice | {conv.get('vs_keras', {}).get('max_abs_diff')}, "
          f"{conv.get('vs_keras', {}).get('dice')} |\n"
          f"| exit code | {proc.returncode} |\n")
    print(md)
    if proc.returncode != 0:
        print(err, file=sys.stderr)
    write_results("export_seed_model", res, md)


if __name__ == "__main__":
    main()
