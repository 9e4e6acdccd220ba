"""EfficientNet-UNet builder reproducing the seed "TensorflowEfficientUNet" (and the Lizard seed's
"TensorFlowFlexEfficientUNet", the same network), plus the EfficientNet backbone both EfficientNet
architectures share (:func:`efficientnet_features`, used by :mod:`.efficientnet_b7_unet`).

The network (widths follow the backbone; ``base_filters``/``num_layers`` are not used):

* a Keras Applications ``EfficientNet<efficientnet>`` backbone (B0..B7, ``include_top=False``, always
  built with ``weights=None``: nothing is downloaded; a seed ``.h5`` or training supplies the weights),
  with its own weightless ``Rescaling(1/255)`` and its ``Normalization`` layer (mean, variance, count
  are weights) and, by default, the per-channel ``Rescaling`` by 1/sqrt(ImageNet stddev) that Keras
  adds when the backbone is built for ImageNet weights, as every seed user's model was (``[model]
  efficientnet_imagenet_scaling = False`` leaves it out, as a seed model built with ``weights=None``);
* a bottleneck CBAR block on ``block7a_project_bn`` (1/32), then four decoder levels: nearest 2x
  upsampling, concatenation with ``block5c_drop`` (1/16), ``block3b_drop`` (1/8), ``block2b_drop``
  (1/4), ``block1a_project_bn`` (1/2), each followed by a CBAR block as wide as that skip; a fifth
  level concatenates the upsampled map with the backbone's input (the network input: the registry
  builds it without ``input_normalize``, as the seed's network does not divide by 255 before the
  backbone's own Rescaling) and uses the fourth level's width;
* CBAR block: Conv2D 3x3 (bias) -> BatchNormalization -> ReLU -> Conv2D 3x3 -> BatchNormalization ->
  ReLU, plus a 1x1 Conv2D shortcut of the block input, added;
* a 1x1 Conv2D head named ``probabilities``: one sigmoid channel for one class, ``num_classes``
  softmax channels for more. (The seed gives two classes one sigmoid channel; flexunet's models always
  have ``num_classes`` output channels, so a seed ``.h5`` of a two-class config does not load.)

Under Keras 3 the seed's own code does not build (it concatenates a list as ``encoder.input``); under
tf.keras 2 it builds this network, with the same weighted layers in the same order. The seed's B6
branch calls an EfficientNetB6 it never imported (a NameError); flexunet builds B6 like the others.
Input height and width must be multiples of 32.
"""
from __future__ import annotations

import math

import keras

__all__ = ["build", "build_efficientnet_unet", "efficientnet_features", "required_multiple",
           "head", "live_normalization", "IMAGENET_STDDEV_RGB"]

#: The per-channel ImageNet standard deviations Keras Applications' EfficientNet divides by (square
#: root) after its Normalization layer when built for ImageNet weights.
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)
OUTPUT_STRIDE = 32
#: Skip features of the decoder levels, deepest first (the seed's choice for every EfficientNet size).
SKIPS = ("block5c_drop", "block3b_drop", "block2b_drop", "block1a_project_bn")
BOTTLENECK = "block7a_project_bn"


def required_multiple(m=None) -> int:
    """Input height and width must be multiples of the backbone's output stride (32)."""
    del m
    return OUTPUT_STRIDE


def check_size(image_height, image_width, image_channels, imagenet_scaling, what="EfficientNet"):
    """Raise ValueError (one line) for an input the backbone cannot take."""
    for name, size in (("image_height", image_height), ("image_width", image_width)):
        if size is not None and (int(size) < OUTPUT_STRIDE or int(size) % OUTPUT_STRIDE):
            raise ValueError(f"{name} must be a positive multiple of {OUTPUT_STRIDE} for {what} "
                             f"(the backbone's output stride); got {size}")
    if imagenet_scaling and int(image_channels) != 3:
        raise ValueError(f"{what}'s backbone as the seed builds it (for ImageNet weights) takes 3 "
                         f"channels, not {image_channels}; set efficientnet_imagenet_scaling = False")


