"""The child process of benchmarks/export_memory.py: builds the model, exports it with the method
asked for, optionally checks it against Keras, and reports each stage's time and memory (the
kernel's exact per-stage peak) through an events pipe.

    python benchmarks/export_memory_worker.py SPEC_JSON EVENTS_FD
"""

import contextlib
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# The low-memory exporter ("fixed" method) is the project's own: export/keras2onnx.py.
from flexunet.export.keras2onnx import export_keras_to_onnx  # noqa: E402

from benchmarks.export_memory_baselines import EXPORTERS  # noqa: E402


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

    from flexunet.architectures.unet import build_unet, count_parameters

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


if __name__ == "__main__":
    sys.exit(_worker(json.loads(sys.argv[1]), int(sys.argv[2])))
