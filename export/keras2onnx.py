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
import sys

MB = 1024 ** 2
PROTOBUF_LIMIT = 2 ** 31  # a serialized protobuf message must stay below 2 GiB

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
    import tensorflow as tf
    import tf2onnx

    stage = progress or (lambda name: contextlib.nullcontext())
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
    input_name, output_name = "image", "probabilities"

    with stage("trace"):
        trainable = list(model.trainable_variables)
        non_trainable = list(model.non_trainable_variables)
        variables = trainable + non_trainable
        nbytes = [int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables]
        # Small variables (biases, BatchNorm vectors) stay constants so tf2onnx folds them as
        # usual (e.g. moves BatchNorm to NCHW); the others become inputs of the traced graph.
        as_input = [size > inline_max_bytes for size in nbytes]
        weight_names = {i: f"flexunet_weight_{i}" for i, flag in enumerate(as_input) if flag}
        specs = [tf.TensorSpec((None if dynamic_batch else 1, height, width, channels),
                               tf.float32, name=input_name)]
        specs += [tf.TensorSpec(tuple(variables[i].shape), variables[i].dtype, name=name)
                  for i, name in weight_names.items()]
        n_trainable = len(trainable)
        inline = {i: keras.ops.convert_to_numpy(v) for i, v in enumerate(variables)
                  if not as_input[i]}

        @tf.function(input_signature=specs, autograph=False)
        def skeleton(image, *weights):
            weights = iter(weights)
            values = [next(weights) if flag else tf.constant(inline[i])
                      for i, flag in enumerate(as_input)]
            outputs, _ = model.stateless_call(values[:n_trainable], values[n_trainable:], image,
                                              training=False)
            return {output_name: outputs}

        skeleton.get_concrete_function()
        del inline

    with stage("tf2onnx_skeleton"):
        tf2onnx_logger = logging.getLogger("tf2onnx")
        level = tf2onnx_logger.level
        tf2onnx_logger.setLevel(logging.ERROR)
        try:
            proto, _ = tf2onnx.convert.from_function(skeleton, input_signature=specs, opset=opset)
        finally:
            tf2onnx_logger.setLevel(level)
        del skeleton
        limit = max(MB, 4 * inline_max_bytes)
        big = [t.name for t in proto.graph.initializer if t.ByteSize() > limit]
        if big:  # a captured weight would mean the model was not traced statelessly
            raise RuntimeError(f"tf2onnx baked constants larger than {limit} bytes: {big}")

    if external_data is None:
        external_data = sum(nbytes) > PROTOBUF_LIMIT - 64 * MB

    sources = {name: variables[i] for i, name in weight_names.items()}

    def load(name):
        value = sources[name]
        return np.asarray(keras.ops.convert_to_numpy(value))

    data_path = path + ".data" if external_data else None
    with stage("bind_weights"):
        proto = bind_weights(proto, load, set(weight_names.values()), data_path=data_path)

    with stage("finalize"):
        _name_dynamic_dims(proto, input_name, output_name, dynamic_batch, dynamic_size)
        used = {n.domain or "" for n in proto.graph.node} | {""}
        kept = [o for o in proto.opset_import if (o.domain or "") in used]
        del proto.opset_import[:]
        proto.opset_import.extend(kept)
        proto.producer_name = "flexunet"
        proto.producer_version = "export_keras_to_onnx"
        proto.doc_string = f"converted from Keras model {model.name!r}"
        for key, val in (metadata or {}).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, val

    with stage("write"):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(proto.SerializeToString())
        del proto

    if check:
        with stage("check"):
            onnx.checker.check_model(path)
    return path


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


_FOLDABLE_BLOCKLIST = {"RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike",
                       "Multinomial", "Bernoulli", "If", "Loop", "Scan"}


