#!/usr/bin/env python
"""Peak memory and time of exporting the seed UNet from Keras to ONNX, and a low-memory exporter.

The seeds' standard model (512x512x3, 1 class, base_filters 16, base_kernels (9, 9), 8 levels)
has 124,996,849 parameters (~500 MB float32). tf2onnx 1.17 (TF 2.21, Keras 3) needs ~205 bytes of
RAM per parameter above the Keras model to convert it (measured at 5-7 levels: 2.3 GB at 6 levels,
6.9 GB at 7, so ~26 GB at 8), i.e. ~50 float32 copies of the weights, because the weights travel as
graph constants through every stage of its pipeline: TF freezing (~45 B/param) and grappler
(~40-50 B/param), then ``optimizer.optimize_graph``, which ``copy.deepcopy``s the whole graph,
weights included, before each of its 12 passes per iteration (~12 B/param each); those copies are
reference cycles that CPython's cyclic collector rarely reclaims during the conversion, so they
pile up (~150-165 B/param).

``export_keras_to_onnx`` (flexunet.export.keras2onnx) converts the same network at the right
depth: the converter only needs the *structure* and the *shapes* of the weights, never their
values. It traces the model with every variable as a graph input (``keras.Model.stateless_call``),
lets tf2onnx convert that small weight-free graph, then binds the real Keras weights as ONNX
initializers one tensor at a time, replaying the weight-only subgraph tf2onnx emitted (HWIO->OIHW
``Transpose`` of kernels, ``Reshape``/``Squeeze`` of biases, BatchNorm arithmetic) in numpy and
streaming each result to the model (or to an external-data file when the model would exceed
protobuf's 2 GB limit).

Usage (every measurement runs in a fresh subprocess with a watchdog)::

    python benchmarks/export_memory.py --method tf2onnx-staged --levels 4 5 6
    python benchmarks/export_memory.py --method fixed --levels 4 5 6 7 8 --verify
    python benchmarks/export_memory.py --check-variants       # small models, all layer variants

Results: a table on stdout and ``benchmarks/results/export_memory.json`` (runs are merged by
method, levels and variant, so several invocations accumulate).  The child process is
``export_memory_worker.py``, the baselines are in ``export_memory_baselines.py``, the summaries and
tables in ``export_memory_report.py``.

Methods:
    tf2onnx          ``tf2onnx.convert.from_keras(model, ..., output_path=...)`` as one call.
    tf2onnx-staged   the same pipeline called step by step (one stage per internal step) to
                     attribute memory; keeps alive exactly what ``from_keras`` keeps alive.
    tf2onnx-large    ``from_keras(..., large_model=True)`` (zip output); its ``numpy.product``
                     call is served by a proxy installed in ``tf2onnx.graph`` only during the call.
    fixed            ``export_keras_to_onnx`` (flexunet.export.keras2onnx).

Memory is measured two ways: the parent polls the child's RSS (psutil, children included) every
50 ms and kills it above ``--rss-limit-gb`` (default 10) or after ``--time-limit`` seconds; the
child reads the kernel's exact per-stage high-water mark (``VmHWM``, reset per stage through
``/proc/self/clear_refs``). Timings on a shared 2-core machine are noisy.
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

RESULTS = os.path.join(REPO, "benchmarks", "results", "export_memory.json")
WORKER = os.path.join(REPO, "benchmarks", "export_memory_worker.py")

# The seeds' standard model; only num_layers varies in the level sweep.
STANDARD = dict(image_height=512, image_width=512, image_channels=3, num_classes=1,
                base_filters=16, base_kernels=(9, 9), num_layers=8, dilation=(1, 1),
                normalization=False, input_normalize=True)

# Small models covering every layer variant of build_unet (checked with --check-variants).
VARIANTS = {
    "sigmoid": dict(),
    "softmax3": dict(num_classes=3),
    "batchnorm": dict(normalization=True),
    "dilation3": dict(dilation=(3, 3)),
    "all": dict(num_classes=4, normalization=True, dilation=(2, 2), base_kernels=(7, 7),
                input_normalize=False),
    "dynamic_size": dict(image_height=None, image_width=None, num_classes=2, normalization=True),
    "external_data": dict(num_classes=3, normalization=True),
    "static_batch": dict(),
}
VARIANT_BASE = dict(image_height=128, image_width=128, image_channels=3, num_classes=1,
                    base_filters=8, base_kernels=(5, 5), num_layers=4, dilation=(1, 1),
                    normalization=False, input_normalize=True)

from benchmarks.export_memory_baselines import EXPORTERS  # noqa: E402
from benchmarks.export_memory_report import (  # noqa: E402
    GB,
    _summarize,
    print_run,
    print_table,
    save_results,
)


# ---------------------------------------------------------------------------------------------
# Measurement: parent side (fresh subprocess, 50 ms psutil poll, watchdog)
# ---------------------------------------------------------------------------------------------

def _tree_rss(proc):
    import psutil

    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _spawn(spec, workdir):
    """Start the worker on ``spec`` in its own process group; returns it, the events pipe's read
    end and its log file."""
    import subprocess

    read_fd, write_fd = os.pipe()
    log_path = os.path.join(workdir, "worker.log")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log_file:
        child = subprocess.Popen(
            [sys.executable, WORKER, json.dumps(spec), str(write_fd)],
            pass_fds=(write_fd,), stdout=log_file, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, cwd=REPO)
    os.close(write_fd)
    return child, read_fd, log_path


def _listen(read_fd):
    """Follow the worker's events in a thread: the current stage, the parameter count, the result;
    ``state["done"]`` is set when the pipe closes."""
    state = dict(stage="(startup)", result=None, params=None, done=threading.Event())

    def reader():
        with os.fdopen(read_fd) as events:
            for line in events:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event["event"] == "start":
                    state["stage"] = event["stage"]
                elif event["event"] == "params":
                    state["params"] = event["params"]
                elif event["event"] == "result":
                    state["result"] = event["result"]
        state["done"].set()

    threading.Thread(target=reader, daemon=True).start()
    return state


def _watch(child, state, rss_limit, time_limit, interval):
    """Poll the worker's RSS until it ends, killing it above the limits; returns the peak, the
    peak per stage, why it was killed (None), the samples and the wall time."""
    import signal

    import psutil

    proc = psutil.Process(child.pid)
    t0 = time.perf_counter()
    peak, killed, samples, stage_peaks = 0, None, 0, {}
    while child.poll() is None:
        rss = _tree_rss(proc)
        samples += 1
        peak = max(peak, rss)
        name = state["stage"]
        stage_peaks[name] = max(stage_peaks.get(name, 0), rss)
        elapsed = time.perf_counter() - t0
        if rss > rss_limit or elapsed > time_limit:
            killed = (f"watchdog: RSS {rss / GB:.2f} GB > {rss_limit / GB:.1f} GB"
                      if rss > rss_limit else f"watchdog: time {elapsed:.0f} s > {time_limit} s")
            killed += f" during stage {name!r}"
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            break
        time.sleep(interval)
    return peak, stage_peaks, killed, samples, time.perf_counter() - t0


def measure(method, config, *, opset=17, dynamic_batch=True, dynamic_size=False,
            external_data=None, check=True, verify=False, verify_batch=1, verify_size=None,
            randomize_bn=False, inline_max_bytes=64 * 1024, rss_limit=10 * GB, time_limit=900,
            interval=0.05, workdir=None):
    """Run one export in a fresh subprocess; return its measurement record.

    The parent polls the child's RSS (children included) every ``interval`` s, attributes the
    samples to the stage the child reports, and kills the child (its process group) when RSS
    exceeds ``rss_limit`` bytes or the run exceeds ``time_limit`` seconds.
    """
    own_dir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="export_memory_")
    if verify_size is None:
        verify_size = (config["image_height"] or 128, config["image_width"] or 128)
    spec = dict(method=method, config=config, opset=opset, dynamic_batch=dynamic_batch,
                dynamic_size=dynamic_size, external_data=external_data, check=check,
                verify=verify, verify_batch=verify_batch, verify_size=list(verify_size),
                randomize_bn=randomize_bn, inline_max_bytes=inline_max_bytes, workdir=workdir)
    child, read_fd, log_path = _spawn(spec, workdir)
    state = _listen(read_fd)
    peak, stage_peaks, killed, samples, wall = _watch(child, state, rss_limit, time_limit, interval)
    state["done"].wait(timeout=10)

    result = state["result"] or dict(status="killed" if killed else "crashed",
                                     params=state["params"])
    if killed:
        result["status"] = "killed"
        result["killed"] = killed
    if result.get("status") not in ("ok",):
        with open(log_path, "rb") as handle:
            result["log_tail"] = handle.read()[-3000:].decode("utf-8", "replace")
    result.update(method=method, config=config, opset=opset, dynamic_batch=dynamic_batch,
                  dynamic_size=dynamic_size, wall_seconds=round(wall, 2),
                  inline_max_bytes=inline_max_bytes if method == "fixed" else None,
                  peak_rss_poll=peak, poll_samples=samples, poll_interval=interval,
                  rss_limit=rss_limit, time_limit=time_limit)
    params = result.get("params") or state["params"]
    for record in result.get("stages", []):
        record["poll_peak"] = stage_peaks.get(record["stage"])
    _summarize(result, params)
    if own_dir:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _check_variants(args, common):
    """Small models of every layer variant, exported and checked against Keras."""
    results = []
    for method in args.method:
        for name, change in VARIANTS.items():
            config = dict(VARIANT_BASE, **change)
            if method != "fixed" and name in ("external_data",):
                continue  # an option of the fixed exporter only
            size = (64, 96) if name == "dynamic_size" else (128, 128)
            result = measure(method, config, verify=True,
                             verify_batch=1 if name == "static_batch" else 2,
                             verify_size=size, dynamic_size=name == "dynamic_size",
                             dynamic_batch=name != "static_batch",
                             external_data=True if name == "external_data" else None,
                             randomize_bn=config["normalization"], **common)
            result["variant"] = name
            if method == "fixed" and args.inline_max_bytes != 64 * 1024:
                result["variant"] += f"/inline{args.inline_max_bytes}"
            print_run(result)
            results.append(result)
    return results


def _level_sweep(args, common):
    """The standard model at each number of levels, each run saved as it ends."""
    results = []
    for method in args.method:
        for levels in args.levels:
            if method.startswith("tf2onnx") and levels >= 8 and not args.allow_baseline_8:
                print(f"skipping {method} at {levels} levels: needs more than 24 GB")
                continue
            config = dict(STANDARD, num_layers=levels, base_filters=args.base_filters)
            external = {"auto": None, "yes": True, "no": False}[args.external_data]
            result = measure(method, config, verify=args.verify, external_data=external, **common)
            variant = "standard"
            if args.base_filters != STANDARD["base_filters"]:
                variant += f"/base_filters{args.base_filters}"
            if method == "fixed" and args.external_data != "auto":
                variant += f"/external_data={args.external_data}"
            if method == "fixed" and args.inline_max_bytes != 64 * 1024:
                variant += f"/inline{args.inline_max_bytes}"
            result["variant"] = variant
            print_run(result)
            results.append(result)
            if not args.no_save:
                save_results([result], args.output, STANDARD)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", nargs="+", default=["fixed"], choices=sorted(EXPORTERS))
    parser.add_argument("--levels", nargs="+", type=int, default=[4, 5, 6])
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--verify", action="store_true",
                        help="compare ONNX Runtime with Keras on a random 512x512 input")
    parser.add_argument("--check-variants", action="store_true",
                        help="export small models of every layer variant with the fixed "
                             "exporter and check them against Keras")
    parser.add_argument("--inline-max-bytes", type=int, default=64 * 1024,
                        help="fixed method: variables up to this size are traced as constants")
    parser.add_argument("--external-data", choices=["auto", "yes", "no"], default="auto",
                        help="fixed method: weights in <model>.onnx.data (auto: above 2 GB)")
    parser.add_argument("--base-filters", type=int, default=STANDARD["base_filters"])
    parser.add_argument("--rss-limit-gb", type=float, default=10.0)
    parser.add_argument("--time-limit", type=float, default=900.0)
    parser.add_argument("--allow-baseline-8", action="store_true",
                        help="allow a tf2onnx baseline at >= 8 levels (needs > 24 GB: never on "
                             "a shared 24 GB machine)")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args(argv)

    common = dict(rss_limit=args.rss_limit_gb * GB, time_limit=args.time_limit,
                  opset=args.opset, inline_max_bytes=args.inline_max_bytes)
    results = _check_variants(args, common) if args.check_variants else _level_sweep(args, common)
    print_table(results)
    if not args.no_save and results:
        print(f"\nwrote {save_results(results, args.output, STANDARD)}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
