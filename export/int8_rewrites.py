"""Exact rewrites of an FP32 ONNX UNet that let ONNX Runtime run its INT8 version on fast CPU kernels.

Each rewrite computes the same function in FP32 (tests check it with ONNX Runtime); what changes is
which kernels the quantised graph gets: :func:`input_as_matmul` pads the input channels to a
multiple of 4 inside the input scaling, :func:`convtranspose_as_conv` turns the up-sampling into a
1x1 convolution plus a pixel shuffle, :func:`widen_narrow_convs` pads narrow layers to 16 output
channels, :func:`pointwise_as_matmul` runs chosen 1x1 convolutions as channels-last MatMuls.
:func:`quantize_int8 <flexunet.export.int8_quantize.quantize_int8>` says what each one gains.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Input channels MLAS's symmetric u8s8 convolution needs a multiple of.
CONV_SYM_CHANNEL_MULTIPLE = 4
#: Output channels MLAS's fast symmetric u8s8 convolution (MlasConvSym, indirect-buffer kernel) needs.
CONV_SYM_MIN_CHANNELS = 16


# -- graph helpers shared by the INT8 modules -------------------------------------------------------
def consumers(model) -> dict[str, list]:
    """Tensor name -> the nodes that read it."""
    out: dict[str, list] = {}
    for n in model.graph.node:
        for t in n.input:
            out.setdefault(t, []).append(n)
    return out


def attributes(node) -> dict:
    """A node's attributes as Python values."""
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def initializers(model) -> dict:
    """Initializer name -> its TensorProto (changed in place by :func:`store`)."""
    return {i.name: i for i in model.graph.initializer}


def array_of(inits: dict, name: str) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(inits[name])


def store(inits: dict, name: str, value: np.ndarray) -> None:
    """Replace initializer ``name``'s value in place."""
    from onnx import numpy_helper

    inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))


def with_nodes(model, nodes: list):
    """``model`` with ``nodes`` as its graph (in that order), unused initializers dropped and
    shapes inferred again: the one way the rewrites replace nodes."""
    import onnx

    g = model.graph
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


def tensor_dims(model) -> dict[str, list[int]]:
    """Tensor name -> its static dimensions (0 where unknown), from the model's shape information."""
    g = model.graph
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(g.value_info) + list(g.input) + list(g.output)}


def input_nodes(model) -> list[str]:
    """Names of the nodes from the graph inputs up to and including the first Conv(s)."""
    readers = consumers(model)
    found, seen = [], set()
    todo = [i.name for i in model.graph.input]
    while todo:
        for n in readers.get(todo.pop(), []):
            if n.name not in seen:
                seen.add(n.name)
                found.append(n.name)
                if n.op_type != "Conv":
                    todo.extend(n.output)
    return found


def output_convs(model) -> list[str]:
    """1x1 convolutions whose outputs reach a graph output through layout and activation ops only
    (the UNet's output layer)."""
    outputs = {o.name for o in model.graph.output}
    readers = consumers(model)
    passthrough = ("Sigmoid", "Softmax", "Transpose", "Reshape", "Identity")

    def reaches_output(tensor, seen=0):
        if tensor in outputs:
            return True
        nxt = readers.get(tensor, [])
        return bool(nxt) and seen < 8 and all(n.op_type in passthrough and reaches_output(n.output[0], seen + 1)
                                              for n in nxt)

    inits = initializers(model)
    return [n.name for n in model.graph.node
            if n.op_type == "Conv" and n.input[1] in inits and list(inits[n.input[1]].dims[2:]) == [1, 1]
            and reaches_output(n.output[0])]


# -- the input scaling as one channel-padding MatMul ------------------------------------------------
@dataclass
class InputRange:
    """Where the input's pixel grid can be quantised exactly: the tensors that carry the scaled
    input to the first convolution and the largest multiplier applied to the input on the way."""

    tensors: list[str]
    gain: float


@dataclass
class _InputScaling:
    """The per-channel Mul/Add chain on the graph input (as Keras Rescaling exports it), the
    NHWC->NCHW Transpose after it and the first convolution that reads that."""

    scale: np.ndarray
    offset: np.ndarray
    removed: list
    transpose: object
    conv: object


