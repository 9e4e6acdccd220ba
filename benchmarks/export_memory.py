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

``export_keras_to_onnx`` (below) converts the same network at the right depth: the converter only
needs the *structure* and the *shapes* of the weights, never their values. It traces the model
with every variable as a graph input (``keras.Model.stateless_call``), lets tf2onnx convert that
small weight-free graph, then binds the real Keras weights as ONNX initializers one tensor at a
time, replaying the weight-only subgraph tf2onnx emitted (HWIO->OIHW ``Transpose`` of kernels,
``Reshape``/``Squeeze`` of biases, BatchNorm arithmetic) in numpy and streaming each result to the
model (or to an external-data file when the model would exceed protobuf's 2 GB limit).

Usage (every measurement runs in a fresh subprocess with a watchdog)::

    python benchmarks/export_memory.py --method tf2onnx-staged --levels 4 5 6
    python benchmarks/export_memory.py --method fixed --levels 4 5 6 7 8 --verify
    python benchmarks/export_memory.py --check-variants       # small models, all layer variants

Results: a table on stdout and ``benchmarks/results/export_memory.json`` (runs are merged by
method, levels and variant, so several invocations accumulate).

Methods:
    tf2onnx          ``tf2onnx.convert.from_keras(model, ..., output_path=...)`` as one call.
    tf2onnx-staged   the same pipeline called step by step (one stage per internal step) to
                     attribute memory; keeps alive exactly what ``from_keras`` keeps alive.
    tf2onnx-large    ``from_keras(..., large_model=True)`` (zip output); its ``numpy.product``
                     call is served by a proxy installed in ``tf2onnx.graph`` only during the call.
    fixed            ``export_keras_to_onnx`` below.

Memory is measured two ways: the parent polls the child's RSS (psutil, children included) every
50 ms and kills it above ``--rss-limit-gb`` (default 10) or after ``--time-limit`` seconds; the
child reads the kernel's exact per-stage high-water mark (``VmHWM``, reset per stage through
``/proc/self/clear_refs``). Timings on a shared 2-core machine are noisy.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

RESULTS = os.path.join(REPO, "benchmarks", "results", "export_memory.json")

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

GB = 1024 ** 3

# The low-memory exporter ("fixed" method) is the project's own: export/keras2onnx.py.
from flexunet.export.keras2onnx import MB, export_keras_to_onnx  # noqa: E402


# ---------------------------------------------------------------------------------------------
# The tf2onnx baselines
# ---------------------------------------------------------------------------------------------

def export_tf2onnx(model, path, opset=17, dynamic_batch=True, progress=None):
    """Baseline: ``tf2onnx.convert.from_keras`` as one call."""
    import tensorflow as tf
    import tf2onnx

    stage = progress or (lambda name: contextlib.nullcontext())
    spec = (tf.TensorSpec((None if dynamic_batch else 1,) + tuple(model.inputs[0].shape[1:]),
                          tf.float32, name="image"),)
    with stage("tf2onnx.from_keras"):
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset, output_path=path)
    return path


class _NumpyWithProduct:
    """``numpy`` as seen by one module, plus the ``product`` alias numpy 2 removed."""

    def __init__(self, numpy):
        self._numpy = numpy

    def __getattr__(self, name):
        if name == "product":
            return self._numpy.prod
        return getattr(self._numpy, name)


def export_tf2onnx_large(model, path, opset=17, dynamic_batch=True, progress=None):
    """Baseline: ``from_keras(large_model=True)``: writes a zip (proto + one file per tensor).

    tf2onnx.graph calls ``np.product``; instead of adding it to numpy globally, tf2onnx.graph's
    own ``np`` is replaced by a proxy for the duration of the call.
    """
    import tensorflow as tf
    import tf2onnx
    import tf2onnx.graph

    stage = progress or (lambda name: contextlib.nullcontext())
    spec = (tf.TensorSpec((None if dynamic_batch else 1,) + tuple(model.inputs[0].shape[1:]),
                          tf.float32, name="image"),)
    original = tf2onnx.graph.np
    tf2onnx.graph.np = _NumpyWithProduct(original)
    try:
        with stage("tf2onnx.from_keras(large_model)"):
            tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset,
                                       output_path=path, large_model=True)
    finally:
        tf2onnx.graph.np = original
    return path


