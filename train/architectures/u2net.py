"""U^2-Net: the seed API's "TensorflowU2Net" and the Lizard seed's "TensorFlowFlexU2Net" (Qin et al.
2020, nested residual U-blocks), rebuilt with stock Keras 3 layers.

Every convolution is a *unit*: Conv2D 3x3 with bias, "same" padding (dilated where said) and relu;
no BatchNormalization, no Dropout. With ``L = num_layers`` and ``F_i = base_filters * 2**i``
(``i = 0 .. L-1``), intermediate widths ``M_i = F_i // 4``:

* **RSU block** ``(mid, out, depth)``: an ``in`` unit of ``out`` filters; a unit of ``mid``; then
  ``depth`` times a 2x2 max-pool and a unit of ``mid``; a ``mid`` unit dilated 2 at the bottom; then
  ``depth`` times the concatenation ``[x, skip]`` with the encoder unit of the same scale, a ``mid``
  unit and a 2x bilinear upsampling; the concatenation with the first ``mid`` unit, an ``out`` unit,
  plus the ``in`` unit (``Add``).
* **RSU-4F block** ``(mid, out)``: an ``in`` unit of ``out``; four ``mid`` units dilated 1, 2, 4, 8;
  two ``mid`` units dilated 4 and 2 on ``[x, skip]``; an ``out`` unit on ``[x, first mid unit]``; plus
  the ``in`` unit. No resampling.
* encoder: RSU ``(M_0, F_0, L+1)`` on the image, then for level ``i = 1 .. L-1`` a max-pool and RSU
  ``(M_i, F_i, L+1-i)``, then twice a max-pool and RSU-4F ``(F_{L-1} // 2, F_{L-1})``;
* decoder: a 2x bilinear upsampling, the concatenation with the first RSU-4F's output and an RSU-4F;
  then for level ``i = L-1 .. 0``: upsampling, concatenation with the encoder's level ``i`` and RSU
  ``(M_i, F_i, L+1-i)``;
* side outputs: on each of the ``L + 2`` decoder outputs (the deepest is the last RSU-4F of the
  encoder), from full scale down, a Conv2D 3x3 with ``num_classes`` filters, bilinear upsampling by
  ``2**s`` to full scale (``s`` = its scale) and a sigmoid; their concatenation -> Conv2D 1x1 with
  ``num_classes`` filters named ``probabilities``: the fused map.

Every path pools ``L + 1`` times, so height and width must be multiples of ``2**(L+1)``. At most
``MAX_LEVELS`` (6) levels: the graph of a deeper one (over a thousand layers on its longest path)
is nested deeper than Keras can build or reload a model within Python's default recursion limit.

**Outputs.** The seed builds the network without deep supervision (its ``deep_supervision = False``
is hard-coded): its model has one output, the fused map, and the side outputs are only inputs of it.
This model is the same: one output ``probabilities``, the side outputs inside it with their weights
in the seed's places, so the seed's ``.h5`` loads by layer order and the export has one output.

**Activations.** The seed hard-codes relu inside (``[model] activation`` is ignored) and a sigmoid
on every side output and on the fused map, for any number of classes (also in the Flex variant).
Here the fused head is ``[model] final_activation`` when set, else that sigmoid; the side outputs
are always sigmoid. A multiclass seed model thus outputs per-class sigmoids (not summing to 1), whose
argmax is the mask; Keras's categorical cross-entropy, which the Lizard seed trains with, normalises
them. ``flex`` builds the same network: the Lizard seed's class differs only in where it reads the
config.

As in the seed, ``dropout_rate``, ``normalization``, ``base_kernels`` and ``dilation`` do not change
this network; the seed's widths of the blocks (``filter_num_*``) are always its "auto" ones from
``base_filters`` and ``num_layers``, and the other keys it reads (``filter_num_begin``, ``depth``,
``num_heads`` ... copied from its Swin-UNet) are unused. The seed's network does not divide its input
by 255 (its x/255 line is commented out; the registry builds it without ``input_normalize``). The
seed's input is ``(image_width, image_height, channels)`` (swapped; the same for square inputs); here
it is ``(height, width, channels)``: the weights do not depend on it.

Graph facts kept so that ``model.layers`` lists the weight-owning layers in the seed's order (Keras
lists layers by their longest distance to the output): the concatenations take ``[x, skip]`` in the
seed's order (it fixes the kernels' channel layout), and the seed's bilinear ``UpSampling2D`` is one
layer here too, :func:`~flexunet.architectures.bilinear.upsample_bilinear` (the same values, and it
traces for a dynamic input size), so every path has the seed's length. The seed's relu layers are
the convolutions' activations here and its side-0 sigmoid that of its convolution: weightless
layers do not take part in the order.
"""
from __future__ import annotations

