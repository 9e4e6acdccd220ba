"""EfficientNetB7-UNet builder reproducing the seed "TensorflowEfficientNetB7UNet" (and the Lizard
seed's "TensorFlowFlexEfficientNetB7UNet", the same network).

The network (widths fixed by the seed; ``base_filters``/``num_layers``/``efficientnet`` are not used):

* a Keras Applications EfficientNetB7 backbone, as in :mod:`.efficientnet_unet` (``weights=None``,
  its own Rescaling/Normalization, the ImageNet stddev scaling unless ``[model]
  efficientnet_imagenet_scaling = False``), every backbone layer but the last 61 frozen as the seed
  freezes them (``layers[:-61]``: most of the weights are non-trainable);
* skips: the backbone's input, ``block1a_activation`` (1/2), ``block2a_activation`` (1/4),
  ``block3a_activation`` (1/8), ``block4a_activation`` (1/16); bridge ``block7a_activation`` (1/32);
* five decoder levels of 512, 256, 128, 64, 32 filters: Conv2DTranspose 2x2 stride 2 (bias),
  concatenation with the skip, then twice Conv2D 3x3 (bias) -> BatchNormalization -> ReLU;
* a 1x1 Conv2D head named ``probabilities``. The seed's head has one channel whatever ``num_classes``
  says (with a softmax, a constant 1, for more than one class); flexunet builds one sigmoid channel for
  one class and ``num_classes`` softmax channels for more, so only one-class seed ``.h5`` files load.

Input height and width must be multiples of 32.
"""
from __future__ import annotations

import keras

from flexunet.architectures.efficientnet_unet import check_size, efficientnet_features, head

__all__ = ["build", "build_efficientnet_b7_unet", "required_multiple"]

DECODER_FILTERS = (512, 256, 128, 64, 32)
SKIPS = ("block4a_activation", "block3a_activation", "block2a_activation", "block1a_activation")
BRIDGE = "block7a_activation"
TRAINABLE_TAIL = 61


def required_multiple(m=None) -> int:
    """Input height and width must be multiples of the backbone's output stride (32)."""
    del m
    return 32


def _decoder_block(x, skip, filters, name):
    """Conv2DTranspose 2x2 stride 2 -> concatenation with the skip -> 2 x (Conv2D 3x3, BN, ReLU)."""
    x = keras.layers.Conv2DTranspose(filters, (2, 2), strides=2, padding="same", name=f"{name}_up")(x)
    x = keras.layers.Concatenate(name=f"{name}_concat")([x, skip])
    for i in (1, 2):
        x = keras.layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_normal",
                                name=f"{name}_conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def build_efficientnet_b7_unet(image_height, image_width, image_channels=3, num_classes=1,
                               input_normalize=True, imagenet_scaling=True,
                               name="flexunet_efficientnetb7_unet"):
    """Build the seed EfficientNetB7-UNet as a functional ``keras.Model``.

    Args:
        image_height, image_width: input size, multiples of 32, or ``None`` for any such size.
        image_channels: input channels (3 when ``imagenet_scaling``).
        num_classes: output channels (sigmoid for 1, softmax for more).
        input_normalize: scale inputs by 1/255 inside the model (``Rescaling`` layer) before the
            backbone (which divides by 255 itself).
        imagenet_scaling: the backbone as built for ImageNet weights (see :mod:`.efficientnet_unet`).
        name: model name.

    Raises:
        ValueError: for settings the network cannot take.
    """
    check_size(image_height, image_width, image_channels, imagenet_scaling, "EfficientNetB7UNet")
    size = tuple(None if s is None else int(s) for s in (image_height, image_width))
    inputs = keras.Input(size + (int(image_channels),), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs) if input_normalize else inputs
    feats = efficientnet_features(x, "B7", (BRIDGE,) + SKIPS, imagenet_scaling,
                                  trainable_tail=TRAINABLE_TAIL)
    y = feats[BRIDGE]
    skips = [feats[s] for s in SKIPS] + [x]
    for level, (skip, filters) in enumerate(zip(skips, DECODER_FILTERS), start=1):
        y = _decoder_block(y, skip, filters, f"decoder{level}")
    return keras.Model(inputs=inputs, outputs=head(y, num_classes), name=name)


def build(m, height, width, seed=None, *, flex=False):
    """The registry's entry (see :mod:`flexunet.architectures`); the Flex variant is the same network
    (no Dropout of its own: ``seed`` is unused)."""
    del seed, flex
    return build_efficientnet_b7_unet(height, width, image_channels=m.image_channels,
                                      num_classes=m.num_classes, input_normalize=m.input_normalize,
                                      imagenet_scaling=m.efficientnet_imagenet_scaling)
