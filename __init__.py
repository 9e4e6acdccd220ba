"""flexunet: UNet segmentation for microscopy and pathology, from Keras training to fast tiled inference.

The repository root is this package; its folders are the layers (bottom up), each importing only
the ones below it:

    flexunet.core      runtime/core/  config, model info, image I/O, tiling, masks, metrics, comparator, errors
    flexunet.runtime   runtime/       backends, the tiled engine, folder runs, parity, bench
    flexunet.train     train/         architectures, datasets, fit, evaluate
    flexunet.export    export/        Keras -> ONNX, reduced precision, TensorRT, Triton
    flexunet.projects  projects/      one dataset's whole chain (``flexunet project``)
    flexunet.cli       cli.py         the ``flexunet`` command

``import flexunet`` imports nothing heavy: ``Segmenter`` is loaded on first use and never TensorFlow.
"""
_API = ("Segmenter", "SegmentResult", "RunSummary")


def __getattr__(name):
    """Lazy attributes: ``__version__`` (from the package metadata) and the public API
    (``from flexunet import Segmenter`` loads neither onnxruntime nor TensorFlow).  Nothing is
    imported with the package itself, so the ``flexunet`` command installs its Ctrl-C handling at once."""
    if name == "__version__":
        from importlib import metadata

        try:
            return metadata.version("flexunet")
        except metadata.PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"
    if name in _API:
        from flexunet.runtime import segmenter

        return getattr(segmenter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["__version__", *_API]