def export_tf2onnx_staged(model, path, opset=17, dynamic_batch=True, progress=None,
                          collect_garbage=False):
    """Baseline split into its internal steps (tf2onnx 1.17 ``from_keras``, TF 2.x path).

    Mirrors ``tf2onnx.convert.from_keras`` -> ``tf_loader.from_trackable`` ->
    ``tf_loader.from_function`` -> ``convert._convert_common`` -> ``tfonnx.process_tf_graph``
    -> ``optimizer.optimize_graph`` (one stage per optimizer pass, with its ``copy.deepcopy`` of
    the graph) and keeps alive what they keep alive, so the peak matches the one-call baseline.
    With ``collect_garbage`` a full ``gc.collect()`` ends every stage: the difference shows how
    much of the peak is unreachable reference cycles (TF FuncGraphs, tf2onnx Graph copies)
    waiting for Python's cyclic collector.
    """
    import copy
    import gc

    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    from tf2onnx import optimizer, tf_loader, tfonnx, utils
    from tf2onnx.convert import _get_concrete_function, tensor_names_from_structed
    from tf2onnx.graph import Graph
    from tf2onnx.shape_inference import infer_shape
    from tf2onnx.tf_utils import compute_const_folding_using_tf, tensorflow_to_onnx

    outer = progress or (lambda name: contextlib.nullcontext())

    @contextlib.contextmanager
    def stage(name):
        with outer(name):
            yield
            if collect_garbage:
                gc.collect()

    spec = (tf.TensorSpec((None if dynamic_batch else 1,) + tuple(model.inputs[0].shape[1:]),
                          tf.float32, name="image"),)
    with stage("trace (tf.function)"):
        concrete_func = _get_concrete_function(model, spec)
        captured = [t.name for t in concrete_func.graph.function_captures.by_val_internal.values()]
        input_names = [t.name for t in concrete_func.inputs if t.name not in captured]
        output_names = [t.name for t in concrete_func.outputs if t.dtype != tf.dtypes.resource]
        tensors_to_rename = tensor_names_from_structed(concrete_func, input_names, output_names)
    with tf.device("/cpu:0"):
        with stage("freeze (convert_variables_to_constants_v2)"):
            frozen_func = convert_variables_to_constants_v2(concrete_func, lower_control_flow=False,
                                                            aggressive_inlining=True)
        with stage("freeze: as_graph_def"):
            graph_def = frozen_func.graph.as_graph_def(add_shapes=True)
            graph_def = tf_loader.fix_freezing_errors_part2(graph_def)
        with stage("grappler (import + tf_optimize)"):
            with tf.Graph().as_default() as tmp_graph:
                with tf_loader.tf_session(graph=tmp_graph) as sess:
                    tf.import_graph_def(graph_def, name="")
                    inputs = tf_loader.inputs_without_resource(sess, input_names)
                    frozen_graph = tf_loader.tf_optimize(inputs, output_names, graph_def)
            del frozen_func, graph_def, tmp_graph, sess
        with tf.Graph().as_default() as tf_graph:
            with stage("import_graph_def"):
                tf.import_graph_def(frozen_graph, name="")
            opset = utils.find_opset(opset)
            tf_loader.clear_functions()
            with stage("process_tf_graph: resolve_functions"):
                functions = tf_loader.resolve_functions(tf_graph)
                assert not functions, "functions are not expected after aggressive inlining"
            with stage("process_tf_graph: infer_shape"):
                shaped = infer_shape(tf_graph, {})
            with stage("process_tf_graph: TF const folding"):
                outputs_to_values, _ = compute_const_folding_using_tf(shaped, None, output_names)
            with stage("process_tf_graph: TF nodes -> ONNX nodes"):
                onnx_nodes, _, _, output_shapes, dtypes, _ = tensorflow_to_onnx(shaped, {})
            with stage("process_tf_graph: Graph() + fold"):
                utils.check_io(input_names, output_names, output_shapes.keys())
                main_g = Graph(onnx_nodes, output_shapes, dtypes, input_names=input_names,
                               output_names=output_names)
                tfonnx.fold_constants_using_tf(main_g, outputs_to_values)
                del onnx_nodes, outputs_to_values, shaped
                main_g.set_config(None, opset, None)
            with stage("process_tf_graph: rewriters + op handlers"):
                g = tfonnx.process_graphs(main_g, [], None, [], [], True, None, {},
                                          tensors_to_rename)
                del main_g
            # optimizer.optimize_graph(g, catch_errors=True), one stage per optimizer pass
            continue_flag, iteration = True, 0
            while continue_flag:
                continue_flag = False
                for name, factory in optimizer._get_optimizers().items():
                    with stage(f"optimize_graph #{iteration}: {name}"):
                        try:
                            current = copy.deepcopy(g)
                            opt = factory()
                            g = opt.optimize(current, iteration) or g
                            continue_flag = continue_flag or opt.graph_been_opt
                        except Exception:  # pylint: disable=broad-except
                            pass
                iteration += 1
            del current
            with stage("optimize_graph: topological_sort"):
                g.topological_sort(g.get_nodes())
            with stage("make_model"):
                model_proto = g.make_model(f"converted from {model.name}",
                                           external_tensor_storage=None)
        del g, tf_graph, frozen_graph
        with stage("SerializeToString"):
            data = model_proto.SerializeToString()
        with stage("write"):
            with open(path, "wb") as handle:
                handle.write(data)
            del data, model_proto
    return path


