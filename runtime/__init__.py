"""flexunet runtime: tiled inference without TensorFlow.

Importing this package never imports TensorFlow; the Keras backend is loaded only when asked for.
"""

__version__ = "0.1.0"


def __getattr__(name):
    """Lazy public API: ``from runtime import Segmenter`` loads neither onnxruntime nor TensorFlow."""
    if name in ("Segmenter", "SegmentResult", "RunSummary"):
        from . import segmenter

        return getattr(segmenter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
