"""UNet builder reproducing the seed "TensorflowUNet" architecture with Keras 3 layers.

The network is a plain encoder/decoder UNet:

* encoder level ``i`` (``0 <= i < num_layers``): two ``Conv2D(base_filters * 2**i)`` with a
  ``Dropout(dropout_rate * i)`` between them (and optional BatchNormalization after each conv),
  followed by a 2x2 max-pool except on the deepest level;
* decoder level ``f`` (``num_layers - 2`` down to ``0``): a 2x2 stride-2 ``Conv2DTranspose``,
  concatenation with the encoder output of level ``f``, then the same conv/dropout/conv block;
* a 1x1 ``Conv2D(num_classes)`` head named ``"probabilities"``.

Kernel sizes shrink by 2 per level from ``base_kernels`` (floor 3) and dilations by 1 per level
from ``dilation`` (floor 1); the decoder reuses the schedule of the encoder level it mirrors.
Only stock Keras layers are used (no ``Lambda``), so models save, reload and export cleanly.
"""

import functools
import numbers
from typing import NamedTuple

import keras

__all__ = ["build", "build_unet", "count_parameters", "required_multiple"]


def required_multiple(num_layers):
    """Return the factor that input height and width must be a multiple of (``num_layers`` or a
    ``[model]`` config section).

    A UNet with ``num_layers`` levels max-pools ``num_layers - 1`` times, so spatial sizes must
    be divisible by ``2 ** (num_layers - 1)`` for the skip connections to line up.
    """
    num_layers = getattr(num_layers, "num_layers", num_layers)
    return 2 ** (num_layers - 1)


def count_parameters(model):
    """Return the total number of parameters (trainable and non-trainable) of ``model``."""
    return int(model.count_params())


def _is_int(value):
    """True for integers (including numpy integers) but not for booleans."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _square(value, what):
    """Return the side of a square ``(n, n)`` pair (or a bare int) given for ``what``."""
    if _is_int(value):
        return int(value)
    try:
        first, second = value
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an int or a pair (n, n); got {value!r}") from None
    if first != second or not _is_int(first):
        raise ValueError(f"{what} must be a square pair of ints (n, n); got {value!r}")
    return int(first)


def _schedule(first, step, floor, num_layers):
    """Square per-level values of the encoder: ``first`` on level 0, then ``step`` less per level,
    never below ``floor`` (kernel sizes: step 2, floor 3; dilation rates: step 1, floor 1)."""
    values = [first] + [max(first - step * i, floor) for i in range(1, num_layers)]
    return [(v, v) for v in values]


def _validate(image_height, image_width, image_channels, num_classes, base_filters,
              kernel, num_layers, dilation, dropout_rate):
    """Raise ``ValueError`` with a one-line explanation for inconsistent hyperparameters."""
    if not _is_int(num_layers) or num_layers < 2:
        raise ValueError(f"num_layers must be an int >= 2; got {num_layers!r}")
    if not _is_int(base_filters) or base_filters < 1:
        raise ValueError(f"base_filters must be an int >= 1; got {base_filters!r}")
    if not _is_int(image_channels) or image_channels < 1:
        raise ValueError(f"image_channels must be an int >= 1; got {image_channels!r}")
    if not _is_int(num_classes) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1; got {num_classes!r}")
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"base_kernels must be an odd size >= 1; got {kernel}")
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1; got {dilation}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1); got {dropout_rate!r}")
    deepest = dropout_rate * (num_layers - 1)
    if deepest >= 1.0:
        raise ValueError(
            f"dropout_rate {dropout_rate} * (num_layers - 1) = {deepest:g} must be < 1 "
            f"(the deepest level uses dropout_rate * level)")
    multiple = required_multiple(num_layers)
    for what, size in (("image_height", image_height), ("image_width", image_width)):
        if size is None:
            continue
        if not _is_int(size) or size < 1 or size % multiple:
            raise ValueError(
                f"{what} must be a positive multiple of 2**(num_layers-1) = {multiple} "
                f"for num_layers={num_layers}; got {size!r}")


class _Level(NamedTuple):
    """One level's settings; the decoder level mirroring encoder level ``i`` uses the same."""

    filters: int
    kernel_size: tuple
    dilation_rate: tuple
    dropout: float


def _levels(kernel, base_dilation, base_filters, num_layers, dropout_rate):
    """Level ``i``: ``base_filters * 2**i`` filters, the kernel and dilation schedules, and
    ``dropout_rate * i``."""
    kernel_sizes = _schedule(kernel, 2, 3, num_layers)
    dilations = _schedule(base_dilation, 1, 1, num_layers)
    return [_Level(base_filters * 2**i, kernel_sizes[i], dilations[i], dropout_rate * i)
            for i in range(num_layers)]


