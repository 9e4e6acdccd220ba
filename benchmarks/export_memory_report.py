"""Results of benchmarks/export_memory.py: per-stage figures summarised, printed as tables, and
merged into the JSON results file with the machine description."""

import contextlib
import datetime
import json
import os
import platform

from flexunet.export.keras2onnx import MB

GB = 1024 ** 3


def _summarize(result, params):
    """Export peak/time and bytes per parameter per stage."""
    stages = result.get("stages", [])
    build = next((s for s in stages if s["stage"] == "build (Keras)"), None)
    base = build["rss_end"] if build else None
    export = [s for s in stages if s["kind"] == "export"]
    peak_of = lambda s: max(v for v in (s.get("hwm_peak"), s.get("poll_peak"), s["rss_end"])  # noqa
                            if v is not None)
    if export:
        result["export_seconds"] = round(sum(s["seconds"] for s in export), 2)
        result["export_peak_rss"] = max(peak_of(s) for s in export)
    setup = [s for s in stages if s["kind"] == "setup"]
    result["setup_seconds"] = round(sum(s["seconds"] for s in setup), 2)
    if params:
        for s in stages:
            s["bytes_per_param_transient"] = round((peak_of(s) - s["rss_start"]) / params, 2)
            s["bytes_per_param_retained"] = round((s["rss_end"] - s["rss_start"]) / params, 2)
            if base is not None:
                s["bytes_per_param_above_model"] = round((peak_of(s) - base) / params, 2)
        if base is not None and export:
            result["export_bytes_per_param_above_model"] = round(
                (result["export_peak_rss"] - base) / params, 2)


def machine_description():
    import psutil

    from flexunet.core.machine import cpu_info, library_versions

    versions = library_versions(("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "onnxruntime-gpu",
                                 "numpy", "protobuf", "psutil"))
    versions.pop("python")
    return dict(cpu=cpu_info()[0] or "unknown", logical_cores=os.cpu_count(),
                ram_gb=round(psutil.virtual_memory().total / GB, 1),
                available_ram_gb_at_start=round(psutil.virtual_memory().available / GB, 1),
                kernel=platform.release(), python=platform.python_version(), versions=versions,
                note="shared machine (other jobs were training models): timings are noisy")


def _fmt_gb(value):
    return "-" if value is None else f"{value / GB:6.2f}"


def print_run(result):
    params = result.get("params")
    head = (f"{result['method']} levels={result['config']['num_layers']} "
            f"variant={result.get('variant', 'standard')} "
            + (f"params={params:,} " if isinstance(params, int) else "params=? "))
    status = result["status"]
    if status != "ok":
        status += f" ({result.get('killed') or result.get('error')})"
    print("\n" + head + "status=" + status)
    print(f"  {'stage':<46}{'sec':>8}{'rss0 GB':>9}{'peak GB':>9}{'poll GB':>9}"
          f"{'B/p peak-start':>15}{'B/p kept':>10}{'B/p >model':>11}")
    for s in result.get("stages", []):
        print(f"  {s['stage']:<46}{s['seconds']:>8.1f}{_fmt_gb(s['rss_start']):>9}"
              f"{_fmt_gb(s.get('hwm_peak')):>9}{_fmt_gb(s.get('poll_peak')):>9}"
              f"{s.get('bytes_per_param_transient', '-'):>15}"
              f"{s.get('bytes_per_param_retained', '-'):>10}"
              f"{s.get('bytes_per_param_above_model', '-'):>11}")
    line = f"  peak RSS (poll, children incl.) {_fmt_gb(result['peak_rss_poll'])} GB"
    if "export_peak_rss" in result:
        line += (f" | export: peak {_fmt_gb(result['export_peak_rss'])} GB,"
                 f" {result['export_seconds']:.1f} s,"
                 f" {result.get('export_bytes_per_param_above_model', '?')} B/param above model")
    line += f" | wall {result['wall_seconds']:.1f} s"
    print(line)
    if "verify" in result:
        print(f"  max |dp| vs Keras: {result['verify']['max_abs_diff']:.3g} "
              f"(batch {result['verify']['batch']}, "
              f"{result['verify']['height']}x{result['verify']['width']})")
    if result.get("onnx"):
        o = result["onnx"]
        print(f"  onnx: {o['onnx_bytes'] / MB:.1f} MB + external {o['external_files']}, "
              f"opset {o.get('opset')}, inputs {o.get('inputs')}, outputs {o.get('outputs')}")
        if "ops" in o:
            print(f"  ops: {o['ops']}")


def print_table(results):
    print("\nSummary")
    print(f"{'method':<16}{'variant':<15}{'levels':>7}{'params':>13}{'status':>9}"
          f"{'export peak GB':>15}{'export s':>10}{'B/p>model':>10}{'wall s':>9}{'max|dp|':>10}")
    for r in results:
        diff = r.get("verify", {}).get("max_abs_diff")
        print(f"{r['method']:<16}{r.get('variant', 'standard'):<15}{r['config']['num_layers']:>7}"
              f"{r.get('params') or 0:>13,}{r['status']:>9}"
              f"{_fmt_gb(r.get('export_peak_rss', r.get('peak_rss_poll'))):>15}"
              f"{r.get('export_seconds', float('nan')):>10.1f}"
              f"{str(r.get('export_bytes_per_param_above_model', '-')):>10}"
              f"{r['wall_seconds']:>9.1f}{'-' if diff is None else f'{diff:.2g}':>10}")


def save_results(results, path, standard_model):
    """Merge ``results`` into the JSON file (one entry per method/variant/levels)."""
    data = {}
    if os.path.exists(path):
        with contextlib.suppress(ValueError, OSError):
            with open(path) as handle:
                data = json.load(handle)
    for r in data.get("runs", []) + list(results):
        r.setdefault("variant", "standard")
    runs = {(r["method"], r["variant"], r["config"]["num_layers"]): r
            for r in data.get("runs", [])}
    for r in results:
        r["measured_at"] = datetime.datetime.now().isoformat(timespec="seconds")
        runs[(r["method"], r.get("variant", "standard"), r["config"]["num_layers"])] = r
    data = dict(
        description=("Peak RSS and wall time of Keras -> ONNX export of the seed UNet "
                     "(build_unet, random weights, keras.utils.set_random_seed(0)). Each run is "
                     "a fresh subprocess; peak_rss_poll is psutil RSS of the process tree polled "
                     "every 50 ms; hwm_peak is the kernel's exact per-stage peak (VmHWM reset per "
                     "stage). bytes_per_param_transient = (stage peak - RSS at stage start) / "
                     "params; _retained = (RSS at end - at start) / params; _above_model = "
                     "(stage peak - RSS after building the Keras model) / params."),
        standard_model=standard_model, machine=machine_description(),
        runs=sorted(runs.values(), key=lambda r: (r["method"], r.get("variant", "standard"),
                                                  r["config"]["num_layers"])))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=1, default=str)
    os.replace(tmp, path)
    return path
