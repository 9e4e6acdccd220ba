"""Keras -> ONNX without baking the weights into the converter's graph.

tf2onnx 1.17 (TF 2.21, Keras 3) needs ~205 bytes of RAM per parameter to convert a UNet (the
seeds' 125 M-parameter model would need ~26 GB): the weights travel as graph constants through TF
freezing and grappler (~45 B/param each) and through ``optimizer.optimize_graph``, which
deep-copies the whole graph, weights included, before each pass, leaving reference cycles that
pile up (~150 B/param).  The converter only needs the *structure* and *shapes* of the weights,
so :func:`export_keras_to_onnx` traces the model with its large variables as graph inputs
(``keras.Model.stateless_call``), lets tf2onnx convert that small weight-free graph, then binds
the real weights as initializers one tensor at a time (:func:`bind_weights`), replaying in numpy
the weight-only steps tf2onnx emitted (kernel layout transposes, bias reshapes, BatchNorm
arithmetic) and streaming them to an external-data file when the model would pass protobuf's
2 GB limit.  Measured (benchmarks/export_memory.py): the 8-level seed model exports with a
2.7 GB peak RSS in ~8 s, outputs within 5e-7 of Keras.
"""

import contextlib
import logging
import os

from flexunet.export.weight_binding import MB, bind_weights

PROTOBUF_LIMIT = 2 ** 31  # a serialized protobuf message must stay below 2 GiB

INPUT_NAME, OUTPUT_NAME = "image", "probabilities"

__all__ = ["export_keras_to_onnx", "bind_weights"]


def export_keras_to_onnx(model, path, opset=17, dynamic_batch=True, dynamic_size=False,
                         external_data=None, check=True, inline_max_bytes=64 * 1024, *,
                         metadata=None, progress=None):
    """Export a single-input, single-output Keras 3 model to ONNX without baking weights in.

    Args:
        model: a built ``keras.Model`` (TensorFlow backend) taking NHWC float32 images.
        path: output ``.onnx`` path.
        opset: ONNX opset (>= 13; 17 by default).
        dynamic_batch: make the batch dimension symbolic (``"batch"``) instead of 1.
        dynamic_size: make height and width symbolic (``"height"``, ``"width"``).
        external_data: ``True`` to store weights in ``<path>.data`` (ONNX external data),
            ``False`` to keep them in the ``.onnx`` file, ``None`` (default) for external data
            only when the weights would push the model past protobuf's 2 GB limit.
        check: run ``onnx.checker`` on the written file.
        inline_max_bytes: variables up to this size (biases, BatchNorm statistics, the first
            small kernels) are traced as constants and converted by tf2onnx as usual, which
            lets its optimizers fold them (e.g. move BatchNorm to NCHW without transposes);
            larger ones are traced as graph inputs and bound afterwards.
        metadata: optional ``{key: value}`` strings stored as the model's ``metadata_props``.
        progress: optional callable ``progress(stage_name)`` returning a context manager,
            entered around each stage (used by the benchmark to attribute memory).

    Returns:
        ``path``. The model has one NHWC float32 input ``"image"`` and one output
        ``"probabilities"``.

    The memory needed is about one copy of the weights (the Keras variables) plus, transiently,
    one tensor, plus the written model when it is kept in memory to be serialized (no external
    data), independent of how tf2onnx handles constants.
    """
    import keras
    import numpy as np
    import onnx

    stage = progress or (lambda name: contextlib.nullcontext())
    shape = _image_shape(model, opset, dynamic_size)
    with stage("trace"):
        traced = _trace(model, shape, dynamic_batch, inline_max_bytes)
    with stage("tf2onnx_skeleton"):
        proto = _convert(traced, opset, inline_max_bytes)
    if external_data is None:
        external_data = sum(traced.nbytes) > PROTOBUF_LIMIT - 64 * MB
    sources = {name: traced.variables[i] for i, name in traced.weight_names.items()}

    def load(name):
        return np.asarray(keras.ops.convert_to_numpy(sources[name]))

    data_path = path + ".data" if external_data else None
    with stage("bind_weights"):
        proto = bind_weights(proto, load, set(traced.weight_names.values()), data_path=data_path)
    with stage("finalize"):
        _finalize(proto, model.name, dynamic_batch, dynamic_size, metadata)
    with stage("write"):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(proto.SerializeToString())
        del proto
    if check:
        with stage("check"):
            onnx.checker.check_model(path)
    return path