def _conv_block(x, level, prefix, activation, normalization, seed):
    """Conv -> [BN] -> Dropout -> Conv -> [BN], as in the seed."""
    conv_kwargs = dict(activation=activation, kernel_initializer="he_normal",
                       dilation_rate=level.dilation_rate, padding="same")
    x = keras.layers.Conv2D(level.filters, level.kernel_size, name=f"{prefix}_conv1", **conv_kwargs)(x)
    if normalization:
        x = keras.layers.BatchNormalization(name=f"{prefix}_bn1")(x)
    x = keras.layers.Dropout(level.dropout, seed=seed, name=f"{prefix}_dropout")(x)
    x = keras.layers.Conv2D(level.filters, level.kernel_size, name=f"{prefix}_conv2", **conv_kwargs)(x)
    if normalization:
        x = keras.layers.BatchNormalization(name=f"{prefix}_bn2")(x)
    return x


def _encoder(x, levels, block):
    """Each level's block, then a 2x2 max-pool except on the deepest; returns the deepest output
    and every level's output (the skips)."""
    skips = []
    for i, level in enumerate(levels):
        x = block(x, level, f"enc{i}")
        skips.append(x)
        if i < len(levels) - 1:
            x = keras.layers.MaxPool2D((2, 2), name=f"enc{i}_pool")(x)
    return x, skips


def _decoder(x, levels, skips, block):
    """From the second-deepest level up: 2x2 stride-2 transpose conv, concatenation with that
    level's skip, then the level's block."""
    for f in range(len(levels) - 2, -1, -1):
        level = levels[f]
        x = keras.layers.Conv2DTranspose(level.filters, (2, 2), strides=(2, 2), padding="same",
                                         name=f"dec{f}_up")(x)
        x = keras.layers.Concatenate(name=f"dec{f}_concat")([x, skips[f]])
        x = block(x, level, f"dec{f}")
    return x


def build_unet(image_height, image_width, image_channels=3, num_classes=1, base_filters=16,
               base_kernels=(3, 3), num_layers=6, dilation=(1, 1), dropout_rate=0.05,
               normalization=False, input_normalize=True, activation="relu",
               final_activation=None, seed=None, name="flexunet_unet"):
    """Build the seed UNet as a functional ``keras.Model``.

    Args:
        image_height: input height, or ``None`` for any height that is a multiple of
            ``required_multiple(num_layers)``.
        image_width: input width, or ``None`` (same constraint as ``image_height``).
        image_channels: number of input channels.
        num_classes: number of output channels.
        base_filters: filters of the first level; level ``i`` has ``base_filters * 2**i``.
        base_kernels: odd kernel size ``(k, k)`` (or ``k``) of the first level; each deeper
            level uses 2 less, never below 3.
        num_layers: number of encoder levels (>= 2).
        dilation: dilation ``(d, d)`` (or ``d``) of the first level; each deeper level uses
            1 less, never below 1.
        dropout_rate: per-level dropout step; level ``i`` drops ``dropout_rate * i``.
        normalization: add BatchNormalization after every hidden ``Conv2D`` (not after the
            transpose convolutions or the head).
        input_normalize: scale inputs by 1/255 inside the model (``Rescaling`` layer).
        activation: activation of the hidden convolutions.
        final_activation: activation of the 1x1 head; defaults to ``"sigmoid"`` when
            ``num_classes == 1`` and ``"softmax"`` otherwise.
        seed: seed of the Dropout layers (weight initialisation follows the global Keras
            seed, see ``keras.utils.set_random_seed``).
        name: model name.

    Returns:
        A ``keras.Model`` mapping ``image`` ``(N, H, W, image_channels)`` to ``probabilities``
        ``(N, H, W, num_classes)``.

    Raises:
        ValueError: if the hyperparameters are inconsistent.
    """
    kernel = _square(base_kernels, "base_kernels")
    base_dilation = _square(dilation, "dilation")
    _validate(image_height, image_width, image_channels, num_classes, base_filters,
              kernel, num_layers, base_dilation, dropout_rate)
    image_height, image_width = (None if size is None else int(size)
                                 for size in (image_height, image_width))
    image_channels, num_classes = int(image_channels), int(num_classes)
    base_filters, num_layers = int(base_filters), int(num_layers)
    dropout_rate = float(dropout_rate)

    levels = _levels(kernel, base_dilation, base_filters, num_layers, dropout_rate)
    block = functools.partial(_conv_block, activation=activation, normalization=normalization,
                              seed=seed)

    inputs = keras.Input((image_height, image_width, image_channels), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs) if input_normalize else inputs
    x, skips = _encoder(x, levels, block)
    x = _decoder(x, levels, skips, block)

    head_activation = final_activation or ("sigmoid" if num_classes == 1 else "softmax")
    outputs = keras.layers.Conv2D(num_classes, (1, 1), activation=head_activation,
                                  name="probabilities")(x)
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


def build(m, height, width, seed=None, *, flex=False):
    """The registry's entry (see :mod:`flexunet.architectures`): the seed TensorflowUNet and the Lizard
    seed's TensorFlowFlexUNet are the same network."""
    del flex
    return build_unet(
        image_height=height, image_width=width, image_channels=m.image_channels,
        num_classes=m.num_classes, base_filters=m.base_filters, base_kernels=m.base_kernels,
        num_layers=m.num_layers, dilation=m.dilation, dropout_rate=m.dropout_rate,
        normalization=m.normalization, input_normalize=m.input_normalize, activation=m.activation,
        final_activation=m.final_activation, seed=seed)
