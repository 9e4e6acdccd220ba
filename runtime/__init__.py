"""flexunet runtime: tiled inference without TensorFlow.

Importing this package never imports TensorFlow; the Keras backend is loaded only when asked for.
"""

__version__ = "0.1.0"
