"""Keras -> ONNX through tf2onnx, with flexunet metadata, verified against Keras before it counts.

The exported graph takes NHWC float32 ``image`` with a dynamic batch dimension and returns
``probabilities`` (sigmoid for one class, softmax for more).  Spatial size is fixed at the training
tile size unless ``dynamic_size`` (then any multiple of ``2**(num_layers-1)``).
"""
from __future__ import annotations

import hashlib
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flexunet.core.errors import FlexunetError, ModelError, VerificationError, first_line
from flexunet.core.compare import TOLERANCES, Comparison
from flexunet.core.modelinfo import ModelInfo

DEFAULT_OPSET = 17


def keras_weights_sha256(model) -> str:
    """sha256 over the model's weights (names, shapes and bytes), independent of file format."""
    h = hashlib.sha256()
    for w in model.weights:
        arr = np.ascontiguousarray(np.asarray(w.numpy() if hasattr(w, "numpy") else w))
        h.update(w.path.encode() if hasattr(w, "path") else b"")
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def convert(model, dest: Path, info: ModelInfo, opset: int = DEFAULT_OPSET) -> Path:
    """Convert a Keras model to ONNX at ``dest`` with ``info`` as metadata_props.

    Uses :func:`export.keras2onnx.export_keras_to_onnx` (weights bound after conversion, external
    data beside ``dest`` when the model passes 2 GB).
    """
    from flexunet.export.keras2onnx import export_keras_to_onnx

    try:
        export_keras_to_onnx(model, str(dest), opset=opset, dynamic_batch=True,
                             dynamic_size=info.height is None, metadata=info.to_metadata())
    except (ValueError, RuntimeError, NotImplementedError, TypeError, KeyError) as exc:
        raise ModelError(f"cannot convert the model to ONNX: {first_line(exc)}") from None
    return dest


def read_info(onnx_path: Path) -> ModelInfo:
    import onnx

    try:
        proto = onnx.load_model(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{onnx_path}: not a readable ONNX model ({type(exc).__name__})") from None
    return ModelInfo.from_metadata({p.key: p.value for p in proto.metadata_props}, str(onnx_path))


def predict_batches(predict, tiles: np.ndarray, batch_size: int = 4) -> np.ndarray:
    """``predict`` over ``tiles`` in batches, concatenated as float32."""
    outs = [np.asarray(predict(tiles[i:i + batch_size])) for i in range(0, len(tiles), batch_size)]
    return np.concatenate(outs).astype(np.float32)


def keras_predict(model, tiles: np.ndarray, batch_size: int = 4) -> np.ndarray:
    return predict_batches(model.predict_on_batch, tiles, batch_size)


def onnx_predict(onnx_path: Path, tiles: np.ndarray, batch_size: int = 4) -> np.ndarray:
    """An exported artifact run the way production runs it: the runtime's ONNX Runtime backend
    (CPU), which also reads and checks its metadata."""
    from flexunet.runtime.backends.onnx import OnnxBackend

    with OnnxBackend(onnx_path, provider="cpu") as backend:
        return predict_batches(backend.predict, tiles, batch_size)


def check_fp32(result: Comparison, what: str) -> None:
    """Refuse an FP32 artifact that does not reproduce the Keras model (:data:`TOLERANCES` fp32)."""
    failures = TOLERANCES["fp32"].failures(result)
    if failures:
        raise VerificationError(f"{what} does not reproduce the Keras model on {result.items} tiles: "
                                f"{'; '.join(failures)}; artifact not written")


def move_into_place(tmp_dir: Path, dest_dir: Path, names: list[str]) -> list[Path]:
    """Rename finished files from a temporary folder into the output folder."""
    out = []
    for n in names:
        src = tmp_dir / n
        if src.exists():
            dst = dest_dir / n
            src.replace(dst)
            out.append(dst)
    return out


def timed(fn, *a, **kw):
    t = time.perf_counter()
    r = fn(*a, **kw)
    return r, time.perf_counter() - t


def file_size(path: Path) -> int:
    """Bytes of an ONNX file plus any external data files beside it."""
    total = path.stat().st_size
    data = path.with_suffix(path.suffix + ".data")
    if data.exists():
        total += data.stat().st_size
    return total


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def require_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".flexunet_write_probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise FlexunetError(f"{folder}: output folder is not writable ({exc.strerror or exc})") from None
