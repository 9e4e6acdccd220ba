"""Bilinear upsampling by an integer factor from weightless stock Keras layers, for any input size.

``keras.layers.UpSampling2D(interpolation="bilinear")`` computes exactly this, but under the
TensorFlow backend of Keras 3.15 it cannot be traced for an input of unknown height and width
(``ops.image.resize`` checks ``size > 0`` in Python on a symbolic size), so a network using it
cannot be exported with a dynamic size. :func:`upsample_bilinear` gives the same values (TensorFlow's
half-pixel bilinear resize with edge clamping, to float rounding) from layers that trace with any
size and convert to ONNX as Resize-free ``AveragePool``/``Mul``/``Add`` nodes.

Why it is exact: per axis, bilinear upsampling by ``k`` of ``x`` is the nearest-neighbour repeat
``y`` (each value ``k`` times) filtered with ``[1/2, 1, ..., 1, 1/2] / k`` (``k + 1`` taps centred
on the output pixel), which is ``(k+1)/(2k)`` times the centred mean of ``k + 1`` values plus
``(k-1)/(2k)`` times the centred mean of ``k - 1`` values. Near the border the part of a window
outside the map only ever covers repeats of the border value, so a mean over the values inside
(``AveragePooling2D`` with ``"same"`` padding does not count the padding) equals the clamped
resize. The resize is separable: height is repeated and filtered first, then width.

The price is speed: the means cost about ``2k`` additions per output value and axis, where a
Resize node costs a few. TensorflowUNet3Plus (upsampling by up to 16) at 512x512 runs about 2.5x
slower this way than with ``UpSampling2D`` (measured on 2 CPU cores: ONNX Runtime 0.9 s vs 0.36 s,
Keras 1.4 s vs 0.6 s); the 2x upsampling of TensorflowAttentionUNet costs little. Once Keras traces
``UpSampling2D`` for dynamic sizes again, it can replace this function: the weights do not change.
"""
from __future__ import annotations

import keras

__all__ = ["upsample_bilinear"]


def _axis_filter(y, factor, window, name):
    """One axis' ``[1/2, 1, ..., 1, 1/2] / factor`` filter of the repeated map ``y``; ``window``
    turns a length into that axis' pool size."""
    wide = keras.layers.AveragePooling2D(window(factor + 1), strides=1, padding="same",
                                         name=f"{name}_mean{factor + 1}")(y)
    wide = keras.layers.Rescaling((factor + 1) / (2 * factor), name=f"{name}_scale{factor + 1}")(wide)
    narrow = y
    if factor > 2:  # a mean of one value is the value itself
        narrow = keras.layers.AveragePooling2D(window(factor - 1), strides=1, padding="same",
                                               name=f"{name}_mean{factor - 1}")(y)
    narrow = keras.layers.Rescaling((factor - 1) / (2 * factor), name=f"{name}_scale{factor - 1}")(narrow)
    return keras.layers.Add(name=f"{name}_sum")([wide, narrow])


def upsample_bilinear(x, factor: int, name: str):
    """``x`` (NHWC) upsampled ``factor`` times (an integer >= 2) in height and width as
    ``UpSampling2D(factor, interpolation="bilinear")`` does; the layers are named ``name_*``."""
    if int(factor) != factor or factor < 2:
        raise ValueError(f"bilinear upsampling needs an integer factor >= 2; got {factor!r}")
    factor = int(factor)
    # Height first, on a map only `factor` times larger; then width on the full-size map.
    y = keras.layers.UpSampling2D((factor, 1), interpolation="nearest", name=f"{name}_repeat_h")(x)
    y = _axis_filter(y, factor, lambda n: (n, 1), f"{name}_h")
    y = keras.layers.UpSampling2D((1, factor), interpolation="nearest", name=f"{name}_repeat_w")(y)
    return _axis_filter(y, factor, lambda n: (1, n), f"{name}_w")