import keras

from flexunet.architectures.bilinear import upsample_bilinear
from flexunet.architectures.checks import require_common

__all__ = ["build", "build_u2net", "required_multiple", "widths"]

#: RSU-4F's dilation rates (fixed by the seed): encoder units, then its two decoder units.
DILATIONS_4F = (1, 2, 4, 8)
#: The most levels (``num_layers``) built; see the module docstring.
MAX_LEVELS = 6


def required_multiple(m) -> int:
    """Input height and width must be a multiple of ``2 ** (num_layers + 1)`` (``m``: a ``[model]``
    section or the number of levels): every path through the network max-pools that many times."""
    return 2 ** (getattr(m, "num_layers", m) + 1)


def widths(base_filters: int, num_layers: int) -> tuple[list[int], list[int], int, int]:
    """The seed's "auto" widths: RSU outputs ``base * 2**i``, RSU intermediates a quarter of them,
    RSU-4F output the deepest RSU's and its intermediate half of it."""
    out = [base_filters * 2**i for i in range(num_layers)]
    return out, [f // 4 for f in out], out[-1], out[-1] // 2


def _unit(x, filters, name, dilation=1):
    return keras.layers.Conv2D(filters, 3, padding="same", dilation_rate=dilation, activation="relu", name=name)(x)


def _concat(x, skip, name):
    return keras.layers.Concatenate(name=f"{name}_concat")([x, skip])


def _rsu(x, mid, out, depth, name):
    """The seed's RSU block (see the module docstring)."""
    first = _unit(x, out, f"{name}_in")
    skips = [_unit(first, mid, f"{name}_down0")]
    x = skips[0]
    for i in range(1, depth + 1):
        x = keras.layers.MaxPool2D((2, 2), name=f"{name}_pool{i}")(x)
        x = _unit(x, mid, f"{name}_down{i}")
        skips.append(x)
    x = _unit(x, mid, f"{name}_bottom", dilation=2)
    for i in range(depth, 0, -1):
        x = _unit(_concat(x, skips[i], f"{name}_up{i}"), mid, f"{name}_up{i}")
        x = upsample_bilinear(x, 2, f"{name}_up{i}_resize")
    x = _unit(_concat(x, skips[0], f"{name}_out"), out, f"{name}_out")
    return keras.layers.Add(name=f"{name}_residual")([x, first])


def _rsu4f(x, mid, out, name):
    """The seed's RSU-4F block (see the module docstring)."""
    first = _unit(x, out, f"{name}_in")
    skips, x = [], first
    for d in DILATIONS_4F:
        x = _unit(x, mid, f"{name}_down_d{d}", dilation=d)
        skips.append(x)
    for i, d in ((2, 4), (1, 2)):  # the seed's decoder: dilations 4 and 2 on [x, skip]
        x = _unit(_concat(x, skips[i], f"{name}_up_d{d}"), mid, f"{name}_up_d{d}", dilation=d)
    x = _unit(_concat(x, skips[0], f"{name}_out"), out, f"{name}_out")
    return keras.layers.Add(name=f"{name}_residual")([x, first])


def _check(height, width, num_layers, base_filters, num_classes):
    """One-line ``ValueError`` for settings this network cannot be built with."""
    require_common("TensorflowU2Net", None, None, 1, 0.0, num_layers=(num_layers, 1),
                   base_filters=(base_filters, 4), num_classes=(num_classes, 1))
    if num_layers > MAX_LEVELS:
        raise ValueError(f"num_layers must be at most {MAX_LEVELS} for TensorflowU2Net; got {num_layers} (a "
                         "deeper graph exceeds the nesting Keras builds and reloads within Python's recursion limit)")
    require_common("TensorflowU2Net", height, width, required_multiple(num_layers), 0.0)


def _encode_decode(x, base_filters, num_layers):
    """The U^2-Net body: the decoder outputs (with the deepest encoder block), deepest first."""
    out, mid, out4f, mid4f = widths(base_filters, num_layers)
    depth = [num_layers + 1 - i for i in range(num_layers)]  # each level's RSU depth
    x = _rsu(x, mid[0], out[0], depth[0], "enc0")
    skips = [x]
    for i in range(1, num_layers):
        x = keras.layers.MaxPool2D((2, 2), name=f"enc{i}_pool")(x)
        x = _rsu(x, mid[i], out[i], depth[i], f"enc{i}")
        skips.append(x)
    for j in range(2):
        x = keras.layers.MaxPool2D((2, 2), name=f"enc4f{j}_pool")(x)
        x = _rsu4f(x, mid4f, out4f, f"enc4f{j}")
        skips.append(x)
    sides = [x]
    x = upsample_bilinear(x, 2, "dec4f_resize")
    x = _rsu4f(_concat(x, skips[num_layers], "dec4f"), mid4f, out4f, "dec4f")
    sides.append(x)
    for i in range(num_layers - 1, -1, -1):
        x = upsample_bilinear(x, 2, f"dec{i}_resize")
        x = _rsu(_concat(x, skips[i], f"dec{i}"), mid[i], out[i], depth[i], f"dec{i}")
        sides.append(x)
    return sides


def build_u2net(image_height, image_width, image_channels=3, num_classes=1, base_filters=16,
                num_layers=6, input_normalize=False, final_activation="sigmoid", name="flexunet_u2net"):
    """The seed's U^2-Net as a functional ``keras.Model`` mapping ``image`` ``(N, H, W,
    image_channels)`` to the fused ``probabilities`` ``(N, H, W, num_classes)``. ``None`` sizes
    accept any multiple of ``2 ** (num_layers + 1)``. Raises ``ValueError`` for bad settings."""
    _check(image_height, image_width, num_layers, base_filters, num_classes)
    inputs = keras.Input((image_height, image_width, image_channels), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs) if input_normalize else inputs
    sides = _encode_decode(x, base_filters, num_layers)[::-1]  # full scale first
    maps = [keras.layers.Conv2D(num_classes, 3, padding="same", activation="sigmoid", name="side0")(sides[0])]
    for s, feature in enumerate(sides[1:], start=1):
        y = keras.layers.Conv2D(num_classes, 3, padding="same", name=f"side{s}_conv")(feature)
        y = upsample_bilinear(y, 2**s, f"side{s}_resize")
        maps.append(keras.layers.Activation("sigmoid", name=f"side{s}_sigmoid")(y))
    fused = keras.layers.Concatenate(name="sides_concat")(maps)
    outputs = keras.layers.Conv2D(num_classes, 1, activation=final_activation, name="probabilities")(fused)
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


def build(m, height, width, seed=None, *, flex=False):
    """The registry's entry (see :mod:`flexunet.architectures`); ``flex`` builds the same network and
    ``seed`` is unused (no Dropout; see the module docstring)."""
    del seed, flex
    return build_u2net(height, width, m.image_channels, m.num_classes, m.base_filters, m.num_layers,
                       input_normalize=m.input_normalize, final_activation=m.final_activation or "sigmoid")
