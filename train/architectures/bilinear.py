"""Bilinear upsampling by an integer factor as one weightless layer that traces for any input size.

``keras.layers.UpSampling2D(interpolation="bilinear")`` computes this, but under the TensorFlow
backend of Keras 3.15 it cannot be traced for an input of unknown height and width
(``ops.image.resize`` checks ``size > 0`` in Python on a symbolic size), so a network using it
cannot be exported with a dynamic size. :class:`BilinearUpsampling` calls ``tf.image.resize``
(half-pixel bilinear with edge clamping, the kernel ``UpSampling2D`` itself ends in) on a size
computed from ``tf.shape``: it gives ``UpSampling2D``'s values exactly (max difference 0.0 in
Keras), traces at a dynamic size and converts to a single ONNX ``Resize`` node
(``coordinate_transformation_mode="half_pixel"``, linear; within ~1e-7 in ONNX Runtime).

The layer owns no weights and holds no code in a model file: it is registered with Keras under
``flexunet>BilinearUpsampling``, and a ``.keras`` archive names it by that; the class is flexunet's
own, found when this module has been imported (flexunet's Keras loader imports it before loading).

Speed: an earlier version built the same values from a chain of stock layers (nearest-neighbour
repeats and ``AveragePooling2D`` means: about ``2k`` additions per output value and axis, plus the
Transpose/Tile nodes of its ONNX graph), which made the ONNX export slower than Keras. Measured at
512x512, batch 1, 2 CPU cores under a load average of ~4, both versions with the same weights and
timed in turn (median of 3), chain -> this layer: TensorflowUNet3Plus ONNX Runtime FP32 2324 -> 1051
ms, Keras 1147 -> 801 ms; TensorflowU2Net ONNX 635 -> 434 ms, Keras 421 -> 294 ms;
TensorflowAttentionUNet ONNX 435 -> 340 ms, Keras 293 -> 252 ms. In UNet3Plus's ONNX model the
Resize nodes now take about a sixth of the time, the convolutions the rest
(benchmarks/results/arch_latency.md). Models saved with that chain still load: it holds only
stock layers, and it computes the same values.
"""
from __future__ import annotations

import keras

__all__ = ["BilinearUpsampling", "upsample_bilinear"]


@keras.saving.register_keras_serializable(package="flexunet")
class BilinearUpsampling(keras.layers.Layer):
    """``UpSampling2D(factor, interpolation="bilinear")`` on NHWC maps of any (also unknown) size."""

    def __init__(self, factor: int = 2, **kwargs):
        super().__init__(**kwargs)
        if int(factor) != factor or factor < 2:
            raise ValueError(f"bilinear upsampling needs an integer factor >= 2; got {factor!r}")
        self.factor = int(factor)

    def call(self, x):
        import tensorflow as tf

        shape = tf.shape(x)
        size = tf.stack([shape[1] * self.factor, shape[2] * self.factor])
        y = tf.image.resize(x, size, method="bilinear")
        return tf.cast(y, x.dtype)  # resize returns float32 for other float types

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        return (n, None if h is None else h * self.factor, None if w is None else w * self.factor, c)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def upsample_bilinear(x, factor: int, name: str):
    """``x`` (NHWC) upsampled ``factor`` times (an integer >= 2) in height and width as
    ``UpSampling2D(factor, interpolation="bilinear")`` does, by one layer named ``name``."""
    return BilinearUpsampling(factor, name=name)(x)