def export_tf2onnx_staged_gc(model, path, opset=17, dynamic_batch=True, progress=None):
    """``export_tf2onnx_staged`` with a full garbage collection at the end of every stage."""
    return export_tf2onnx_staged(model, path, opset, dynamic_batch, progress,
                                 collect_garbage=True)


EXPORTERS = {
    "tf2onnx": export_tf2onnx,
    "tf2onnx-staged": export_tf2onnx_staged,
    "tf2onnx-staged-gc": export_tf2onnx_staged_gc,
    "tf2onnx-large": export_tf2onnx_large,
    "fixed": None,  # export_keras_to_onnx, wired in _worker
}


# ---------------------------------------------------------------------------------------------
# Measurement: worker (child) side
# ---------------------------------------------------------------------------------------------

def _status_kb(key):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


def _reset_hwm():
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class _Stages:
    """Per-stage wall time, RSS before/after and exact peak (kernel VmHWM) of this process."""

    def __init__(self, events_fd):
        self.events = os.fdopen(events_fd, "w", buffering=1) if events_fd is not None else None
        self.records = []
        self.hwm_ok = _reset_hwm()

    def emit(self, **event):
        if self.events is not None:
            self.events.write(json.dumps(event) + "\n")

    @contextlib.contextmanager
    def __call__(self, name, kind="export"):
        rss0 = _status_kb("VmRSS")
        self.emit(event="start", stage=name, kind=kind, rss=rss0)
        if self.hwm_ok:
            _reset_hwm()
        t0 = time.perf_counter()
        yield
        seconds = time.perf_counter() - t0
        record = dict(stage=name, kind=kind, seconds=round(seconds, 3), rss_start=rss0,
                      rss_end=_status_kb("VmRSS"),
                      hwm_peak=_status_kb("VmHWM") if self.hwm_ok else None)
        self.records.append(record)
        self.emit(event="end", **record)


def _build(config):
    import keras

    from flexunet.train.model import build_unet, count_parameters

    keras.utils.set_random_seed(0)
    model = build_unet(**config)
    return model, count_parameters(model)


