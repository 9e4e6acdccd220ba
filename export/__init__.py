"""flexunet export: Keras -> ONNX (with metadata), optimised and INT8 ONNX, TensorRT, Triton.

``exporter`` runs ``flexunet export`` (options checked, inputs read, one step per artifact from
``steps``, all renamed into place together by ``staging``); ``verify`` runs models on tiles and
judges them; ``tiles`` cuts verification and calibration tiles; ``onnx`` and ``keras2onnx`` make the
FP32 ONNX files; ``int8_rewrites``, ``int8_bias``, ``int8_quantize`` and ``int8_search`` make the
INT8 model; ``tensorrt`` and ``tensorrt_calibration`` build engines; ``triton`` writes the
repository; ``cli`` is the command.
"""
