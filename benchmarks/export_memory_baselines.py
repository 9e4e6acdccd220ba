"""The tf2onnx baselines of benchmarks/export_memory.py: ``tf2onnx.convert.from_keras`` as one
call, step by step (one stage per internal step, to attribute memory), with a garbage collection
after each step, and with ``large_model=True``; :data:`EXPORTERS` names them."""

import contextlib


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
    the graph) and keeps alive what they keep alive, so the peak matches the one-call baseline
    (one function on purpose: split into functions, its intermediate objects would be freed at
    other points than in tf2onnx and the stage peaks would no longer measure tf2onnx).  With ``collect_garbage`` a full ``gc.collect()`` ends every stage: the difference shows how
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