def _input_scaling(model, channels: int) -> _InputScaling | None:
    """The input scaling ahead of the first convolution, or None when the graph does not start
    with (Mul) (Add) Transpose(0, 3, 1, 2) Conv(group 1) on the input."""
    from onnx import numpy_helper

    g = model.graph
    inits = initializers(model)
    readers = consumers(model)

    def only_reader(tensor):
        c = readers.get(tensor, [])
        return c[0] if len(c) == 1 else None

    def per_channel(node, tensor):
        other = [t for t in node.input if t != tensor]
        if len(other) != 1 or other[0] not in inits:
            return None
        v = numpy_helper.to_array(inits[other[0]]).astype(np.float64)
        if v.size not in (1, channels) or (v.ndim and v.shape[-1] != v.size):
            return None
        return np.broadcast_to(v.reshape(-1), (channels,))

    tensor, scale, offset, removed = g.input[0].name, np.ones(channels), np.zeros(channels), []
    node = only_reader(tensor)
    for op in ("Mul", "Add"):
        value = per_channel(node, tensor) if node is not None and node.op_type == op else None
        if value is not None:
            scale, offset = (scale * value, offset) if op == "Mul" else (scale, offset + value)
            removed.append(node)
            tensor = node.output[0]
            node = only_reader(tensor)
    transpose = node
    conv = only_reader(transpose.output[0]) if transpose is not None else None
    perm = list(attributes(transpose).get("perm", [])) if transpose is not None and \
        transpose.op_type == "Transpose" else None
    if (perm != [0, 3, 1, 2] or conv is None or conv.op_type != "Conv" or conv.input[0] != transpose.output[0]
            or conv.input[1] not in inits or attributes(conv).get("group", 1) != 1):
        return None
    return _InputScaling(scale, offset, removed, transpose, conv)


def _scaling_nodes(model, found: _InputScaling, channels: int, wide: int) -> tuple[list, str]:
    """The MatMul (and Add, for an offset) that replace the scaling, their initializers added to
    ``model``; returns the nodes and the tensor they end in."""
    from onnx import helper, numpy_helper

    g = model.graph
    p = "input_as_matmul"
    matrix = np.zeros((channels, wide), np.float32)
    matrix[np.arange(channels), np.arange(channels)] = found.scale
    new = [helper.make_node("MatMul", [g.input[0].name, p + "_w"], [p + "_out"], p)]
    g.initializer.append(numpy_helper.from_array(matrix, p + "_w"))
    last = p + "_out"
    if found.offset.any():
        g.initializer.append(numpy_helper.from_array(
            np.pad(found.offset, (0, wide - channels)).astype(np.float32).reshape(1, 1, 1, wide), p + "_b"))
        new.append(helper.make_node("Add", [last, p + "_b"], [p + "_biased"], p + "_offset"))
        last = p + "_biased"
    return new, last