def _image_shape(model, opset, dynamic_size):
    """``(height, width, channels)`` of the model's NHWC image input (None for a dynamic size);
    ValueError for what the exporter does not take."""
    if opset < 13:
        raise ValueError(f"opset must be >= 13; got {opset}")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("export_keras_to_onnx expects a single-input, single-output model")
    in_shape = tuple(model.inputs[0].shape)
    if len(in_shape) != 4:
        raise ValueError(f"expected an NHWC image input; got input shape {in_shape}")
    height, width, channels = in_shape[1:]
    if dynamic_size:
        height = width = None
    elif height is None or width is None:
        raise ValueError("the model has a variable input size: pass dynamic_size=True")
    return height, width, channels


class _Traced:
    """The model traced as a ``tf.function`` of the image and its large variables: the function
    (``skeleton``, dropped once converted), its input signature, all variables (trainable first),
    their sizes in bytes, and the graph-input names of the variables traced as inputs."""

    def __init__(self, skeleton, specs, variables, nbytes, weight_names):
        self.skeleton, self.specs, self.variables = skeleton, specs, variables
        self.nbytes, self.weight_names = nbytes, weight_names


def _trace(model, shape, dynamic_batch, inline_max_bytes):
    """Trace ``model.stateless_call`` with its variables larger than ``inline_max_bytes`` as inputs.

    Small variables (biases, BatchNorm vectors) stay constants so tf2onnx folds them as usual
    (e.g. moves BatchNorm to NCHW); the others become inputs of the traced graph.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    height, width, channels = shape
    trainable = list(model.trainable_variables)
    variables = trainable + list(model.non_trainable_variables)
    nbytes = [int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables]
    as_input = [size > inline_max_bytes for size in nbytes]
    weight_names = {i: f"flexunet_weight_{i}" for i, flag in enumerate(as_input) if flag}
    specs = [tf.TensorSpec((None if dynamic_batch else 1, height, width, channels), tf.float32, name=INPUT_NAME)]
    specs += [tf.TensorSpec(tuple(variables[i].shape), variables[i].dtype, name=name)
              for i, name in weight_names.items()]
    n_trainable = len(trainable)
    inline = {i: keras.ops.convert_to_numpy(v) for i, v in enumerate(variables) if not as_input[i]}

    @tf.function(input_signature=specs, autograph=False)
    def skeleton(image, *weights):
        weights = iter(weights)
        values = [next(weights) if flag else tf.constant(inline[i]) for i, flag in enumerate(as_input)]
        outputs, _ = model.stateless_call(values[:n_trainable], values[n_trainable:], image, training=False)
        return {OUTPUT_NAME: outputs}

    skeleton.get_concrete_function()
    del inline  # traced: the constants now live in the graph only
    return _Traced(skeleton, specs, variables, nbytes, weight_names)


def _convert(traced, opset, inline_max_bytes):
    """tf2onnx's conversion of the weight-free traced graph (its logger quiet); drops the
    ``tf.function``.  RuntimeError if a large constant was baked in after all."""
    import tf2onnx

    tf2onnx_logger = logging.getLogger("tf2onnx")
    level = tf2onnx_logger.level
    tf2onnx_logger.setLevel(logging.ERROR)
    try:
        proto, _ = tf2onnx.convert.from_function(traced.skeleton, input_signature=traced.specs, opset=opset)
    finally:
        tf2onnx_logger.setLevel(level)
    traced.skeleton = None
    limit = max(MB, 4 * inline_max_bytes)
    big = [t.name for t in proto.graph.initializer if t.ByteSize() > limit]
    if big:  # a captured weight would mean the model was not traced statelessly
        raise RuntimeError(f"tf2onnx baked constants larger than {limit} bytes: {big}")
    return proto


def _finalize(proto, model_name, dynamic_batch, dynamic_size, metadata):
    """Name the dynamic dimensions, drop unused opset imports, set the producer and metadata."""
    _name_dynamic_dims(proto, INPUT_NAME, OUTPUT_NAME, dynamic_batch, dynamic_size)
    used = {n.domain or "" for n in proto.graph.node} | {""}
    kept = [o for o in proto.opset_import if (o.domain or "") in used]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    proto.producer_name = "flexunet"
    proto.producer_version = "export_keras_to_onnx"
    proto.doc_string = f"converted from Keras model {model_name!r}"
    for key, val in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, val


def _name_dynamic_dims(proto, input_name, output_name, dynamic_batch, dynamic_size):
    """Give the symbolic dimensions of the model's input and output readable names."""
    names = {0: "batch"} if dynamic_batch else {}
    if dynamic_size:
        names.update({1: "height", 2: "width"})
    for value in list(proto.graph.input) + list(proto.graph.output):
        if value.name not in (input_name, output_name):
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis in names and not dim.HasField("dim_value"):
                dim.dim_param = names[axis]
