"""CPU artifacts: an ONNX Runtime graph-optimised model and a statically quantised INT8 (QDQ) model."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from flexunet.core.errors import FlexunetError
from flexunet.core.machine import cpu_has_vnni


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
    _copy_metadata(src, dest)
    return dest


def _copy_metadata(src: Path, dest: Path, precision: str | None = None) -> None:
    import onnx

    from flexunet.core.modelinfo import METADATA_KEY, ModelInfo

    a = onnx.load_model(str(src), load_external_data=False)
    b = onnx.load_model(str(dest))
    props = {p.key: p.value for p in a.metadata_props}
    if precision is not None and METADATA_KEY in props:
        info = ModelInfo.from_json(props[METADATA_KEY])
        info.precision = precision
        props.update(info.to_metadata())
    del b.metadata_props[:]
    for k, v in props.items():
        e = b.metadata_props.add()
        e.key, e.value = k, v
    onnx.save_model(b, str(dest))


class _TileReader:
    """onnxruntime.quantization CalibrationDataReader over an array of tiles, one at a time."""

    def __init__(self, input_name: str, tiles: np.ndarray, batch_size: int = 1):
        self.input_name = input_name
        self.tiles = tiles
        self.batch_size = batch_size
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.tiles):
            return None
        batch = self.tiles[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self):
        self.pos = 0


WEIGHT_BITS = ("auto", "7", "8")


def int8_weight_bits(choice: str = "auto") -> int:
    """Bits of INT8 weights: 8 (full range) or 7 (``reduce_range``); ``auto`` decides by this CPU.

    Without VNNI (AVX2-only CPUs) ONNX Runtime's u8s8 kernels add pairs of u8*s8 products in 16
    bits, which saturate with full-range weights: measured on the demo model, mask dice vs FP32 0.73
    with 8-bit weights and 0.996 with 7-bit ones.  VNNI accumulates in 32 bits, so full range is safe
    and more precise there.  The model carries the choice in its metadata; a model quantised with
    8-bit weights loses accuracy on a CPU without VNNI.
    """
    if choice not in WEIGHT_BITS:
        raise FlexunetError(f"INT8 weight bits must be one of {', '.join(WEIGHT_BITS)}, not {choice!r}")
    if choice == "auto":
        return 8 if cpu_has_vnni() else 7
    return int(choice)


#: Op types quantised.  Not the input scaling nor Sigmoid/Softmax: the probabilities stay float (an
#: 8-bit sigmoid output would quantise them in steps of 1/255).  Transpose/Reshape carry the
#: pixel shuffle of :func:`_convtranspose_as_conv` in uint8.  MatMul is the output layer
#: (:func:`_pointwise_as_matmul`), whose output is not quantised (:data:`FLOAT_OUTPUT_OP_TYPES`).
INT8_OP_TYPES = ("Conv", "ConvTranspose", "MaxPool", "Concat", "Relu", "Transpose", "Reshape", "MatMul")
#: Op types whose outputs stay float: the output layer's MatMul reads uint8 and int8 weights and
#: writes float logits (ONNX Runtime's MatMulIntegerToFloat), so the logits are not rounded to
#: 8 bits before the sigmoid (measured on the Tiled-MultipleMyeloma UNet: mask dice vs FP32
#: 0.9879 with 8-bit logits, 0.9897 with float ones).
FLOAT_OUTPUT_OP_TYPES = ("MatMul",)
#: Input channels MLAS's symmetric u8s8 convolution needs a multiple of.
_CONV_SYM_CHANNEL_MULTIPLE = 4
#: Output channels MLAS's fast symmetric u8s8 convolution (MlasConvSym, indirect-buffer kernel) needs.
_CONV_SYM_MIN_CHANNELS = 16


def _consumers(model) -> dict[str, list]:
    """Tensor name -> the nodes that read it."""
    out: dict[str, list] = {}
    for n in model.graph.node:
        for t in n.input:
            out.setdefault(t, []).append(n)
    return out


def _with_nodes(model, nodes: list):
    """``model`` with ``nodes`` as its graph (in that order), unused initializers dropped and
    shapes inferred again."""
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


def _input_nodes(model) -> list[str]:
    """Names of the nodes from the graph inputs up to and including the first Conv(s)."""
    consumers = _consumers(model)
    found, seen = [], set()
    todo = [i.name for i in model.graph.input]
    while todo:
        for n in consumers.get(todo.pop(), []):
            if n.name not in seen:
                seen.add(n.name)
                found.append(n.name)
                if n.op_type != "Conv":
                    todo.extend(n.output)
    return found


@dataclass
class InputRange:
    """Where the input's pixel grid can be quantised exactly: the tensors that carry the scaled
    input to the first convolution and the largest multiplier applied to the input on the way."""

    tensors: list[str]
    gain: float


def _input_as_matmul(model, multiple: int = _CONV_SYM_CHANNEL_MULTIPLE):
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
    from onnx import helper, numpy_helper

    g = model.graph
    if len(g.input) != 1:
        return model, None
    dims = [d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    channels = dims[-1] if len(dims) == 4 else 0
    if not channels or channels % multiple == 0:
        return model, None
    inits = {i.name: i for i in g.initializer}
    consumers = _consumers(model)

    def only_consumer(tensor):
        c = consumers.get(tensor, [])
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
    node = only_consumer(tensor)
    for op in ("Mul", "Add"):
        if node is not None and node.op_type == op and per_channel(node, tensor) is not None:
            if op == "Mul":
                scale = scale * per_channel(node, tensor)
            else:
                offset = offset + per_channel(node, tensor)
            removed.append(node)
            tensor = node.output[0]
            node = only_consumer(tensor)
    transpose = node
    conv = only_consumer(transpose.output[0]) if transpose is not None else None
    perm = next((list(helper.get_attribute_value(a)) for a in transpose.attribute if a.name == "perm"), None) \
        if transpose is not None and transpose.op_type == "Transpose" else None
    if (perm != [0, 3, 1, 2] or conv is None or conv.op_type != "Conv" or conv.input[0] != transpose.output[0]
            or conv.input[1] not in inits or any(helper.get_attribute_value(a) != 1
                                                  for a in conv.attribute if a.name == "group")):
        return model, None

    wide = -(-channels // multiple) * multiple
    p = "input_as_matmul"
    matrix = np.zeros((channels, wide), np.float32)
    matrix[np.arange(channels), np.arange(channels)] = scale
    new = [helper.make_node("MatMul", [g.input[0].name, p + "_w"], [p + "_out"], p)]
    g.initializer.append(numpy_helper.from_array(matrix, p + "_w"))
    last = p + "_out"
    if offset.any():
        g.initializer.append(numpy_helper.from_array(
            np.pad(offset, (0, wide - channels)).astype(np.float32).reshape(1, 1, 1, wide), p + "_b"))
        new.append(helper.make_node("Add", [last, p + "_b"], [p + "_biased"], p + "_offset"))
        last = p + "_biased"
    transpose.input[0] = last
    w = numpy_helper.to_array(inits[conv.input[1]])
    inits[conv.input[1]].CopyFrom(numpy_helper.from_array(
        np.pad(w, [(0, 0), (0, wide - channels)] + [(0, 0)] * (w.ndim - 2)), conv.input[1]))
    nodes = list(g.node)
    at = min((nodes.index(n) for n in removed), default=nodes.index(transpose))
    kept = [n for n in nodes if n not in removed]
    kept[at:at] = new
    exact = None if offset.any() or (scale < 0).any() else InputRange([last, transpose.output[0]], float(scale.max()))
    return _with_nodes(model, kept), exact


def _output_convs(model) -> list[str]:
    """1x1 convolutions whose outputs reach a graph output through layout and activation ops only
    (the UNet's output layer)."""
    outputs = {o.name for o in model.graph.output}
    consumers = _consumers(model)
    passthrough = ("Sigmoid", "Softmax", "Transpose", "Reshape", "Identity")

    def reaches_output(tensor, seen=0):
        if tensor in outputs:
            return True
        nxt = consumers.get(tensor, [])
        return bool(nxt) and seen < 8 and all(n.op_type in passthrough and reaches_output(n.output[0], seen + 1)
                                              for n in nxt)

    inits = {i.name: i for i in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "Conv" and n.input[1] in inits and list(inits[n.input[1]].dims[2:]) == [1, 1]
            and reaches_output(n.output[0])]


def _convtranspose_as_conv(model):
    """Rewrite 2x2/stride-2 ConvTranspose layers (UNet up-sampling) as a 1x1 Conv plus a pixel
    shuffle written in channels-last order (Transpose, Reshape, Transpose, Reshape, Transpose).

    Exact.  ONNX Runtime has no int8 ConvTranspose on CPU: it ran in float between DQ/Q pairs,
    with uint8 NHWC<->NCHW transposes around it and its skip connection on every level.  The 1x1
    Conv becomes a QLinearConv, and the layout transposes cancel against ONNX Runtime's own
    NHWC ones, so the decoder stays in NHWC uint8.  Needs static spatial sizes (else unchanged).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in g.value_info}
    nodes = []
    for n in g.node:
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        out = dims.get(n.output[0], [])
        if not (n.op_type == "ConvTranspose" and list(a.get("kernel_shape", [])) == [2, 2]
                and list(a.get("strides", [])) == [2, 2] and a.get("group", 1) == 1
                and not any(a.get("pads", [])) and not any(a.get("output_padding", []))
                and list(a.get("dilations", [1, 1])) == [1, 1] and "output_shape" not in a and n.input[1] in inits
                and (len(n.input) < 3 or n.input[2] in inits) and len(out) == 4 and all(out[1:])):
            nodes.append(n)
            continue
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
        nodes += [helper.make_node("Conv", [n.input[0], p + "_w"] + ([p + "_b"] if len(n.input) > 2 else []),
                                   [t[0]], p, kernel_shape=[1, 1]),
                  helper.make_node("Transpose", [t[0]], [t[1]], p + "_nhwc", perm=[0, 2, 3, 1]),
                  helper.make_node("Reshape", [t[1], p + "_shape6"], [t[2]], p + "_split"),
                  helper.make_node("Transpose", [t[2]], [t[3]], p + "_shuffle", perm=[0, 1, 3, 2, 4, 5]),
                  helper.make_node("Reshape", [t[3], p + "_shape4"], [t[4]], p + "_merge"),
                  helper.make_node("Transpose", [t[4]], list(n.output), p + "_nchw", perm=[0, 3, 1, 2])]
    return _with_nodes(model, nodes)


def _widen_narrow_convs(model, channels: int = _CONV_SYM_MIN_CHANNELS):
    """Zero-pad Conv layers with ``channels``/2 to ``channels`` output channels to ``channels``.

    Exact (padded filters and biases are 0, ReLU keeps them 0, consumers get zero input weights),
    but it lets ONNX Runtime run those layers with its fast symmetric int8 convolution, which needs
    >= 16 output channels; narrow full-resolution layers otherwise take the much slower im2col +
    GEMM path.  The padding follows the output through Relu/MaxPool/Concat(axis 1) to the Convs
    that read it; a Conv whose output reaches anything else is left as it is.
    """
    import onnx
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}

    def array(name):
        return numpy_helper.to_array(inits[name])

    def store(name, value):
        inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))

    def attr(node, key, default=None):
        return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == key), default)

    def plain_conv(node):
        return node.op_type == "Conv" and attr(node, "group", 1) == 1 and node.input[1] in inits

    for conv in [n for n in g.node if plain_conv(n)]:
        weight = array(conv.input[1])
        extra = channels - weight.shape[0]
        if not 0 < extra <= weight.shape[0] or (len(conv.input) > 2 and conv.input[2] not in inits):
            continue
        model = onnx.shape_inference.infer_shapes(model)
        g = model.graph
        inits = {i.name: i for i in g.initializer}
        dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
                for v in list(g.value_info) + list(g.input) + list(g.output)}
        consumers = _consumers(model)
        outputs = {o.name for o in g.output}
        # (tensor, channel offset where the new channels go), then the readers' weights to pad
        todo, readers, ok = [(conv.output[0], weight.shape[0])], [], True
        while todo and ok:
            tensor, offset = todo.pop()
            ok = tensor not in outputs
            for n in consumers.get(tensor, []):
                if n.op_type in ("Relu", "MaxPool"):
                    todo.append((n.output[0], offset))
                elif n.op_type == "Concat" and attr(n, "axis") == 1:
                    before = n.input[:list(n.input).index(tensor)]
                    widths = [dims.get(t, [0, 0])[1] for t in before]
                    ok = ok and all(w > 0 for w in widths)
                    todo.append((n.output[0], offset + sum(widths)))
                elif plain_conv(n) and n.input[0] == tensor:
                    readers.append((n, offset))
                else:
                    ok = False
        if not ok:
            continue
        pad = [(0, extra)] + [(0, 0)] * (weight.ndim - 1)
        store(conv.input[1], np.pad(array(conv.input[1]), pad))
        if len(conv.input) > 2:
            store(conv.input[2], np.pad(array(conv.input[2]), (0, extra)))
        for n, offset in readers:
            w = array(n.input[1])
            store(n.input[1], np.insert(w, [offset] * extra, 0, axis=1))
        del g.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


def quantize_int8(src: Path, dest: Path, tiles: np.ndarray, input_name: str = "image",
                  method: str = "minmax", weight_bits: int = 7, float_first_conv: bool = False,
                  rewrite: bool = True, keep_float: tuple[str, ...] = ()) -> Path:
    """Static QDQ quantisation: per-channel int8 weights, uint8 activations, FP32 inputs/outputs.

    ``tiles`` are pre-processed calibration inputs (N, h, w, C).  The graph is first pre-processed
    (shape inference and fusions) as ONNX Runtime recommends.  ``weight_bits`` 7 quantises weights
    to a reduced range (see :func:`int8_weight_bits`).

    Measured with ONNX Runtime 1.31 on a 2-core AVX-512 VNNI CPU on the Tiled-MultipleMyeloma UNet
    (base_filters 8, 512x512 tiles; benchmarks/int8_speed.py, results/int8_speed_vnni.md).  Quantised
    as it comes, INT8 was only 1.4x faster than FP32: ONNX Runtime ran the 8-channel full-resolution
    convolutions and the 3-channel first one on slow paths, and the ConvTranspose in float between
    layout transposes.  Hence ``rewrite`` (all exact in FP32):

    * :func:`_input_as_matmul` pads the input channels to 4 inside the input scaling, so the first
      convolution runs INT8 on the fast kernel, quantised on the input's own uint8 grid, with its
      bias corrected for its rounded weights (:func:`_correct_first_conv_bias`);
    * :func:`_convtranspose_as_conv` keeps the decoder in uint8 NHWC;
    * :func:`_widen_narrow_convs` pads 8-channel layers to 16 channels for ONNX Runtime's symmetric
      u8s8 convolution (~1.6x faster there despite the extra zeros).

    Together: 2.0-2.2x FP32 with every convolution INT8, mask dice vs FP32 0.990.  The output layer
    reads uint8 and writes float logits (:data:`FLOAT_OUTPUT_OP_TYPES`); the sigmoid stays float
    (see :data:`INT8_OP_TYPES`).  Per-channel symmetric int8 weights, uint8 activations (u8s8, the
    VNNI path), MinMax calibration: entropy and percentile calibration gave no better dice and ran
    out of memory on 512x512 tiles; 7-bit weights lose accuracy (dice 0.89 then) and are only for
    CPUs without VNNI.  ``float_first_conv`` keeps the input scaling and the first convolution in
    FP32 (dice 0.992 there, ~10% slower), as :func:`tune_int8` may choose.

    ``keep_float`` names further nodes (of the prepared graph, see :func:`int8_candidates`) that
    stay FP32, as chosen by :func:`tune_int8`.
    """
    with _Prepared(src, dest, rewrite) as prep:
        prep.quantize(dest, tiles, input_name, method, weight_bits, float_first_conv, keep_float)
    _copy_metadata(src, dest, precision="int8")
    return dest


class _Prepared:
    """The FP32 graph as quantisation sees it (pre-processed, rewritten) in a temporary file beside
    ``dest``, with a calibration cache so that variants differing only in which nodes stay FP32
    are calibrated once (every :meth:`quantize` call gets the same calibration tiles)."""

    def __init__(self, src: Path, dest: Path, rewrite: bool = True):
        self.src, self.dest, self.rewrite = Path(src), Path(dest), rewrite
        self.path = self.dest.with_name(self.dest.stem + ".prep.onnx")
        self.cache = self.dest.with_name(self.dest.stem + ".calib.json")
        self.model = None
        self.input_range = None
        self.input_max = _input_max(self.src)
        self._bias_corrected: dict[int, object] = {}  # weight bits -> the graph, first layer corrected

    def __enter__(self):
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        try:
            quant_pre_process(str(self.src), str(self.path), skip_symbolic_shape=True)
            self.model = onnx.load_model(str(self.path))
            if self.rewrite:
                self.model, self.input_range = _input_as_matmul(self.model)
                self.model = _widen_narrow_convs(_convtranspose_as_conv(self.model))
                onnx.save_model(self.model, str(self.path))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)
        self.cache.unlink(missing_ok=True)

    def quantize(self, dest: Path, tiles: np.ndarray, input_name: str, method: str = "minmax",
                 weight_bits: int = 7, float_first_conv: bool = False, keep_float=()) -> None:
        if weight_bits not in (7, 8):
            raise FlexunetError(f"INT8 weight bits must be 7 or 8, not {weight_bits}")
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        first = _input_nodes(self.model)
        ops = {n.name: n.op_type for n in self.model.graph.node}
        # the input scaling stays float; the first convolution too if asked (or chosen)
        float_first_conv = float_first_conv or any(ops[n] == "Conv" and n in keep_float for n in first)
        exclude = first if float_first_conv else [n for n in first if ops[n] not in ("Conv", "Transpose")]
        exclude += _with_activations(self.model, [n for n in keep_float if n not in exclude])
        options = {"ActivationSymmetric": False, "WeightSymmetric": True,
                   "OpTypesToExcludeOutputQuantization": list(FLOAT_OUTPUT_OP_TYPES)}
        if not float_first_conv and self.input_range and self.input_max:
            # the input is a uint8 image times a constant: quantise on its own grid (exact, and
            # pixels brighter than any in the calibration tiles are not clipped)
            top = np.float32(self.input_max * self.input_range.gain)
            options["TensorQuantOverrides"] = {t: [{"rmin": np.float32(0.0), "rmax": top}]
                                               for t in self.input_range.tensors}
        cache = {"calibration_cache_path": str(self.cache)} if _HAS_CALIBRATION_CACHE else {}
        import onnx

        model = self.model
        if not float_first_conv:  # the same for every variant of a search: made once
            if weight_bits not in self._bias_corrected:
                self._bias_corrected[weight_bits] = _correct_first_conv_bias(model, tiles, weight_bits)
            model = self._bias_corrected[weight_bits]
        # 1x1 convolutions kept in FP32 run as float MatMul; the output layer as a MatMul with
        # uint8 input and float output
        model, added = _pointwise_as_matmul(model, set(keep_float))
        exclude += added
        model, _ = _pointwise_as_matmul(model, set(_output_convs(self.model)) - set(keep_float))
        graph = self.path.with_name(self.path.stem + ".q.onnx")
        onnx.save_model(model, str(graph))
        try:
            quantize_static(
                str(graph), str(dest), _TileReader(input_name, tiles),
                quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=weight_bits == 7,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=methods[method], op_types_to_quantize=list(INT8_OP_TYPES),
                nodes_to_exclude=exclude, extra_options=options, **cache)
        finally:
            graph.unlink(missing_ok=True)


def int8_rounded(w: np.ndarray, weight_bits: int = 8) -> np.ndarray:
    """Convolution weights (output channels first) as ONNX Runtime's quantiser rounds them: per
    output channel, symmetric, scale max|w| / 127 (/ 64 with 7-bit weights), ties to even."""
    qmax = 127.0 if weight_bits == 8 else 64.0
    scale = np.abs(w).reshape(len(w), -1).max(1) / qmax
    scale[scale == 0] = 1.0
    scale = scale.reshape((-1,) + (1,) * (w.ndim - 1))
    return np.clip(np.round(w / scale), -qmax, qmax) * scale


def rounding_bias_shift(w: np.ndarray, rounded: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The mean output shift of a convolution whose weights ``w`` (output channels first) became
    ``rounded``, on inputs of per-channel mean ``mean``: per output channel, the sum over input
    channels and taps of (rounded - w) * mean.  A bias minus this shift cancels it (bias
    correction, Nagel et al. 2019)."""
    return ((rounded - w).sum(axis=tuple(range(2, w.ndim))) * mean[None, :]).sum(1)


def _correct_first_conv_bias(model, tiles: np.ndarray, weight_bits: int):
    """A copy of ``model`` whose first convolution's bias absorbs the mean error its INT8 weights
    will make on the calibration tiles (bias correction, Nagel et al. 2019, for that layer).

    The first convolution reads the image itself, with a large mean (bright backgrounds): each
    weight's rounding error times that mean shifts every output, the output the rest of the network
    is most sensitive to.  Its input is exact (the uint8 grid), so the expected error is known:
    sum over taps of (rounded - true weight) * the channel's mean input, which the bias subtracts.
    Weights are rounded as ONNX Runtime does (:func:`int8_rounded`).  Measured on the reduced
    Tiled-MultipleMyeloma UNet, all convolutions INT8: mask dice vs FP32 0.9900 -> 0.9904 on 32
    held-out tiles, 0.9861 -> 0.9869 on the search's 16 check tiles.  Needs the input MatMul of
    :func:`_input_as_matmul`.
    """
    import copy

    from onnx import numpy_helper

    model = copy.deepcopy(model)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    first = _input_nodes(model)
    ops = {n.name: n for n in g.node}
    matmul = next((ops[n] for n in first if ops[n].op_type == "MatMul" and ops[n].input[1] in inits), None)
    conv = next((ops[n] for n in first if ops[n].op_type == "Conv"), None)
    if matmul is None or conv is None or conv.input[1] not in inits:
        return model
    mean = tiles.reshape(-1, tiles.shape[-1]).mean(0, dtype=np.float64) @ numpy_helper.to_array(
        inits[matmul.input[1]]).astype(np.float64)
    offset = next((numpy_helper.to_array(inits[n.input[1]]).reshape(-1) for n in g.node
                   if n.op_type == "Add" and n.input[0] == matmul.output[0] and n.input[1] in inits), 0.0)
    mean = mean + offset
    w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
    if w.shape[1] != mean.size:
        return model
    subtract_from_bias(model, conv, rounding_bias_shift(w, int8_rounded(w, weight_bits), mean))
    return model


def subtract_from_bias(model, node, shift: np.ndarray) -> None:
    """Subtract ``shift`` (one value per output channel) from convolution ``node``'s bias in
    ``model``, in place; a node without a bias gets ``-shift`` as a new one."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    if len(node.input) > 2 and node.input[2] in inits:
        bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
        inits[node.input[2]].CopyFrom(numpy_helper.from_array((bias - shift).astype(np.float32), node.input[2]))
    else:
        name = node.name + "_corrected_bias"
        g.initializer.append(numpy_helper.from_array((-shift).astype(np.float32), name))
        del node.input[2:]
        node.input.append(name)


def _input_max(path: Path) -> float | None:
    """The largest value the model's input takes (a uint8 image times the pre-processing scale),
    from the ONNX metadata; None without it."""
    import onnx

    from flexunet.core.modelinfo import METADATA_KEY, ModelInfo

    try:
        props = {p.key: p.value for p in onnx.load_model(str(path), load_external_data=False).metadata_props}
        return 255.0 * ModelInfo.from_json(props[METADATA_KEY]).preprocess.scale
    except (KeyError, OSError, FlexunetError):
        return None


def _pointwise_as_matmul(model, names: set[str]):
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
    inits = {i.name: i for i in g.initializer}
    nodes, added = [], []
    for n in g.node:
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        w = numpy_helper.to_array(inits[n.input[1]]) if n.op_type == "Conv" and n.input[1] in inits else None
        if (w is None or n.name not in names or w.ndim != 4 or w.shape[2:] != (1, 1) or a.get("group", 1) != 1
                or any(a.get("pads", [])) or any(v != 1 for v in a.get("strides", [1, 1]))
                or (len(n.input) > 2 and n.input[2] not in inits)):
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
            b = numpy_helper.to_array(inits[n.input[2]]).reshape(1, 1, 1, -1)
            g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(b), p + "_b"))
            nodes.append(helper.make_node("Add", [t[1], p + "_b"], [t[2]], p + "_bias"))
            last = t[2]
            added.append(p + "_bias")
        nodes.append(helper.make_node("Transpose", [last], list(n.output), p + "_to_nchw", perm=[0, 3, 1, 2]))
        added.append(p + "_to_nchw")
    del g.node[:]
    g.node.extend(nodes)
    return model, added


def _calibration_cache_supported() -> bool:
    try:
        import inspect

        from onnxruntime.quantization import quantize_static
    except ImportError:
        return False
    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


_HAS_CALIBRATION_CACHE = _calibration_cache_supported()


def _with_activations(model, names: list[str]) -> list[str]:
    """``names`` plus the Relu nodes that read only their outputs (so a float Conv stays fused)."""
    wanted = set(names)
    outputs = {o for n in model.graph.node if n.name in wanted for o in n.output}
    extra = [n.name for n in model.graph.node if n.op_type == "Relu" and n.input[0] in outputs]
    return list(names) + [e for e in extra if e not in wanted]


def int8_candidates(model, float_first_conv: bool = False) -> list[str]:
    """Convolutions that :func:`tune_int8` may keep in FP32, in graph order (without the first
    one when it is FP32 anyway)."""
    first = set(_input_nodes(model)) if float_first_conv else set()
    return [n.name for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose") and n.name not in first]


@dataclass
class Int8Tuning:
    """What :func:`tune_int8` did: the agreement with FP32 on the check tiles before and after, and
    the convolutions left in FP32 (in the order chosen) with their share of the multiply-adds."""

    target_dice: float
    check_tiles: int
    dice_all_int8: float
    dice: float
    float_nodes: list[str]
    float_share: float  # estimated FP32 cost (conv_costs) as a share of the convolutions' multiply-adds
    max_float_share: float
    candidates: int
    sensitivity: dict[str, float]
    variants_tried: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


#: Estimated cost, in multiply-adds, of each element a convolution kept in FP32 converts between
#: uint8 and float (and NHWC and NCHW) at its input and output, amid INT8 layers.  Measured on the
#: reduced Tiled-MultipleMyeloma UNet: a 1x1 up-sampling convolution at 256x256 with 0.6% of the
#: multiply-adds slowed INT8 by ~8% in FP32, nearly all of it conversions.
CONVERT_COST = 32
#: Smallest mask-dice gain for which :func:`tune_int8` keeps a convolution in FP32.  Smaller changes
#: are what re-quantising with another set of float layers does by chance: on the reduced
#: Tiled-MultipleMyeloma UNet, 27 of 28 convolutions measured between -0.0002 and +0.0003 alone
#: (the first one +0.0027), and keeping two of them "gained" 0.0001 at a measurable cost in speed.
MIN_GAIN = 0.0005
#: Default largest estimated FP32 cost (:func:`conv_costs`, a share of the model's multiply-adds)
#: :func:`tune_int8` may keep.  The FP32 layers then take about that share of the FP32 model's
#: time, so an all-INT8 model 2.2x faster than FP32 stays >= 1.8x.  On the reduced
#: Tiled-MultipleMyeloma UNet the first convolution is both the most sensitive layer (+0.0027 dice
#: alone) and estimated at 5.8%; measured, keeping it FP32 took INT8 from 2.22x to 2.00x.
MAX_FLOAT_SHARE = 0.10


def conv_costs(model, tile: tuple[int, int, int], convert_cost: float = CONVERT_COST) -> dict[str, float]:
    """Estimated cost of keeping each convolution in FP32 on one ``(h, w, C)`` tile, as a share of
    the model's convolution multiply-adds: its multiply-adds plus ``convert_cost`` per element of
    its input and output (with ``convert_cost=0``, the shares add up to 1)."""
    import copy

    import onnx

    m = copy.deepcopy(model)
    for d, v in zip(m.graph.input[0].type.tensor_type.shape.dim, (1, *tile)):
        d.Clear()
        d.dim_value = v
    del m.graph.value_info[:]
    m = onnx.shape_inference.infer_shapes(m)
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input)}
    weights = {i.name: list(i.dims) for i in m.graph.initializer}

    def elements(name):
        shape = dims.get(name, [])
        return float(np.prod(shape)) if shape and all(shape) else 0.0

    macs, moved = {}, {}
    for n in m.graph.node:
        if n.op_type in ("Conv", "ConvTranspose") and n.input[1] in weights:
            out = dims.get(n.output[0], [])
            area = out[2] * out[3] if len(out) == 4 and out[2] and out[3] else 1
            macs[n.name] = float(np.prod(weights[n.input[1]])) * area
            moved[n.name] = elements(n.input[0]) + elements(n.output[0])
    total = sum(macs.values()) or 1.0
    return {k: (macs[k] + convert_cost * moved[k]) / total for k in macs}


def tune_int8(src: Path, dest: Path, tiles: np.ndarray, check: np.ndarray, input_name: str = "image",
              threshold: float = 0.5, target_dice: float = 0.99, weight_bits: int = 8,
              method: str = "minmax", max_float: int = 8, max_float_share: float = MAX_FLOAT_SHARE,
              float_first_conv: bool = False, min_gain: float = MIN_GAIN, progress=None) -> Int8Tuning:
    """INT8 with as little FP32 as it takes to agree with FP32 at ``target_dice``.

    Quantises everything first (:func:`quantize_int8`'s defaults) and measures mask dice against
    the FP32 model on ``check`` tiles, which must not be calibration tiles (the caller holds them
    out of the calibration images, never the test split).  Below ``target_dice``, each convolution's
    sensitivity is measured (the dice gained when that one alone stays FP32, calibration reused),
    and convolutions are kept in FP32 one at a time, the most gain per unit of estimated cost
    (:func:`conv_costs`) first, each only if it gains at least ``min_gain`` (:data:`MIN_GAIN`),
    until the target is met, ``max_float`` are, or the next would take the estimated FP32 cost
    over ``max_float_share`` of the model's multiply-adds (the speed INT8 is for).  The result is
    written to ``dest`` whatever the dice; the caller judges it.
    """
    from flexunet.core.compare import compare
    from flexunet.export.onnx import onnx_predict

    say = progress or (lambda line: None)
    t0 = time.perf_counter()
    reference = onnx_predict(src, check)
    tried = 0

    with _Prepared(src, dest) as prep:
        def dice_of(keep) -> float:
            nonlocal tried
            tried += 1
            prep.quantize(dest, tiles, input_name, method, weight_bits, float_first_conv, tuple(keep))
            return compare(reference, onnx_predict(dest, check), threshold).dice

        first = dice_of(())
        say(f"INT8: mask dice vs FP32 {first:.4f} on {len(check)} check tiles (target {target_dice})")
        keep: list[str] = []
        sensitivity: dict[str, float] = {}
        best = first
        candidates = int8_candidates(prep.model, float_first_conv)
        cost = conv_costs(prep.model, tuple(check.shape[1:]))
        share = 0.0
        if first < target_dice and max_float > 0:
            for i, name in enumerate(candidates, 1):
                sensitivity[name] = round(dice_of((name,)) - first, 6)
                say(f"INT8 sensitivity {i}/{len(candidates)}: {name} in FP32 -> dice {first + sensitivity[name]:.4f}")
            ranked = sorted((n for n in candidates if sensitivity[n] >= min_gain),
                            key=lambda n: -sensitivity[n] / max(cost.get(n, 1.0), 1e-9))
            for name in ranked:
                if best >= target_dice or len(keep) >= max_float:
                    break
                if share + cost.get(name, 0.0) > max_float_share:
                    continue
                d = dice_of(keep + [name])
                if d >= best + min_gain:
                    keep.append(name)
                    share += cost.get(name, 0.0)
                    best = d
                    say(f"INT8: {len(keep)} convolution(s) in FP32 ({100 * share:.1f}% of multiply-adds) "
                        f"-> dice {d:.4f}")
        if tried > 1:  # the last variant tried may not be the one kept
            prep.quantize(dest, tiles, input_name, method, weight_bits, float_first_conv, tuple(keep))
    _copy_metadata(src, dest, precision="int8")
    return Int8Tuning(target_dice=target_dice, check_tiles=int(len(check)), dice_all_int8=round(first, 6),
                      dice=round(best, 6), float_nodes=keep, float_share=round(share, 4),
                      max_float_share=max_float_share, candidates=len(candidates),
                      sensitivity=sensitivity, variants_tried=tried, seconds=round(time.perf_counter() - t0, 2))