def input_as_matmul(model, multiple: int = CONV_SYM_CHANNEL_MULTIPLE):
    """Rewrite the input scaling (Mul and Add by constants, as Keras Rescaling exports) ahead of
    the first convolution as one channels-last MatMul that also pads the channels with zeros to a
    multiple of ``multiple``; the convolution gets zero weights for the new channels.  Returns the
    model and an :class:`InputRange` (None when unchanged).

    Exact (the MatMul multiplies by a diagonal matrix: one product per output, the rest exact
    zeros).  With 3 input channels ONNX Runtime cannot run the first convolution with its fast
    symmetric u8s8 kernel (input channels must be a multiple of 4), and keeping it FP32 cost more
    than its multiply-adds: NCHWc reorders of its full-resolution output before the quantisation
    (measured: ~10% of the INT8 time).  A channel Pad instead of the MatMul took 10% too.
    """
    g = model.graph
    if len(g.input) != 1:
        return model, None
    dims = [d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    channels = dims[-1] if len(dims) == 4 else 0
    if not channels or channels % multiple == 0:
        return model, None
    found = _input_scaling(model, channels)
    if found is None:
        return model, None
    wide = -(-channels // multiple) * multiple
    new, last = _scaling_nodes(model, found, channels, wide)
    found.transpose.input[0] = last
    inits = initializers(model)
    w = array_of(inits, found.conv.input[1])
    store(inits, found.conv.input[1], np.pad(w, [(0, 0), (0, wide - channels)] + [(0, 0)] * (w.ndim - 2)))
    nodes = list(g.node)
    at = min((nodes.index(n) for n in found.removed), default=nodes.index(found.transpose))
    kept = [n for n in nodes if n not in found.removed]
    kept[at:at] = new
    exact = None if found.offset.any() or (found.scale < 0).any() else \
        InputRange([last, found.transpose.output[0]], float(found.scale.max()))
    return with_nodes(model, kept), exact


# -- up-sampling as a 1x1 convolution and a pixel shuffle -------------------------------------------
def _is_2x2_upsampling(n, inits: dict, out: list[int]) -> bool:
    """A 2x2/stride-2 ConvTranspose without padding, groups or dilation, with constant weights
    (and bias) and a static 4-D output."""
    if n.op_type != "ConvTranspose":
        return False
    a = attributes(n)
    return (list(a.get("kernel_shape", [])) == [2, 2] and list(a.get("strides", [])) == [2, 2]
            and a.get("group", 1) == 1 and not any(a.get("pads", [])) and not any(a.get("output_padding", []))
            and list(a.get("dilations", [1, 1])) == [1, 1] and "output_shape" not in a and n.input[1] in inits
            and (len(n.input) < 3 or n.input[2] in inits) and len(out) == 4 and all(out[1:]))


def _conv_and_shuffle(g, n, inits: dict, out: list[int]) -> list:
    """The nodes that replace ConvTranspose ``n`` (their initializers added to graph ``g``)."""
    from onnx import helper, numpy_helper

    w = numpy_helper.to_array(inits[n.input[1]])  # (in, out, 2, 2)
    c, width = w.shape[1], out[3]
    p = n.output[0] + "_as_conv"
    new = [numpy_helper.from_array(w.transpose(2, 3, 1, 0).reshape(4 * c, w.shape[0], 1, 1), p + "_w"),
           numpy_helper.from_array(np.array([0, 0, 0, 2, 2, c], np.int64), p + "_shape6"),
           numpy_helper.from_array(np.array([0, -1, width, c], np.int64), p + "_shape4")]
    if len(n.input) > 2:
        new.append(numpy_helper.from_array(np.tile(numpy_helper.to_array(inits[n.input[2]]), 4), p + "_b"))
    g.initializer.extend(new)
    t = [p + f"_{i}" for i in range(5)]
    return [helper.make_node("Conv", [n.input[0], p + "_w"] + ([p + "_b"] if len(n.input) > 2 else []),
                             [t[0]], p, kernel_shape=[1, 1]),
            helper.make_node("Transpose", [t[0]], [t[1]], p + "_nhwc", perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", [t[1], p + "_shape6"], [t[2]], p + "_split"),
            helper.make_node("Transpose", [t[2]], [t[3]], p + "_shuffle", perm=[0, 1, 3, 2, 4, 5]),
            helper.make_node("Reshape", [t[3], p + "_shape4"], [t[4]], p + "_merge"),
            helper.make_node("Transpose", [t[4]], list(n.output), p + "_nchw", perm=[0, 3, 1, 2])]


def convtranspose_as_conv(model):
    """Rewrite 2x2/stride-2 ConvTranspose layers (UNet up-sampling) as a 1x1 Conv plus a pixel
    shuffle written in channels-last order (Transpose, Reshape, Transpose, Reshape, Transpose).

    Exact.  ONNX Runtime has no int8 ConvTranspose on CPU: it ran in float between DQ/Q pairs,
    with uint8 NHWC<->NCHW transposes around it and its skip connection on every level.  The 1x1
    Conv becomes a QLinearConv, and the layout transposes cancel against ONNX Runtime's own
    NHWC ones, so the decoder stays in NHWC uint8.  Needs static spatial sizes (else unchanged).
    """
    import onnx

    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    inits = initializers(model)
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in g.value_info}
    nodes = []
    for n in g.node:
        out = dims.get(n.output[0], [])
        nodes += _conv_and_shuffle(g, n, inits, out) if _is_2x2_upsampling(n, inits, out) else [n]
    return with_nodes(model, nodes)


# -- narrow layers widened to the fast kernel's channel count ---------------------------------------
def _plain_conv(node, inits: dict) -> bool:
    return node.op_type == "Conv" and attributes(node).get("group", 1) == 1 and node.input[1] in inits


def _widened_readers(model, tensor: str, width: int, inits: dict) -> list | None:
    """The convolutions that read a convolution's output ``tensor`` (``width`` channels), through
    Relu, MaxPool and channel Concat, each with the input channel where the new channels arrive;
    None when the output reaches anything else (a graph output, another op)."""
    dims = tensor_dims(model)
    readers_of = consumers(model)
    outputs = {o.name for o in model.graph.output}
    todo, readers = [(tensor, width)], []
    while todo:
        tensor, offset = todo.pop()
        if tensor in outputs:
            return None
        for n in readers_of.get(tensor, []):
            if n.op_type in ("Relu", "MaxPool"):
                todo.append((n.output[0], offset))
            elif n.op_type == "Concat" and attributes(n).get("axis") == 1:
                widths = [dims.get(t, [0, 0])[1] for t in n.input[:list(n.input).index(tensor)]]
                if not all(w > 0 for w in widths):
                    return None
                todo.append((n.output[0], offset + sum(widths)))
            elif _plain_conv(n, inits) and n.input[0] == tensor:
                readers.append((n, offset))
            else:
                return None
    return readers


def widen_narrow_convs(model, channels: int = CONV_SYM_MIN_CHANNELS):
    """Zero-pad Conv layers with ``channels``/2 to ``channels`` output channels to ``channels``.

    Exact (padded filters and biases are 0, ReLU keeps them 0, consumers get zero input weights),
    but it lets ONNX Runtime run those layers with its fast symmetric int8 convolution, which needs
    >= 16 output channels; narrow full-resolution layers otherwise take the much slower im2col +
    GEMM path.  The padding follows the output through Relu/MaxPool/Concat(axis 1) to the Convs
    that read it; a Conv whose output reaches anything else is left as it is.
    """
    import onnx

    inits = initializers(model)
    for conv in [n for n in model.graph.node if _plain_conv(n, inits)]:
        weight = array_of(inits, conv.input[1])
        extra = channels - weight.shape[0]
        if not 0 < extra <= weight.shape[0] or (len(conv.input) > 2 and conv.input[2] not in inits):
            continue
        model = onnx.shape_inference.infer_shapes(model)
        inits = initializers(model)
        readers = _widened_readers(model, conv.output[0], weight.shape[0], inits)
        if readers is None:
            continue
        store(inits, conv.input[1], np.pad(array_of(inits, conv.input[1]),
                                           [(0, extra)] + [(0, 0)] * (weight.ndim - 1)))
        if len(conv.input) > 2:
            store(inits, conv.input[2], np.pad(array_of(inits, conv.input[2]), (0, extra)))
        for n, offset in readers:
            store(inits, n.input[1], np.insert(array_of(inits, n.input[1]), [offset] * extra, 0, axis=1))
        del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


# -- 1x1 convolutions as channels-last MatMuls ------------------------------------------------------
def _pointwise_weight(n, names: set[str], inits: dict) -> np.ndarray | None:
    """The (out, in, 1, 1) weights of ``n`` when it is a plain 1x1 convolution named in ``names``."""
    if n.op_type != "Conv" or n.input[1] not in inits or n.name not in names:
        return None
    a = attributes(n)
    w = array_of(inits, n.input[1])
    if (w.ndim != 4 or w.shape[2:] != (1, 1) or a.get("group", 1) != 1 or any(a.get("pads", []))
            or any(v != 1 for v in a.get("strides", [1, 1])) or (len(n.input) > 2 and n.input[2] not in inits)):
        return None
    return w


def pointwise_as_matmul(model, names: set[str]):
    """A copy of ``model`` in which the 1x1 convolutions named in ``names`` are channels-last
    MatMul + Add between transposes (exact); returns it and the names of the nodes added.

    For 1x1 convolutions kept in FP32 amid INT8 layers (the UNet's output layer): ONNX Runtime
    keeps uint8 activations channels-last, and a float Conv there costs a layout conversion of its
    whole input, which took most of its time at full resolution; MatMul reads channels-last data
    as it is, and the transposes cancel against ONNX Runtime's own."""
    import copy

    from onnx import helper, numpy_helper

    model = copy.deepcopy(model)
    g = model.graph
    inits = initializers(model)
    nodes, added = [], []
    for n in g.node:
        w = _pointwise_weight(n, names, inits)
        if w is None:
            nodes.append(n)
            continue
        p = n.name + "_mm"
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w[:, :, 0, 0].T), p + "_w"))
        t = [p + "_nhwc", p + "_out", p + "_biased"]
        nodes += [helper.make_node("Transpose", [n.input[0]], [t[0]], p + "_to_nhwc", perm=[0, 2, 3, 1]),
                  helper.make_node("MatMul", [t[0], p + "_w"], [t[1]], n.name)]
        last = t[1]
        added += [p + "_to_nhwc"]
        if len(n.input) > 2:  # bias shaped (1, 1, 1, C): ONNX Runtime's Add broadcasts a (C,) one slowly
            b = array_of(inits, n.input[2]).reshape(1, 1, 1, -1)
            g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(b), p + "_b"))
            nodes.append(helper.make_node("Add", [t[1], p + "_b"], [t[2]], p + "_bias"))
            last = t[2]
            added.append(p + "_bias")
        nodes.append(helper.make_node("Transpose", [last], list(n.output), p + "_to_nchw", perm=[0, 3, 1, 2]))
        added.append(p + "_to_nchw")
    del g.node[:]
    g.node.extend(nodes)
    return model, added
