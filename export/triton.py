"""A Triton Inference Server model repository for an exported model (its model folder is
written by the export's Triton step and renamed into place with the other artifacts).

Layout::

    REPO/<name>/config.pbtxt
    REPO/<name>/1/model.onnx     (platform onnxruntime_onnx)
    REPO/<name>/1/model.plan     (platform tensorrt_plan, when an engine is given instead)
"""
from __future__ import annotations

import shutil
from pathlib import Path

from flexunet.core.errors import FlexunetError
from flexunet.core.machine import sha256_file
from flexunet.core.modelinfo import ModelInfo


def config_pbtxt(name: str, info: ModelInfo, platform: str, max_batch_size: int = 8,
                 preferred_batch_sizes: tuple[int, ...] = (4, 8), max_queue_delay_us: int = 2000) -> str:
    h = info.height if info.height else -1
    w = info.width if info.width else -1
    k = info.num_classes
    preferred = ", ".join(str(b) for b in preferred_batch_sizes if b <= max_batch_size) or str(max_batch_size)
    return f"""name: "{name}"
platform: "{platform}"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{info.input_name}"
    data_type: TYPE_FP32
    format: FORMAT_NHWC
    dims: [ {h}, {w}, {info.channels} ]
  }}
]
output [
  {{
    name: "{info.output_name}"
    data_type: TYPE_FP32
    dims: [ {h}, {w}, {k} ]
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {preferred} ]
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
instance_group [ {{ count: 1, kind: {"KIND_GPU" if platform == "tensorrt_plan" else "KIND_AUTO"} }} ]
parameters {{ key: "flexunet.tile" value: {{ string_value: "{info.tile_size[0]}x{info.tile_size[1]}" }} }}
parameters {{ key: "flexunet.threshold" value: {{ string_value: "{info.threshold}" }} }}
"""


def fill_repository(folder: Path, name: str, info: ModelInfo, onnx_path: Path | None = None,
                    plan_path: Path | None = None, max_batch_size: int = 8) -> None:
    """Write ``config.pbtxt`` and version ``1`` of model ``name`` into ``folder`` (the model's
    folder of a repository): the engine as ``model.plan`` when given, else the ONNX model (with
    its external data).  The copies are checked against their sources, byte for byte."""
    if onnx_path is None and plan_path is None:
        raise ValueError("a Triton repository needs model.onnx or model.plan")
    platform = "tensorrt_plan" if plan_path is not None else "onnxruntime_onnx"
    version = Path(folder) / "1"
    version.mkdir()
    copies = {plan_path: version / "model.plan"} if plan_path is not None else {onnx_path: version / "model.onnx"}
    data = Path(str(onnx_path) + ".data") if plan_path is None else None
    if data is not None and data.exists():
        copies[data] = version / data.name
    for src, dst in copies.items():
        shutil.copy2(src, dst)
        if sha256_file(dst) != sha256_file(src):
            raise FlexunetError(f"{dst}: the copy for the Triton repository differs from {src}")
    (Path(folder) / "config.pbtxt").write_text(config_pbtxt(name, info, platform, max_batch_size))