def efficientnet_features(x, variant, names, imagenet_scaling=True, trainable_tail=None):
    """Apply Keras Applications ``EfficientNet<variant>`` (``include_top=False``, ``weights=None``) to
    the tensor ``x`` and return ``{name: tensor}`` for the backbone layers named in ``names``.

    The backbone's layers join the caller's graph as they are (names, order, weights), so the model
    built from these tensors has them exactly where the seed's model has them. ``imagenet_scaling``
    inserts the weightless per-channel Rescaling Keras adds for ImageNet weights after the
    Normalization layer. ``trainable_tail``: freeze every backbone layer but the last that many (the
    seed's EfficientNetB7UNet freezes ``layers[:-61]``).
    """
    factory = getattr(keras.applications, f"EfficientNet{variant}")
    net = factory(include_top=False, weights=None, input_shape=tuple(x.shape[1:]))
    if trainable_tail is not None:
        for layer in net.layers[:-trainable_tail]:
            layer.trainable = False
    found = {}

    def call(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        if imagenet_scaling and isinstance(layer, keras.layers.Normalization):
            scale = [1.0 / math.sqrt(s) for s in IMAGENET_STDDEV_RGB]
            out = keras.layers.Rescaling(scale, name="imagenet_stddev_scaling")(out)
        if layer.name in names:
            found[layer.name] = out
        return out

    # Re-run the backbone's own layers on x (clone_function keeps each layer object, call_function
    # inserts the scaling): Keras Applications cannot add that layer without downloading weights.
    keras.models.clone_model(net, input_tensors=x, clone_function=lambda layer: layer,
                             call_function=call)
    live_normalization(net)
    missing = sorted(set(names) - set(found))
    if missing:
        raise ValueError(f"EfficientNet{variant} has no layer {missing[0]}")
    return found


def live_normalization(model) -> int:
    """Make ``model``'s Normalization layers compute with their variables; returns how many.

    Keras's Normalization computes with copies of its statistics (mean, variance) taken when it is
    built or loaded from a file. Reading the variables themselves lets statistics assigned later (a
    seed ``.h5``) take effect, and lets a traced export (``stateless_call``) bind them as weights
    instead of capturing the copies, which tf2onnx turns into extra graph inputs. Call it on a model
    reloaded from a ``.keras`` file before exporting it (the builders call it on a new network).
    """
    count = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization) and getattr(layer, "adapt_mean", None) is not None:
            layer.mean, layer.variance = layer.adapt_mean, layer.adapt_variance
            count += 1
    return count


def head(x, num_classes):
    """The 1x1 Conv2D output layer: one sigmoid channel for one class, softmax channels for more."""
    num_classes = int(num_classes)
    activation = "sigmoid" if num_classes == 1 else "softmax"
    return keras.layers.Conv2D(num_classes, 1, padding="same", activation=activation,
                               name="probabilities")(x)


def _cbar(x, filters, name):
    """The seed's CBAR block: two Conv2D 3x3 + BN + ReLU, plus a 1x1 Conv2D shortcut, added."""
    y = keras.layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv1")(x)
    y = keras.layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = keras.layers.Activation("relu", name=f"{name}_relu1")(y)
    y = keras.layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv2")(y)
    y = keras.layers.BatchNormalization(name=f"{name}_bn2")(y)
    y = keras.layers.Activation("relu", name=f"{name}_relu2")(y)
    shortcut = keras.layers.Conv2D(filters, 1, name=f"{name}_shortcut")(x)
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def build_efficientnet_unet(image_height, image_width, image_channels=3, num_classes=1,
                            efficientnet="B0", input_normalize=True, imagenet_scaling=True,
                            name="flexunet_efficientunet"):
    """Build the seed EfficientNet-UNet as a functional ``keras.Model``.

    Args:
        image_height, image_width: input size, multiples of 32, or ``None`` for any such size.
        image_channels: input channels (3 when ``imagenet_scaling``).
        num_classes: output channels (sigmoid for 1, softmax for more).
        efficientnet: backbone size, ``"B0"`` .. ``"B7"``.
        input_normalize: scale inputs by 1/255 inside the model (``Rescaling`` layer) before the
            backbone (which divides by 255 itself).
        imagenet_scaling: the backbone as built for ImageNet weights (see the module docstring).
        name: model name.

    Raises:
        ValueError: for settings the network cannot take.
    """
    check_size(image_height, image_width, image_channels, imagenet_scaling, "EfficientUNet")
    if efficientnet not in tuple(f"B{i}" for i in range(8)):
        raise ValueError(f"efficientnet must be one of B0..B7; got {efficientnet!r}")
    size = tuple(None if s is None else int(s) for s in (image_height, image_width))
    inputs = keras.Input(size + (int(image_channels),), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs) if input_normalize else inputs
    feats = efficientnet_features(x, efficientnet, (BOTTLENECK,) + SKIPS, imagenet_scaling)
    bottleneck = feats[BOTTLENECK]
    y = _cbar(bottleneck, int(bottleneck.shape[-1]), "bottleneck")
    skips = [feats[s] for s in SKIPS] + [x]
    widths = [int(s.shape[-1]) for s in skips[:-1]]
    widths.append(widths[-1])      # the last level reuses the fourth level's width, as in the seed
    for level, (skip, width) in enumerate(zip(skips, widths), start=1):
        y = keras.layers.UpSampling2D(name=f"decoder{level}_up")(y)
        y = keras.layers.Concatenate(axis=3, name=f"decoder{level}_concat")([y, skip])
        y = _cbar(y, width, f"decoder{level}")
    return keras.Model(inputs=inputs, outputs=head(y, num_classes), name=name)


def build(m, height, width, seed=None, *, flex=False):
    """The registry's entry (see :mod:`flexunet.architectures`); the Flex variant is the same network
    (no Dropout of its own: ``seed`` is unused)."""
    del seed, flex
    return build_efficientnet_unet(height, width, image_channels=m.image_channels,
                                   num_classes=m.num_classes, efficientnet=m.efficientnet,
                                   input_normalize=m.input_normalize,
                                   imagenet_scaling=m.efficientnet_imagenet_scaling)
