"""Sharp U-Net builder: the seed API's ``TensorflowSharpUNet`` and the Lizard seed's
``TensorFlowFlexSharpUNet`` (Zunair & Ben Hamza's UNet with sharpening filters on the skips).

The network as the seed builds it from ``[model] filters`` (default ``[32, 64, 128, 256]``),
``max_filter`` (512), ``base_ksize`` ((3, 3)) and ``dilation`` ((1, 1)); ``base_filters`` and
``num_layers`` are not used:

* encoder level ``i``: two ``Conv2D(filters[i], base_ksize, relu)`` (bias, ``dilation``), then a
  2x2 max-pool; the bridge is two such convolutions of ``max_filter``;
* decoder level ``i`` (deepest first): the skip goes through a *sharp block*, a 3x3
  ``DepthwiseConv2D`` without bias whose kernel is the fixed sharpening kernel (-1 around, 8 in the
  centre) and is not trained; a 2x2 stride-2 ``Conv2DTranspose(filters[-1-i])`` upsamples the
  running tensor; the two are concatenated;
* two ``Conv2D(filters[0])`` on the last concatenation, then the 1x1 head named ``probabilities``
  (sigmoid for one class, softmax for several; ``[model] final_activation`` overrides).

Seed quirk kept on purpose: each decoder level upsamples the previous level's *concatenation*; the
seed computes two convolutions per level but only the last level's reach the output, so the others
are not part of its model (nor of its parameter count, nor of its ``.h5``), and not built here.
The seed's input shape is ``(width, height)``, which only matters for non-square inputs; here it is
``(height, width)``. The frozen kernels are ordinary (non-trainable) weights: the seed's ``.h5``
stores them, and they load with the rest in the seed's layer order.
"""
from __future__ import annotations

import numbers

import keras
import numpy as np

__all__ = ["DEFAULT_FILTERS", "build", "build_sharp_unet", "required_multiple", "sharpening_kernel"]

#: The seed's ``filters`` default.
DEFAULT_FILTERS = (32, 64, 128, 256)


def required_multiple(m) -> int:
    """Input height and width must be multiples of ``2**len(filters)`` (one max-pool per entry)."""
    filters = m.filters if hasattr(m, "filters") else m
    return 2 ** len(filters or DEFAULT_FILTERS)


def sharpening_kernel(channels: int) -> np.ndarray:
    """The sharp block's fixed depthwise kernel, shape ``(3, 3, channels, 1)``."""
    k = -np.ones((3, 3), np.float32)
    k[1, 1] = 8.0
    return np.repeat(k[:, :, None, None], channels, axis=2)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _pair(value, what):
    if _is_int(value):
        value = (value, value)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an int or a pair (n, n); got {value!r}") from None
    if not (_is_int(a) and _is_int(b)) or a < 1 or b < 1:
        raise ValueError(f"{what} must be positive ints; got {value!r}")
    return int(a), int(b)


def _validate(height, width, channels, num_classes, filters, max_filter):
    if not filters or not all(_is_int(f) and f >= 1 for f in filters):
        raise ValueError(f"filters must be a non-empty list of ints >= 1; got {filters!r}")
    for what, value in (("max_filter", max_filter), ("image_channels", channels),
                        ("num_classes", num_classes)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{what} must be an int >= 1; got {value!r}")
    multiple = 2 ** len(filters)
    for what, size in (("image_height", height), ("image_width", width)):
        if size is not None and (not _is_int(size) or size < 1 or size % multiple):
            raise ValueError(f"{what} must be a positive multiple of 2**len(filters) = {multiple} "
                             f"for TensorflowSharpUNet with {len(filters)} filters; got {size!r}")


def build_sharp_unet(image_height, image_width, image_channels=3, num_classes=1,
                     filters=DEFAULT_FILTERS, max_filter=512, base_ksize=(3, 3), dilation=(1, 1),
                     input_normalize=True, final_activation=None, name="flexunet_sharpunet"):
    """Build the seed Sharp U-Net as a functional ``keras.Model`` (``image`` -> ``probabilities``).

    ``image_height``/``image_width`` may be ``None`` (any multiple of ``2**len(filters)``).
    Raises ``ValueError`` for inconsistent settings.
    """
    filters = list(filters)
    _validate(image_height, image_width, image_channels, num_classes, filters, max_filter)
    conv = dict(kernel_size=_pair(base_ksize, "base_ksize"), activation="relu", padding="same",
                dilation_rate=_pair(dilation, "dilation"))
    inputs = keras.Input((image_height, image_width, int(image_channels)), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs) if input_normalize else inputs

    skips = []
    for i, f in enumerate(filters):
        x = keras.layers.Conv2D(f, name=f"enc{i}_conv1", **conv)(x)
        x = keras.layers.Conv2D(f, name=f"enc{i}_conv2", **conv)(x)
        skips.append(x)
        x = keras.layers.MaxPooling2D((2, 2), name=f"enc{i}_pool")(x)
    x = keras.layers.Conv2D(max_filter, name="bridge_conv1", **conv)(x)
    x = keras.layers.Conv2D(max_filter, name="bridge_conv2", **conv)(x)

    sharp_layers = []
    for i in range(len(filters) - 1, -1, -1):
        up = keras.layers.Conv2DTranspose(filters[i], (2, 2), strides=(2, 2), padding="same",
                                          name=f"dec{i}_up")(x)
        sharp = keras.layers.DepthwiseConv2D(3, use_bias=False, padding="same", trainable=False,
                                             name=f"dec{i}_sharpen")
        x = keras.layers.Concatenate(axis=3, name=f"dec{i}_concat")([up, sharp(skips[i])])
        sharp_layers.append(sharp)
    x = keras.layers.Conv2D(filters[0], name="dec0_conv1", **conv)(x)
    x = keras.layers.Conv2D(filters[0], name="dec0_conv2", **conv)(x)

    head = final_activation or ("sigmoid" if num_classes == 1 else "softmax")
    outputs = keras.layers.Conv2D(int(num_classes), (1, 1), activation=head, name="probabilities")(x)
    model = keras.Model(inputs=inputs, outputs=outputs, name=name)
    for layer in sharp_layers:
        layer.set_weights([sharpening_kernel(layer.kernel.shape[2])])
    return model


def build(m, height, width, seed=None, *, flex=False):
    """The registry's entry (see :mod:`flexunet.architectures`). The Flex variant is the same
    network: its seed head is always softmax, which equals the API's for several classes (for one
    class a softmax is constantly 1, so both use the sigmoid here); ``seed`` is unused (no Dropout)."""
    del seed, flex
    return build_sharp_unet(height, width, m.image_channels, m.num_classes,
                            filters=m.filters or DEFAULT_FILTERS, max_filter=m.max_filter,
                            base_ksize=m.base_ksize, dilation=m.dilation,
                            input_normalize=m.input_normalize, final_activation=m.final_activation)
