"""Bind the weights of a weight-free converted graph: the weight-only subgraph tf2onnx emitted
(kernel layout transposes, bias reshapes, BatchNorm arithmetic) is replayed in numpy one tensor at a
time and its results become initializers, streamed to an external-data file when asked
(:func:`bind_weights`, used by :func:`flexunet.export.keras2onnx.export_keras_to_onnx`)."""

import os
import sys

MB = 1024 ** 2


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
    graph = proto.graph
    const_names = set(weight_inputs) | {t.name for t in graph.initializer}
    producers, kept_nodes = _split_foldable(graph.node, const_names)
    graph_outputs = [o.name for o in graph.output]
    values = _ConstantValues(load, weight_inputs, {t.name: t for t in graph.initializer}, producers,
                             small_cache_bytes)
    kept_nodes = _fuse_conv_bias(kept_nodes, const_names, graph_outputs, values.value, values.derived)
    needed = []  # constants the remaining graph needs, in first-use order
    for node in kept_nodes:
        for name in node.input:
            if name and name in const_names and name not in needed:
                needed.append(name)
    needed += [name for name in graph_outputs if name in const_names and name not in needed]
    new_inits = _write_initializers(needed, values.value, data_path, external_min_bytes, align)
    values.cache.clear()
    _replace_graph(graph, new_inits, kept_nodes, weight_inputs)
    return proto


def _split_foldable(nodes, const_names):
    """Nodes whose inputs are all constants (weights or initializers) fold: returns their outputs'
    producers and the nodes that stay; ``const_names`` gains the folded outputs."""
    import onnx

    producers, kept_nodes = {}, []
    for node in nodes:  # tf2onnx emits nodes in topological order
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
    return producers, kept_nodes


class _ConstantValues:
    """Values of the graph's constants, computed in numpy on demand: weights loaded, initializers
    read, folded nodes evaluated, ``derived`` ones (fused biases: name -> (function, source))
    derived; values up to ``small_cache_bytes`` are kept in :attr:`cache`."""

    def __init__(self, load, weight_inputs, initializers, producers, small_cache_bytes):
        self.load, self.weight_inputs, self.initializers = load, weight_inputs, initializers
        self.producers, self.small_cache_bytes = producers, small_cache_bytes
        self.cache = {}
        self.derived = {}

    def value(self, name):
        import numpy as np
        from onnx import numpy_helper

        if name in self.cache:
            return self.cache[name]
        if name in self.derived:
            function, source = self.derived[name]
            result = function(self.value(source))
        elif name in self.weight_inputs:
            result = self.load(name)
        elif name in self.initializers:
            result = numpy_helper.to_array(self.initializers[name])
        else:
            node = self.producers[name]
            args = [self.value(i) if i else None for i in node.input]
            outs = _eval_node(node, args)
            result = outs[list(node.output).index(name)]
            del args, outs
        result = np.asarray(result)
        if result.nbytes <= self.small_cache_bytes:
            self.cache[name] = result
        return result


def _write_initializers(needed, value, data_path, external_min_bytes, align):
    """Initializers of the ``needed`` constants, computed one at a time; with ``data_path``, those
    of at least ``external_min_bytes`` written to that file (ONNX external data)."""
    from onnx import numpy_helper

    new_inits = []
    handle = open(data_path, "wb") if data_path else None
    location = os.path.basename(data_path) if data_path else None
    try:
        for name in needed:
            array = _c_contiguous(value(name))
            if handle is not None and array.nbytes >= external_min_bytes:
                tensor = _external_tensor(handle, name, array, location, align)
            else:
                tensor = numpy_helper.from_array(array, name=name)
            new_inits.append(tensor)
            del array
    finally:
        if handle is not None:
            handle.close()
    return new_inits


def _external_tensor(handle, name, array, location, align):
    """Write ``array`` (little-endian, at an offset aligned to ``align``) to the external-data file
    ``handle`` and return the TensorProto that points at it."""
    import onnx

    if sys.byteorder != "little":
        array = array.astype(array.dtype.newbyteorder("<"))
    offset = handle.tell()
    pad = (-offset) % align
    if pad:
        handle.write(b"\0" * pad)
        offset += pad
    handle.write(memoryview(array).cast("B"))
    tensor = onnx.TensorProto(name=name, dims=array.shape,
                              data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype),
                              data_location=onnx.TensorProto.EXTERNAL)
    for key, val in (("location", location), ("offset", str(offset)), ("length", str(array.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, val
    return tensor


def _replace_graph(graph, new_inits, kept_nodes, weight_inputs):
    """The graph with the new initializers and the kept nodes, without the weight inputs and
    without the value_info of folded tensors (stale)."""
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    del new_inits[:]
    kept_inputs = [i for i in graph.input if i.name not in weight_inputs]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    del graph.node[:]
    graph.node.extend(kept_nodes)
    produced = {o for n in kept_nodes for o in n.output}
    kept_vi = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(kept_vi)


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
