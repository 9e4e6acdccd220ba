"""flexunet export: Keras -> ONNX (with metadata), optimised and INT8 ONNX, TensorRT, Triton."""
