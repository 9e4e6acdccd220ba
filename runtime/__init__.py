"""flexunet.runtime: tiled inference without TensorFlow.

Importing this package never imports TensorFlow; the Keras backend is loaded only when asked for.
"""


def __getattr__(name):
    """Lazy public API: ``from flexunet.runtime import Segmenter`` loads neither onnxruntime nor TensorFlow."""
    if name in ("Segmenter", "SegmentResult", "RunSummary"):
        from flexunet.runtime import segmenter

        return getattr(segmenter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