def _randomize_batchnorm(model):
    """Give BatchNorm layers non-trivial statistics so the check exercises them."""
    import keras
    import numpy as np

    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))


def _onnx_for_runtime(path, workdir):
    """Path ONNX Runtime can open (extracts tf2onnx's large_model zip)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return path
    target = os.path.join(workdir, "unzipped")
    with zipfile.ZipFile(path) as archive:
        archive.extractall(target)
    return os.path.join(target, "__MODEL_PROTO.onnx")


def _keras_reference(model, batch, height, width, seed=0):
    """Random input in [0, 255) and the Keras output for it."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (batch, height, width, model.inputs[0].shape[-1])).astype("float32")
    return x, np.asarray(model(x, training=False))


def _ort_check(path, workdir, x, expected):
    """Max |Keras - ONNX Runtime (CPU)| for the input ``x``."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(_onnx_for_runtime(path, workdir), options,
                                   providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    if got.shape != expected.shape:
        raise AssertionError(f"shape {got.shape} != Keras {expected.shape}")
    batch, height, width = x.shape[:3]
    return dict(max_abs_diff=float(np.max(np.abs(got - expected))), batch=batch,
                height=height, width=width, onnx_inputs=names[0], onnx_outputs=names[1])


def _onnx_summary(path):
    """Ops, opset, sizes and I/O shapes of a written model (weights not loaded)."""
    import collections

    import onnx

    import zipfile

    if zipfile.is_zipfile(path):
        return dict(onnx_bytes=os.path.getsize(path), external_files={}, format="tf2onnx zip")
    proto = onnx.load(path, load_external_data=False)
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa
    data_files = sorted({e.value for t in proto.graph.initializer for e in t.external_data
                         if e.key == "location"})
    return dict(
        opset=[(o.domain or "ai.onnx", o.version) for o in proto.opset_import],
        ops=dict(collections.Counter(n.op_type for n in proto.graph.node)),
        inputs={v.name: dims(v) for v in proto.graph.input},
        outputs={v.name: dims(v) for v in proto.graph.output},
        initializers=len(proto.graph.initializer),
        onnx_bytes=os.path.getsize(path),
        external_files={f: os.path.getsize(os.path.join(os.path.dirname(path), f))
                        for f in data_files})


def _worker(spec, events_fd):
    """Child process: build, export, optionally verify; report through the events pipe."""
    stages = _Stages(events_fd)
    result = dict(status="error")
    try:
        with stages("import", kind="setup"):
            import keras  # noqa: F401
            import numpy  # noqa: F401
            import onnx  # noqa: F401
            import tensorflow as tf  # noqa: F401
            import tf2onnx  # noqa: F401
        with stages("build (Keras)", kind="setup"):
            model, params = _build(spec["config"])
            if spec.get("randomize_bn"):
                _randomize_batchnorm(model)
        result["params"] = params
        stages.emit(event="params", params=params)
        path = os.path.join(spec["workdir"], f"model_{spec['method']}.onnx")
        method = spec["method"]
        opts = dict(opset=spec["opset"], dynamic_batch=spec["dynamic_batch"])
        t0 = time.perf_counter()
        if method == "fixed":
            export_keras_to_onnx(model, path, dynamic_size=spec["dynamic_size"],
                                 external_data=spec["external_data"], check=spec["check"],
                                 inline_max_bytes=spec["inline_max_bytes"], progress=stages,
                                 **opts)
        else:
            EXPORTERS[method](model, path, progress=stages, **opts)
        result["export_call_seconds"] = round(time.perf_counter() - t0, 3)
        result["onnx"] = _onnx_summary(path)
        if spec["verify"]:
            import gc
            with stages("verify: Keras reference", kind="verify"):
                h, w = spec["verify_size"]
                x, expected = _keras_reference(model, spec["verify_batch"], h, w)
                del model  # free the Keras weights before ONNX Runtime loads its copy
                gc.collect()
            with stages("verify: ONNX Runtime", kind="verify"):
                result["verify"] = _ort_check(path, spec["workdir"], x, expected)
        result["status"] = "ok"
    except BaseException as exc:  # report, then exit non-zero
        import traceback
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-4000:]
    result["stages"] = stages.records
    result["hwm_reset_supported"] = stages.hwm_ok
    stages.emit(event="result", result=result)
    return 0 if result["status"] == "ok" else 1


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


def measure(method, config, *, opset=17, dynamic_batch=True, dynamic_size=False,
            external_data=None, check=True, verify=False, verify_batch=1, verify_size=None,
            randomize_bn=False, inline_max_bytes=64 * 1024, rss_limit=10 * GB, time_limit=900,
            interval=0.05, workdir=None):
    """Run one export in a fresh subprocess; return its measurement record.

    The parent polls the child's RSS (children included) every ``interval`` s, attributes the
    samples to the stage the child reports, and kills the child (its process group) when RSS
    exceeds ``rss_limit`` bytes or the run exceeds ``time_limit`` seconds.
    """
    import signal
    import subprocess

    import psutil

    own_dir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="export_memory_")
    if verify_size is None:
        verify_size = (config["image_height"] or 128, config["image_width"] or 128)
    spec = dict(method=method, config=config, opset=opset, dynamic_batch=dynamic_batch,
                dynamic_size=dynamic_size, external_data=external_data, check=check,
                verify=verify, verify_batch=verify_batch, verify_size=list(verify_size),
                randomize_bn=randomize_bn, inline_max_bytes=inline_max_bytes, workdir=workdir)
    read_fd, write_fd = os.pipe()
    log_path = os.path.join(workdir, "worker.log")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log_file:
        child = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec),
             "--events-fd", str(write_fd)],
            pass_fds=(write_fd,), stdout=log_file, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, cwd=REPO)
    os.close(write_fd)
    proc = psutil.Process(child.pid)

    state = dict(stage="(startup)", result=None, params=None)
    stage_peaks = {}
    reader_done = threading.Event()

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
        reader_done.set()

    threading.Thread(target=reader, daemon=True).start()
    t0 = time.perf_counter()
    peak, killed, samples = 0, None, 0
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
    wall = time.perf_counter() - t0
    reader_done.wait(timeout=10)

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


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------

def machine_description():
    import importlib.metadata as md

    import psutil

    cpu = "unknown"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    versions = {}
    for name in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "onnxruntime-gpu",
                 "numpy", "protobuf", "psutil"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[name] = md.version(name)
    return dict(cpu=cpu, logical_cores=os.cpu_count(),
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


def save_results(results, path=RESULTS):
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
        standard_model=STANDARD, machine=machine_description(),
        runs=sorted(runs.values(), key=lambda r: (r["method"], r.get("variant", "standard"),
                                                  r["config"]["num_layers"])))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=1, default=str)
    os.replace(tmp, path)
    return path


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
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--events-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        return _worker(json.loads(args.worker), args.events_fd)

    results = []
    common = dict(rss_limit=args.rss_limit_gb * GB, time_limit=args.time_limit,
                  opset=args.opset, inline_max_bytes=args.inline_max_bytes)
    if args.check_variants:
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
    else:
        for method in args.method:
            for levels in args.levels:
                if method.startswith("tf2onnx") and levels >= 8 and not args.allow_baseline_8:
                    print(f"skipping {method} at {levels} levels: needs more than 24 GB")
                    continue
                config = dict(STANDARD, num_layers=levels, base_filters=args.base_filters)
                external = {"auto": None, "yes": True, "no": False}[args.external_data]
                result = measure(method, config, verify=args.verify, external_data=external,
                                 **common)
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
                    save_results([result], args.output)
    print_table(results)
    if not args.no_save and results:
        print(f"\nwrote {save_results(results, args.output)}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
