"""UNet 3+: the seed API's "TensorflowUNet3Plus" and the Lizard seed's "TensorFlowFlexUNet3Plus",
rebuilt with stock Keras 3 layers.

Every convolution is a *unit*: Conv2D 3x3 (bias, l2(1e-4) kernel regulariser, he_normal with the
seed's fixed seed 5) -> Dropout -> BatchNormalization -> relu. A block of ``n`` units uses
``Dropout(dropout_rate * j)`` in its ``j``-th unit (``j = 1 .. n``).

* encoder: always five levels of two units with ``base_filters * 2**i`` filters (``i = 0 .. 4``),
  a 2x2 max-pool between levels. ``num_layers`` (at least 5) only sets the decoder width
  ``num_layers * base_filters``: the seed makes ``num_layers`` filter sizes, uses the first five
  and concatenates "``len(filters)``" branches' worth of channels.
* four decoder stages (``d4`` at 1/8 scale up to ``d1`` at full scale), each with full-scale skips:
  every encoder output above the stage is max-pooled down (pool 8, 4, 2), the one at its scale
  taken as is, every deeper decoder output (and the bridge) bilinearly upsampled (2 .. 16); each of
  the five goes through one unit of ``base_filters`` filters; their concatenation goes through one
  unit of ``num_layers * base_filters`` filters.
* head: Conv2D 3x3 -> Dropout(dropout_rate) (no BN, no relu) -> an ``Activation`` layer named
  ``probabilities``: sigmoid for one class, softmax for more.

The seed's head always has **one** filter, also for several classes, where its softmax over one
channel outputs a constant 1 and never learns (the Lizard seed's Flex variant uses that softmax
even for one class). Here the head has ``num_classes`` filters, so one class builds exactly the
seed network (and loads its ``.h5``) and several classes build a network that works; a seed file
with several classes does not fit it (its head has one filter) and is refused by the loader.
``flex`` therefore builds the same network.

As in the seed, ``activation``, ``final_activation``, ``normalization``, ``base_kernels`` and
``dilation`` do not change this network. The seed's network does not divide its input by 255 (the
registry builds it without ``input_normalize``); with ``input_normalize`` a weightless
``Rescaling(1/255)`` comes first. The seed's relu is a tensor
operation; here it is an ``Activation`` layer at the same place in the graph, and its bilinear
``UpSampling2D`` is :func:`~flexunet.architectures.bilinear.upsample_bilinear` (the same values
from one weightless layer that also traces for a dynamic input size); ``model.layers`` lists the
weight-owning layers in the seed's order.
"""
from __future__ import annotations


import keras

from flexunet.architectures.bilinear import upsample_bilinear
from flexunet.architectures.checks import require_common

__all__ = ["build", "build_unet3plus", "required_multiple"]

#: The encoder's depth: the seed always builds five levels (four max-pools).
LEVELS = 5


def required_multiple(m=None) -> int:
    """Input height and width must be a multiple of 16 (four 2x2 max-pools)."""
    del m
    return 2 ** (LEVELS - 1)


def _check(height, width, num_layers, base_filters, num_classes, dropout_rate):
    """One-line ``ValueError`` for settings this network cannot be built with."""
    require_common("TensorflowUNet3Plus", height, width, required_multiple(), dropout_rate,
                   num_layers=(num_layers, LEVELS), base_filters=(base_filters, 1),
                   num_classes=(num_classes, 1))
    if dropout_rate * 2 >= 1.0:
        raise ValueError(f"dropout_rate {dropout_rate} * 2 must be < 1 (the second convolution of "
                         "each encoder level drops twice the rate)")


class _Units:
    """The seed's conv unit (Conv2D -> Dropout -> [BN -> relu]), named by a running prefix."""

    def __init__(self, dropout_rate, seed):
        self.rate = float(dropout_rate)
        self.seed = seed

    def __call__(self, x, filters, prefix, n=1, head=False):
        for j in range(1, n + 1):
            name = f"{prefix}_{j}" if n > 1 else prefix
            x = keras.layers.Conv2D(
                filters, (3, 3), padding="same", name=f"{name}_conv",
                kernel_regularizer=keras.regularizers.L2(1e-4),
                kernel_initializer=keras.initializers.HeNormal(seed=5))(x)
            x = keras.layers.Dropout(self.rate * j, seed=self.seed, name=f"{name}_dropout")(x)
            if not head:
                x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
                x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
        return x


def _resample(x, factor, name):
    """Max-pool by ``factor`` > 1, bilinear upsampling by 1/``factor`` < 1, identity for 1."""
    if factor > 1:
        pool = round(factor)
        return keras.layers.MaxPool2D((pool, pool), name=f"{name}_pool{pool}")(x)
    if factor < 1:
        up = round(1 / factor)
        return upsample_bilinear(x, up, f"{name}_up{up}")
    return x


def _stage(unit, sources, level, cat_filters, width):
    """Decoder stage at encoder level ``level`` (0 = full scale) from ``sources``: every encoder
    and decoder output as ``(tensor, its level)``, shallowest first."""
    branches = [unit(_resample(t, 2.0 ** (level - lv), f"d{level + 1}_from{lv + 1}"), cat_filters,
                     f"d{level + 1}_from{lv + 1}") for t, lv in sources]
    x = keras.layers.Concatenate(name=f"d{level + 1}_concat")(branches)
    return unit(x, width, f"d{level + 1}_fuse")


def build_unet3plus(image_height, image_width, image_channels=3, num_classes=1, base_filters=16,
                    num_layers=6, dropout_rate=0.05, input_normalize=True, seed=None,
                    name="flexunet_unet3plus"):
    """The seed's UNet 3+ as a functional ``keras.Model`` mapping ``image`` ``(N, H, W,
    image_channels)`` to ``probabilities`` ``(N, H, W, num_classes)``. ``None`` sizes accept any
    multiple of 16. Raises ``ValueError`` for bad settings."""
    _check(image_height, image_width, num_layers, base_filters, num_classes, dropout_rate)
    unit = _Units(dropout_rate, seed)
    inputs = keras.Input((image_height, image_width, image_channels), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs) if input_normalize else inputs
    encoder = []
    for i in range(LEVELS):
        if i:
            x = keras.layers.MaxPool2D((2, 2), name=f"e{i + 1}_pool")(x)
        x = unit(x, base_filters * 2**i, f"e{i + 1}", n=2)
        encoder.append(x)
    # Stage at level 3 (d4) down to 0 (d1): encoder outputs of levels 0..level, then the decoder
    # outputs below it (shallowest first), then the bridge.
    decoder = {}
    for level in range(LEVELS - 2, -1, -1):
        sources = [(encoder[lv], lv) for lv in range(level + 1)]
        sources += [(decoder[lv], lv) for lv in range(level + 1, LEVELS - 1)]
        sources.append((encoder[LEVELS - 1], LEVELS - 1))
        decoder[level] = _stage(unit, sources, level, base_filters, num_layers * base_filters)
    x = unit(decoder[0], num_classes, "head", head=True)
    activation = "sigmoid" if num_classes == 1 else "softmax"
    outputs = keras.layers.Activation(activation, name="probabilities")(x)
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


def build(m, height, width, seed=None, *, flex=False):
    """The registry's entry (see :mod:`flexunet.architectures`); ``flex`` builds the same network
    (see the module docstring)."""
    del flex
    return build_unet3plus(
        image_height=height, image_width=width, image_channels=m.image_channels,
        num_classes=m.num_classes, base_filters=m.base_filters, num_layers=m.num_layers,
        dropout_rate=m.dropout_rate, input_normalize=m.input_normalize, seed=seed)
