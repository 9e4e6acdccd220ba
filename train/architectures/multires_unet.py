"""MultiResUNet builder: the seed API's ``TensorflowMultiResUNet`` and the Lizard seed's
``TensorFlowFlexMultiResUNet``.

The network (Ibtehaz & Rahman's MultiResUNet as the seed builds it):

* a *conv unit* is ``Conv2D`` without bias -> ``BatchNormalization`` (-> ``relu``);
* a *MultiRes block* of width ``F`` uses ``W = F * 1.67``: three chained 3x3 conv units of
  ``int(W*0.167)``, ``int(W*0.333)`` and ``int(W*0.5)`` filters, their concatenation -> BN, plus a
  1x1 shortcut conv unit (no relu) of the summed width; ``relu(concat + shortcut)`` -> BN;
* a *Res path* of length ``n`` repeats ``n`` times: 3x3 conv unit (no relu) plus 1x1 conv unit
  (no relu) on the same input, ``relu(sum)`` -> BN;
* encoder level ``i < num_layers - 1``: MultiRes block of ``base_filters * 2**i``, a Res path of
  length ``num_layers - i`` on it (the skip) and a 2x2 max-pool (of the block, not the path); the
  deepest level is a MultiRes block only;
* decoder level ``f``: 2x2 stride-2 ``Conv2DTranspose`` (with bias), concatenation with the skip,
  MultiRes block;
* a 1x1 ``Conv2D(num_classes)`` head named ``probabilities``: sigmoid in the API seed whatever the
  number of classes, softmax for several classes in the Flex variant (``[model] final_activation``
  overrides both).

The seed divides its input by 255 in a Lambda layer; here that is the weightless
``Rescaling(1/255)`` of ``[model] input_normalize``. The additions are ``Add`` layers where the seed
adds tensors; that keeps the seed's graph, so ``model.layers`` lists the weight-owning layers in the
seed's order (its ``.h5`` loads by layer order). The seed ignores ``dropout_rate`` and ``dilation``
here; so does this builder.
"""
from __future__ import annotations

import numbers

import keras

__all__ = ["build", "build_multires_unet", "multires_widths", "required_multiple"]

ALPHA = 1.67


def required_multiple(m) -> int:
    """Input height and width must be multiples of ``2**(num_layers-1)`` (``m``: a ``[model]``
    section or the number of levels)."""
    return 2 ** (getattr(m, "num_layers", m) - 1)


def multires_widths(num_filters: int) -> tuple[int, int, int]:
    """The three conv widths of a MultiRes block of width ``num_filters``, computed in the seed's
    floating-point order (``W = F * 1.67`` then ``int(W * share)``)."""
    w = num_filters * ALPHA
    return int(w * 0.167), int(w * 0.333), int(w * 0.5)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class _Namer:
    """Unique, readable layer names: ``<prefix>_<kind><n>`` counted per prefix and kind."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def __call__(self, prefix: str, kind: str) -> str:
        key = f"{prefix}_{kind}"
        self.counts[key] = self.counts.get(key, 0) + 1
        return f"{key}{self.counts[key]}"


def _conv_unit(x, filters, kernel, act, prefix, name):
    """Conv2D (no bias) -> BN [-> relu], as the seed's ``conv_block``."""
    x = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False,
                            name=name(prefix, "conv"))(x)
    x = keras.layers.BatchNormalization(name=name(prefix, "bn"))(x)
    if act:
        x = keras.layers.Activation("relu", name=name(prefix, "relu"))(x)
    return x


def _add_relu_bn(a, b, prefix, name):
    """``relu(a + b)`` -> BN, closing a MultiRes block or a Res path step."""
    x = keras.layers.Add(name=name(prefix, "add"))([a, b])
    x = keras.layers.Activation("relu", name=name(prefix, "relu"))(x)
    return keras.layers.BatchNormalization(name=name(prefix, "bn"))(x)


