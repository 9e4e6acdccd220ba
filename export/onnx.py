"""ONNX files of the export: Keras -> ONNX with flexunet metadata, ONNX Runtime's optimised graph,
and the metadata read back, carried over and measured on disk.

The exported graph takes NHWC float32 ``image`` with a dynamic batch dimension and returns
``probabilities`` (sigmoid for one class, softmax for more).  Spatial size is fixed at the training
tile size unless the model info says it is dynamic (then any multiple of ``2**(num_layers-1)``).
"""
from __future__ import annotations

from pathlib import Path

from flexunet.core.errors import FlexunetError, ModelError, first_line
from flexunet.core.modelinfo import METADATA_KEY, ModelInfo

DEFAULT_OPSET = 17


def convert(model, dest: Path, info: ModelInfo, opset: int = DEFAULT_OPSET) -> Path:
    """Convert a Keras model to ONNX at ``dest`` with ``info`` as metadata_props.

    Uses :func:`flexunet.export.keras2onnx.export_keras_to_onnx` (weights bound after conversion,
    external data beside ``dest`` when the model passes 2 GB).
    """
    from flexunet.export.keras2onnx import export_keras_to_onnx

    try:
        export_keras_to_onnx(model, str(dest), opset=opset, dynamic_batch=True,
                             dynamic_size=info.height is None, metadata=info.to_metadata())
    except (ValueError, RuntimeError, NotImplementedError, TypeError, KeyError) as exc:
        raise ModelError(f"cannot convert the model to ONNX: {first_line(exc)}") from None
    return dest


def load_graph(onnx_path: Path):
    """The ``onnx.ModelProto`` of a file without its external weights (ModelError, one line, if
    it is not a readable ONNX model)."""
    import onnx

    try:
        return onnx.load_model(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{onnx_path}: not a readable ONNX model ({first_line(exc)})") from None


def read_info(onnx_path: Path) -> ModelInfo:
    """The :class:`ModelInfo` an exported file carries in its metadata."""
    proto = load_graph(onnx_path)
    return ModelInfo.from_metadata({p.key: p.value for p in proto.metadata_props}, str(onnx_path))


def _save_with_props(dest: Path, props: dict) -> None:
    """Rewrite ``dest`` with ``props`` as its whole ``metadata_props``."""
    import onnx

    model = onnx.load_model(str(dest))
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(model, str(dest))


def copy_metadata(src: Path, dest: Path, precision: str | None = None) -> None:
    """Give ``dest`` the metadata of ``src`` (with ``precision`` in its model info when given)."""
    props = {p.key: p.value for p in load_graph(src).metadata_props}
    if precision is not None and METADATA_KEY in props:
        info = ModelInfo.from_json(props[METADATA_KEY])
        info.precision = precision
        props.update(info.to_metadata())
    _save_with_props(dest, props)


def write_metadata(onnx_path: Path, info: ModelInfo) -> None:
    """Replace the flexunet metadata of an ONNX file with ``info``'s (other entries kept)."""
    props = {p.key: p.value for p in load_graph(onnx_path).metadata_props}
    props.update(info.to_metadata())
    _save_with_props(onnx_path, props)


def optimize(src: Path, dest: Path) -> Path:
    """Save ONNX Runtime's offline-optimised graph (extended level: portable across CPUs)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(dest)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    if not dest.exists():
        raise FlexunetError(f"{dest}: ONNX Runtime did not write the optimised model")
    copy_metadata(src, dest)
    return dest


def file_size(path: Path) -> int:
    """Bytes of an ONNX file plus any external data files beside it."""
    total = path.stat().st_size
    data = path.with_suffix(path.suffix + ".data")
    if data.exists():
        total += data.stat().st_size
    return total