def bind_weights(proto, load, weight_inputs, data_path=None, external_min_bytes=1024,
                 align=4096, small_cache_bytes=4 * MB):
    """Turn weight *inputs* of ``proto`` into initializers, folding the weight-only subgraph.

    ``proto`` is a converted model whose weights are graph inputs named in ``weight_inputs``;
    ``load(name)`` returns the numpy value of one of them. Every node whose inputs are all
    weights or initializers (the layout ``Transpose``/``Reshape``/``Squeeze`` tf2onnx puts on
    weights, BatchNorm's ``Add``/``Sqrt``/``Reciprocal``/``Mul``/``Sub``, ...) is evaluated in
    numpy, and only the values the remaining graph consumes become initializers. Values are
    computed one at a time and written out at once, so the extra memory is one tensor (plus
    the initializers themselves when ``data_path`` is None). With ``data_path``, tensors of at
    least ``external_min_bytes`` go to that file (ONNX external data, offsets aligned to
    ``align`` bytes, location relative to the model's folder).

    Returns ``proto`` modified in place.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = proto.graph
    const_names = set(weight_inputs) | {t.name for t in graph.initializer}
    initializers = {t.name: t for t in graph.initializer}
    producers = {}
    kept_nodes = []
    for node in graph.node:  # tf2onnx emits nodes in topological order
        foldable = (node.op_type not in _FOLDABLE_BLOCKLIST and node.domain in ("", "ai.onnx")
                    and any(node.input)
                    and all((not i) or i in const_names for i in node.input)
                    and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                for a in node.attribute))
        if foldable:
            for out in node.output:
                const_names.add(out)
                producers[out] = node
        else:
            kept_nodes.append(node)

    graph_outputs = [o.name for o in graph.output]

    cache = {}
    derived = {}  # name -> (function, source constant)

    def value(name):
        if name in cache:
            return cache[name]
        if name in derived:
            function, source = derived[name]
            result = function(value(source))
        elif name in weight_inputs:
            result = load(name)
        elif name in initializers:
            result = numpy_helper.to_array(initializers[name])
        else:
            node = producers[name]
            args = [value(i) if i else None for i in node.input]
            outs = _eval_node(node, args)
            result = outs[list(node.output).index(name)]
            del args, outs
        result = np.asarray(result)
        if result.nbytes <= small_cache_bytes:
            cache[name] = result
        return result

    kept_nodes = _fuse_conv_bias(kept_nodes, const_names, graph_outputs, value, derived)
    needed = []  # constants the remaining graph needs, in first-use order
    for node in kept_nodes:
        for name in node.input:
            if name and name in const_names and name not in needed:
                needed.append(name)
    needed += [name for name in graph_outputs if name in const_names and name not in needed]

    new_inits = []
    handle = open(data_path, "wb") if data_path else None
    location = os.path.basename(data_path) if data_path else None
    try:
        for name in needed:
            array = _c_contiguous(value(name))
            if handle is not None and array.nbytes >= external_min_bytes:
                if sys.byteorder != "little":
                    array = array.astype(array.dtype.newbyteorder("<"))
                offset = handle.tell()
                pad = (-offset) % align
                if pad:
                    handle.write(b"\0" * pad)
                    offset += pad
                handle.write(memoryview(array).cast("B"))
                tensor = onnx.TensorProto(
                    name=name, dims=array.shape,
                    data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype),
                    data_location=onnx.TensorProto.EXTERNAL)
                for key, val in (("location", location), ("offset", str(offset)),
                                 ("length", str(array.nbytes))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, val
            else:
                tensor = numpy_helper.from_array(array, name=name)
            new_inits.append(tensor)
            del array
    finally:
        if handle is not None:
            handle.close()
    cache.clear()

    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    del new_inits
    kept_inputs = [i for i in graph.input if i.name not in weight_inputs]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    del graph.node[:]
    graph.node.extend(kept_nodes)
    # value_info of folded tensors is stale; keep only tensors still produced by a node
    produced = {o for n in kept_nodes for o in n.output}
    kept_vi = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(kept_vi)
    return proto


def _fuse_conv_bias(nodes, const_names, graph_outputs, value, derived):
    """Fold ``Add(Conv(x, W), b)`` with a per-channel constant ``b`` into ``Conv(x, W, b)``.

    tf2onnx fuses biases into convolutions only when they are constants at conversion time;
    with weights as inputs one (the 1x1 head) stays a separate ``Add``. ``b`` may have shape
    ``(C,)`` broadcast on the last axis only when C == 1, ``(1, C, 1, 1)`` or ``(C, 1, 1)``.
    Returns the new node list; fused biases become ``derived`` constants.
    """
    import numpy as np

    consumers = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    removed = set()
    for node in nodes:
        if node.op_type not in ("Conv", "ConvTranspose") or len([i for i in node.input if i]) != 2:
            continue
        out = node.output[0]
        users = consumers.get(out, [])
        if len(users) != 1 or users[0].op_type != "Add" or out in graph_outputs:
            continue
        add = users[0]
        other = add.input[1] if add.input[0] == out else add.input[0]
        if other not in const_names or node.input[1] not in const_names:
            continue
        bias = value(other)
        kernel_shape = value(node.input[1]).shape
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        channels = kernel_shape[0] if node.op_type == "Conv" else kernel_shape[1] * group
        spatial = len(kernel_shape) - 2
        if bias.dtype != np.float32 or bias.size not in (1, channels) or bias.ndim > spatial + 2:
            continue
        if bias.size > 1 and (bias.ndim < spatial + 1 or bias.shape[-spatial - 1] != bias.size):
            continue  # not laid out along the channel axis of NCHW
        name = f"{other}__conv_bias"
        derived[name] = (lambda b, c=channels: np.broadcast_to(b.reshape(-1), (c,)).copy(), other)
        const_names.add(name)
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
        node.output[0] = add.output[0]
        removed.add(id(add))
    return [n for n in nodes if id(n) not in removed]


def _c_contiguous(array):
    """C-contiguous copy if needed, keeping 0-d arrays 0-d (np.ascontiguousarray makes them 1-d)."""
    import numpy as np

    array = np.asarray(array)
    return array if array.flags.c_contiguous else array.copy(order="C")


def _eval_node(node, args):
    """Evaluate one ONNX node on numpy arrays (numpy fast paths, else onnx's reference)."""
    import numpy as np
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    if op == "Transpose":
        perm = attrs.get("perm")
        return [_c_contiguous(np.transpose(args[0], perm))]
    if op == "Identity":
        return [args[0]]
    if op == "Reshape" and not attrs.get("allowzero", 0):
        shape = [int(s) for s in args[1]]
        shape = [args[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return [np.reshape(args[0], shape)]
    if op in ("Squeeze", "Unsqueeze"):
        axes = attrs.get("axes")
        if axes is None and len(args) > 1 and args[1] is not None:
            axes = [int(a) for a in args[1]]
        if op == "Squeeze":
            return [np.squeeze(args[0], axis=None if axes is None else tuple(axes))]
        rank = args[0].ndim + len(axes)
        return [np.expand_dims(args[0], tuple(a % rank for a in axes))]
    binary = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}
    if op in binary and args[0].dtype == args[1].dtype and args[0].dtype.kind == "f":
        return [binary[op](args[0], args[1])]
    unary = {"Sqrt": np.sqrt, "Neg": np.negative}
    if op in unary and args[0].dtype.kind == "f":
        return [unary[op](args[0])]
    if op == "Reciprocal" and args[0].dtype.kind == "f":
        return [np.reciprocal(args[0])]
    from onnx.reference import ReferenceEvaluator
    feeds = {name: arg for name, arg in zip(node.input, args) if name}
    return ReferenceEvaluator(node).run(None, feeds)