def _multires_block(x0, num_filters, prefix, name):
    f1, f2, f3 = multires_widths(num_filters)
    x1 = _conv_unit(x0, f1, 3, True, prefix, name)
    x2 = _conv_unit(x1, f2, 3, True, prefix, name)
    x3 = _conv_unit(x2, f3, 3, True, prefix, name)
    xc = keras.layers.Concatenate(name=name(prefix, "concat"))([x1, x2, x3])
    xc = keras.layers.BatchNormalization(name=name(prefix, "bn"))(xc)
    sc = _conv_unit(x0, f1 + f2 + f3, 1, False, prefix, name)
    return _add_relu_bn(xc, sc, prefix, name)


def _res_path(x, num_filters, length, prefix, name):
    for _ in range(length):
        x1 = _conv_unit(x, num_filters, 3, False, prefix, name)
        sc = _conv_unit(x, num_filters, 1, False, prefix, name)
        x = _add_relu_bn(x1, sc, prefix, name)
    return x


def _validate(height, width, channels, num_classes, base_filters, num_layers):
    if not _is_int(num_layers) or num_layers < 2:
        raise ValueError(f"num_layers must be an int >= 2; got {num_layers!r}")
    if not _is_int(base_filters) or base_filters < 1:
        raise ValueError(f"base_filters must be an int >= 1; got {base_filters!r}")
    if min(multires_widths(base_filters)) < 1:
        raise ValueError(f"base_filters {base_filters} is too small for MultiResUNet: its first "
                         f"block's widths {multires_widths(base_filters)} must all be >= 1 (use >= 4)")
    for what, value in (("image_channels", channels), ("num_classes", num_classes)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{what} must be an int >= 1; got {value!r}")
    multiple = required_multiple(num_layers)
    for what, size in (("image_height", height), ("image_width", width)):
        if size is not None and (not _is_int(size) or size < 1 or size % multiple):
            raise ValueError(f"{what} must be a positive multiple of 2**(num_layers-1) = {multiple} "
                             f"for TensorflowMultiResUNet with num_layers={num_layers}; got {size!r}")


def build_multires_unet(image_height, image_width, image_channels=3, num_classes=1,
                        base_filters=16, num_layers=6, input_normalize=True,
                        final_activation="sigmoid", name="flexunet_multiresunet"):
    """Build the seed MultiResUNet as a functional ``keras.Model`` (``image`` -> ``probabilities``).

    ``image_height``/``image_width`` may be ``None`` (any multiple of ``2**(num_layers-1)``);
    ``final_activation`` is the head's activation. Raises ``ValueError`` for inconsistent settings.
    """
    _validate(image_height, image_width, image_channels, num_classes, base_filters, num_layers)
    name_of = _Namer()
    inputs = keras.Input((image_height, image_width, int(image_channels)), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs) if input_normalize else inputs

    skips = []
    for i in range(num_layers - 1):
        block = _multires_block(x, base_filters * 2**i, f"enc{i}", name_of)
        skips.append(_res_path(block, base_filters * 2**i, num_layers - i, f"res{i}", name_of))
        x = keras.layers.MaxPool2D((2, 2), name=f"enc{i}_pool")(block)
    x = _multires_block(x, base_filters * 2**(num_layers - 1), "bridge", name_of)

    for f in range(num_layers - 2, -1, -1):
        filters = base_filters * 2**f
        x = keras.layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"dec{f}_up")(x)
        x = keras.layers.Concatenate(name=f"dec{f}_skip")([x, skips[f]])
        x = _multires_block(x, filters, f"dec{f}", name_of)

    outputs = keras.layers.Conv2D(int(num_classes), (1, 1), padding="same",
                                  activation=final_activation, name="probabilities")(x)
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


def build(m, height, width, seed=None, *, flex=False):
    """The registry's entry (see :mod:`flexunet.architectures`). Head: ``[model] final_activation``
    if set; else softmax for the Flex variant with several classes (its seed head is always softmax,
    constantly 1 for one class, so one class gets the sigmoid here); else the API seed's sigmoid.
    ``seed`` is unused (no Dropout)."""
    del seed
    if m.final_activation:
        head = m.final_activation
    elif flex and m.num_classes > 1:
        head = "softmax"
    else:
        head = "sigmoid"
    return build_multires_unet(height, width, m.image_channels, m.num_classes, m.base_filters,
                               m.num_layers, input_normalize=m.input_normalize,
                               final_activation=head)
