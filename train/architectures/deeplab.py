"""DeepLabV3+ builder reproducing the seed "TensorflowDeepLabV3Plus" (and the Lizard seed's
"TensorFlowFlexDeepLabV3Plus", the same network).

The network, whose widths are fixed (``base_filters``/``num_layers`` are not used):

* a Keras Applications ResNet50 backbone (``include_top=False``, always built with ``weights=None``:
  nothing is downloaded; a seed ``.h5`` or training supplies the weights) on the (rescaled) input, cut
  at ``conv4_block6_2_relu`` (1/16 of the input size, 256 channels); its layers keep their Keras
  Applications names;
* atrous spatial pyramid pooling with 256 filters: image pooling (an average pool over the whole map,
  a 1x1 Conv2D with bias, BatchNormalization, ReLU, bilinear upsampling back to the map size) beside
  a 1x1 and three 3x3 Conv2D without bias at dilation 6, 12 and 18 (each followed by
  BatchNormalization and ReLU), concatenated, then a 1x1 Conv2D without bias, BatchNormalization, ReLU;
* bilinear upsampling by 4 to 1/4 of the input, concatenated with the low-level features of
  ``conv2_block3_2_relu`` through a 1x1 Conv2D(48) without bias, BatchNormalization and ReLU;
* two 3x3 Conv2D(256) without bias and with a ReLU activation of their own, each followed by
  BatchNormalization and ReLU, then bilinear upsampling by 4 to the input size;
* a 1x1 Conv2D head named ``probabilities`` (sigmoid for one class, softmax for more).

The seed's Flex variant puts a softmax on the head even for one class (a constant 1); this builder uses
the sigmoid there, as every flexunet network does. Both variants feed the backbone the input as the
pipeline gives it (the registry builds them without ``input_normalize``: the seed's network does not
divide by 255); ``input_normalize=True`` puts a weightless ``Rescaling(1/255)`` in front. The image pooling averages a map of a fixed size and Keras 3's bilinear
UpSampling2D needs static sizes, so the input size is fixed when the network is built (a dynamic-size
export is not possible); it must be a multiple of 16.
"""
from __future__ import annotations

import keras

__all__ = ["build", "build_deeplab", "required_multiple", "ASPP_FILTERS"]

ASPP_FILTERS = 256
LOW_LEVEL_FILTERS = 48
DEEP_FEATURES = "conv4_block6_2_relu"
LOW_LEVEL_FEATURES = "conv2_block3_2_relu"
OUTPUT_STRIDE = 16


def required_multiple(m=None) -> int:
    """Input height and width must be multiples of the backbone's output stride (16)."""
    del m
    return OUTPUT_STRIDE


def _conv_bn_relu(x, filters, kernel, name, dilation=1, conv_activation=None):
    """Conv2D without bias -> BatchNormalization -> ReLU (the seed's ASPP/decoder unit)."""
    x = keras.layers.Conv2D(filters, kernel, dilation_rate=dilation, padding="same", use_bias=False,
                            activation=conv_activation, kernel_initializer="he_normal",
                            name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _aspp(x):
    """Atrous spatial pyramid pooling on a map of static size (the seed's branch order)."""
    h, w = int(x.shape[1]), int(x.shape[2])
    pool = keras.layers.AveragePooling2D(pool_size=(h, w), name="aspp_pool")(x)
    pool = keras.layers.Conv2D(ASPP_FILTERS, 1, padding="same", kernel_initializer="he_normal",
                               name="aspp_pool_conv")(pool)
    pool = keras.layers.BatchNormalization(name="aspp_pool_bn")(pool)
    pool = keras.layers.ReLU(name="aspp_pool_relu")(pool)
    pool = keras.layers.UpSampling2D(size=(h, w), interpolation="bilinear", name="aspp_pool_up")(pool)
    branches = [pool, _conv_bn_relu(x, ASPP_FILTERS, 1, "aspp_d1")]
    branches += [_conv_bn_relu(x, ASPP_FILTERS, 3, f"aspp_d{d}", dilation=d) for d in (6, 12, 18)]
    x = keras.layers.Concatenate(axis=-1, name="aspp_concat")(branches)
    return _conv_bn_relu(x, ASPP_FILTERS, 1, "aspp_project")


def _validate(image_height, image_width, image_channels, num_classes):
    for what, size in (("image_height", image_height), ("image_width", image_width)):
        if size is None:
            raise ValueError(f"DeepLabV3Plus needs a fixed {what}: its image pooling averages a map of "
                             "a fixed size and Keras's bilinear upsampling needs static sizes")
        if int(size) < OUTPUT_STRIDE or int(size) % OUTPUT_STRIDE:
            raise ValueError(f"{what} must be a positive multiple of {OUTPUT_STRIDE} for DeepLabV3Plus "
                             f"(ResNet50's output stride); got {size}")
    if int(image_channels) < 1 or int(num_classes) < 1:
        raise ValueError("image_channels and num_classes must be >= 1")


def build_deeplab(image_height, image_width, image_channels=3, num_classes=1, input_normalize=True,
                  name="flexunet_deeplabv3plus"):
    """Build the seed DeepLabV3+ (ResNet50 backbone, weights=None) as a functional ``keras.Model``.

    Args:
        image_height, image_width: input size, multiples of 16 (fixed: no ``None``).
        image_channels: input channels.
        num_classes: output channels (sigmoid for 1, softmax for more).
        input_normalize: scale inputs by 1/255 inside the model (``Rescaling`` layer).
        name: model name.

    Raises:
        ValueError: for sizes the network cannot take.
    """
    _validate(image_height, image_width, image_channels, num_classes)
    image_height, image_width = int(image_height), int(image_width)
    inputs = keras.Input((image_height, image_width, int(image_channels)), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs) if input_normalize else inputs
    resnet = keras.applications.ResNet50(include_top=False, weights=None, input_tensor=x)
    deep = _aspp(resnet.get_layer(DEEP_FEATURES).output)
    low_level = resnet.get_layer(LOW_LEVEL_FEATURES).output
    factor = (image_height // 4 // int(deep.shape[1]), image_width // 4 // int(deep.shape[2]))
    deep = keras.layers.UpSampling2D(size=factor, interpolation="bilinear", name="decoder_up4")(deep)
    low_level = _conv_bn_relu(low_level, LOW_LEVEL_FILTERS, 1, "decoder_low_level")
    x = keras.layers.Concatenate(axis=-1, name="decoder_concat")([deep, low_level])
    x = _conv_bn_relu(x, ASPP_FILTERS, 3, "decoder_1", conv_activation="relu")
    x = _conv_bn_relu(x, ASPP_FILTERS, 3, "decoder_2", conv_activation="relu")
    factor = (image_height // int(x.shape[1]), image_width // int(x.shape[2]))
    x = keras.layers.UpSampling2D(size=factor, interpolation="bilinear", name="decoder_up_full")(x)
    activation = "sigmoid" if int(num_classes) == 1 else "softmax"
    outputs = keras.layers.Conv2D(int(num_classes), 1, padding="same", activation=activation,
                                  name="probabilities")(x)
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


def build(m, height, width, seed=None, *, flex=False):
    """The registry's entry (see :mod:`flexunet.architectures`); the Flex variant is the same network
    (no Dropout: ``seed`` is unused)."""
    del seed, flex
    return build_deeplab(height, width, image_channels=m.image_channels, num_classes=m.num_classes,
                         input_normalize=m.input_normalize)
