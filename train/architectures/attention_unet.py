"""Attention UNet: the seed API's "TensorflowAttentionUNet" and the Lizard seed's
"TensorFlowFlexAttentionUNet", rebuilt with stock Keras 3 layers.

The network (level ``i`` has ``base_filters * 2**i`` filters):

* conv block: Conv2D 3x3 -> BatchNormalization -> relu -> Conv2D 3x3 -> [Dropout(dropout_rate)
  when the rate is above 0] -> BatchNormalization -> relu (every Conv2D has a bias);
* encoder: a conv block and a 2x2 max-pool on levels ``0 .. num_layers - 2``, a conv block as
  the bridge on level ``num_layers - 1``;
* decoder, from level ``num_layers - 2`` up to 0: bilinear 2x upsampling, an attention gate on
  that level's skip (1x1 Conv2D + BN of the upsampled tensor ``g``; 1x1 Conv2D + [Dropout] + BN
  of the skip ``s``; ``relu(g + s)`` -> 1x1 Conv2D -> sigmoid, multiplied with ``s``), the
  concatenation ``[upsampled, gated skip]`` and a conv block;
* head: 1x1 Conv2D with ``num_classes`` filters, sigmoid for one class, softmax for more.

As in the seed, the ``[model]`` keys ``activation``, ``final_activation``, ``normalization``,
``base_kernels`` and ``dilation`` do not change this network. The seed's network does not divide
its input by 255 (the registry builds it without ``input_normalize``); with ``input_normalize`` a
weightless ``Rescaling(1/255)`` comes first.

The seed's ``g + s`` and ``* s`` are tensor operators; here they are ``Add`` and ``Multiply``
layers, which occupy the same place in the graph, and its bilinear ``UpSampling2D`` is
:func:`~flexunet.architectures.bilinear.upsample_bilinear` (the same values from one weightless layer
that also traces for a dynamic input size), so ``model.layers`` lists the weight-owning layers in
the seed's order (within a gate the skip's 1x1 conv comes before the upsampled tensor's: its
branch is one layer longer when it has a Dropout).

The Lizard variant differs only in its head, which is always softmax (also for one class, where
it outputs a constant 1); here one class always gets a sigmoid, so ``flex`` builds the same
network.
"""
from __future__ import annotations


import keras

from flexunet.architectures.bilinear import upsample_bilinear
from flexunet.architectures.checks import require_common

__all__ = ["build", "build_attention_unet", "required_multiple"]


def required_multiple(m) -> int:
    """Input height and width must be a multiple of ``2 ** (num_layers - 1)`` (one max-pool per
    encoder level)."""
    return 2 ** (getattr(m, "num_layers", m) - 1)


def _check(height, width, num_layers, base_filters, num_classes, dropout_rate):
    """One-line ``ValueError`` for settings this network cannot be built with."""
    require_common("TensorflowAttentionUNet", height, width, required_multiple(num_layers), dropout_rate,
                   num_layers=(num_layers, 2), base_filters=(base_filters, 1), num_classes=(num_classes, 1))


class _Blocks:
    """The seed's conv block, attention gate and decoder block, naming each layer."""

    def __init__(self, dropout_rate, seed):
        self.rate = float(dropout_rate)
        self.seed = seed

    def _dropout(self, x, name):
        if self.rate > 0.0:  # the seed inserts the Dropout only for a positive rate
            x = keras.layers.Dropout(self.rate, seed=self.seed, name=name)(x)
        return x

    def conv(self, x, filters, prefix):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"{prefix}_conv1")(x)
        x = keras.layers.BatchNormalization(name=f"{prefix}_bn1")(x)
        x = keras.layers.Activation("relu", name=f"{prefix}_relu1")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"{prefix}_conv2")(x)
        x = self._dropout(x, f"{prefix}_dropout")
        x = keras.layers.BatchNormalization(name=f"{prefix}_bn2")(x)
        return keras.layers.Activation("relu", name=f"{prefix}_relu2")(x)

    def gate(self, g, s, filters, prefix):
        wg = keras.layers.Conv2D(filters, 1, padding="same", name=f"{prefix}_g_conv")(g)
        wg = keras.layers.BatchNormalization(name=f"{prefix}_g_bn")(wg)
        ws = keras.layers.Conv2D(filters, 1, padding="same", name=f"{prefix}_s_conv")(s)
        ws = self._dropout(ws, f"{prefix}_s_dropout")
        ws = keras.layers.BatchNormalization(name=f"{prefix}_s_bn")(ws)
        out = keras.layers.Add(name=f"{prefix}_add")([wg, ws])
        out = keras.layers.Activation("relu", name=f"{prefix}_relu")(out)
        out = keras.layers.Conv2D(filters, 1, padding="same", name=f"{prefix}_psi_conv")(out)
        out = keras.layers.Activation("sigmoid", name=f"{prefix}_sigmoid")(out)
        return keras.layers.Multiply(name=f"{prefix}_multiply")([out, s])

    def decoder(self, x, skip, filters, prefix):
        x = upsample_bilinear(x, 2, f"{prefix}_up")
        gated = self.gate(x, skip, filters, f"{prefix}_gate")
        x = keras.layers.Concatenate(name=f"{prefix}_concat")([x, gated])
        return self.conv(x, filters, prefix)


def build_attention_unet(image_height, image_width, image_channels=3, num_classes=1, base_filters=16,
                         num_layers=6, dropout_rate=0.1, input_normalize=True, seed=None,
                         name="flexunet_attention_unet"):
    """The seed's Attention UNet as a functional ``keras.Model`` mapping ``image``
    ``(N, H, W, image_channels)`` to ``probabilities`` ``(N, H, W, num_classes)``. ``None`` sizes
    accept any multiple of ``2 ** (num_layers - 1)``. Raises ``ValueError`` for bad settings."""
    _check(image_height, image_width, num_layers, base_filters, num_classes, dropout_rate)
    blocks = _Blocks(dropout_rate, seed)
    inputs = keras.Input((image_height, image_width, image_channels), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs) if input_normalize else inputs
    skips = []
    for i in range(num_layers - 1):
        skip = blocks.conv(x, base_filters * 2**i, f"enc{i}")
        skips.append(skip)
        x = keras.layers.MaxPool2D((2, 2), name=f"enc{i}_pool")(skip)
    x = blocks.conv(x, base_filters * 2 ** (num_layers - 1), "bridge")
    for i in range(num_layers - 2, -1, -1):
        x = blocks.decoder(x, skips[i], base_filters * 2**i, f"dec{i}")
    activation = "sigmoid" if num_classes == 1 else "softmax"
    outputs = keras.layers.Conv2D(num_classes, (1, 1), activation=activation, name="probabilities")(x)
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


def build(m, height, width, seed=None, *, flex=False):
    """The registry's entry (see :mod:`flexunet.architectures`); ``flex`` builds the same network
    (see the module docstring)."""
    del flex
    return build_attention_unet(
        image_height=height, image_width=width, image_channels=m.image_channels,
        num_classes=m.num_classes, base_filters=m.base_filters, num_layers=m.num_layers,
        dropout_rate=m.dropout_rate, input_normalize=m.input_normalize, seed=seed)
