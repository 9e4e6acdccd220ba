"""The network builders: every architecture a config's ``[model] model`` can name.

This layer sits between core and runtime (``flexunet.architectures``, folder ``train/architectures``):
it builds Keras models from a config's ``[model]`` section and nothing else, so the runtime can rebuild
a seed ``.h5`` model without importing the training code. Keras is imported only inside the builder
modules; importing this package imports neither Keras nor TensorFlow.

Every builder module provides

* ``build(m, height, width, seed=None, *, flex=False) -> keras.Model``: ``m`` is the config's
  :class:`~flexunet.core.config_schema.ModelConfig`, ``height``/``width`` the input size (``None`` for
  any size the network accepts), ``seed`` the Dropout seed; ``flex`` selects the Lizard seed's
  multiclass "Flex" variant where it differs. The model's input is named ``image``; a weightless
  ``Rescaling(1/255)`` comes first when ``m.input_normalize`` is true, which :func:`build` sets where
  the seed's network divides by 255 itself (``SEED_DIVIDES_BY_255``); its output layer is named ``probabilities``
  (sigmoid for one class, softmax for more). The weight-owning layers come in the seed's order with the seed's weight shapes, so a seed ``.h5``
  loads into it by layer order. No ``Lambda`` layers: models save, reload and export cleanly.
* ``required_multiple(m) -> int``: what input height and width must be a multiple of.

Builders raise ``ValueError`` (one line) for inconsistent settings; :func:`build` turns that into a
:class:`~flexunet.core.errors.ConfigError` naming the config file.
"""
from __future__ import annotations

import dataclasses
import importlib

from flexunet.core.config_schema import MODEL_NAMES
from flexunet.core.errors import ConfigError

__all__ = ["ARCHITECTURES", "REFUSED", "architecture", "check_supported", "build", "required_multiple", "is_flex",
           "prepare_loaded"]

#: Config model name -> builder module (in this package). The seed API's names, the Lizard seed's
#: "Flex" names and flexunet's own spellings of the plain UNet.
ARCHITECTURES = {
    "TensorflowUNet": "unet", "TensorFlowUNet": "unet", "TensorflowSlightlyFlexibleUNet": "unet",
    "UNet": "unet", "TensorFlowFlexUNet": "unet", "TensorflowFlexUNet": "unet",
    "TensorflowAttentionUNet": "attention_unet", "TensorFlowFlexAttentionUNet": "attention_unet",
    "TensorflowFlexAttentionUNet": "attention_unet",
    "TensorflowUNet3Plus": "unet3plus", "TensorFlowFlexUNet3Plus": "unet3plus",
    "TensorflowFlexUNet3Plus": "unet3plus",
    "TensorflowMultiResUNet": "multires_unet", "TensorFlowFlexMultiResUNet": "multires_unet",
    "TensorflowFlexMultiResUNet": "multires_unet",
    "TensorflowSharpUNet": "sharp_unet", "TensorFlowFlexSharpUNet": "sharp_unet",
    "TensorflowFlexSharpUNet": "sharp_unet",
    "TensorflowDeepLabV3Plus": "deeplab", "TensorFlowFlexDeepLabV3Plus": "deeplab",
    "TensorflowFlexDeepLabV3Plus": "deeplab",
    "TensorflowEfficientUNet": "efficientnet_unet", "TensorFlowFlexEfficientUNet": "efficientnet_unet",
    "TensorflowFlexEfficientUNet": "efficientnet_unet",
    "TensorflowEfficientNetB7UNet": "efficientnet_b7_unet",
    "TensorFlowFlexEfficientNetB7UNet": "efficientnet_b7_unet",
    "TensorflowFlexEfficientNetB7UNet": "efficientnet_b7_unet",
    "TensorflowU2Net": "u2net", "TensorFlowFlexU2Net": "u2net", "TensorflowFlexU2Net": "u2net",
}

_TRANSUNET = ("flexunet has no builder for its ViT encoder (the seed's custom patch_extract/patch_embedding "
              "layers), and the seed's code does not build under Keras 3 (tf.reshape on a Keras tensor)")
_SWINUNET = ("flexunet has no builder for its Swin Transformer blocks (the seed's custom layers), and the "
             "seed's code does not build under Keras 3 (shape.as_list() on a Keras 3 tuple shape)")
#: Builder module -> whether the seed's network divides its input by 255 itself (an x/255 Lambda first):
#: None = as ``[model] input_normalize`` says (the plain UNet), True = always (MultiResUNet). The others
#: never do: they see the pixels as the pipeline gives them (raw unless ``[dataset] image_normalize``).
SEED_DIVIDES_BY_255 = {"unet": None, "multires_unet": True}

#: Config model name -> why flexunet does not build it (one line).
REFUSED: dict[str, str] = {
    prefix + arch: reason
    for arch, reason in (("TransUNet", _TRANSUNET), ("SwinUNet", _SWINUNET))
    for prefix in ("Tensorflow", "TensorFlowFlex", "TensorflowFlex")
}


def is_flex(name: str) -> bool:
    """True for the Lizard seed's multiclass "Flex" family names."""
    return name.lower().startswith("tensorflowflex")


def check_supported(cfg) -> str:
    """The builder module's name for ``cfg``'s ``[model] model``, without importing it (nor Keras); a
    one-line ConfigError for an architecture flexunet does not build (saying why)."""
    name = cfg.model.model
    if name in REFUSED:
        raise cfg.error("model", "model", f"{name} is not supported: {REFUSED[name]}")
    if name not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise cfg.error("model", "model", f"{name!r} is not one of {known}")
    return f"{__name__}.{ARCHITECTURES[name]}"


def architecture(cfg):
    """The builder module for ``cfg``'s ``[model] model`` (imports Keras); refusals as
    :func:`check_supported`."""
    return importlib.import_module(check_supported(cfg))


def required_multiple(cfg) -> int:
    """What the input height and width of ``cfg``'s network must be a multiple of."""
    return architecture(cfg).required_multiple(cfg.model)


def build(cfg, height: int | None = None, width: int | None = None):
    """The network ``cfg`` describes (``height``/``width`` override the configured input size;
    ``None`` keeps it). Raises a one-line ConfigError for settings the builder rejects."""
    module = architecture(cfg)
    m = cfg.model
    divides = SEED_DIVIDES_BY_255.get(module.__name__.rpartition(".")[2], False)
    if divides is not None:
        m = dataclasses.replace(m, input_normalize=divides)
    h = m.image_height if height is None else height
    w = m.image_width if width is None else width
    try:
        return module.build(m, h, w, seed=cfg.seed, flex=is_flex(m.model))
    except ValueError as exc:
        raise ConfigError(f"{cfg.path}: [model] {exc}") from None


def prepare_loaded(model):
    """A network read back from a ``.keras`` file made ready to run and to export: Keras's
    Normalization layers (the EfficientNet backbones) compute with copies of their statistics, which a
    traced export turns into extra graph inputs; they are pointed back at their variables."""
    if any(type(layer).__name__ == "Normalization" for layer in model.layers):
        from flexunet.architectures.efficientnet_unet import live_normalization

        live_normalization(model)
    return model


def _check_names() -> None:
    unknown = (set(ARCHITECTURES) | set(REFUSED)) - set(MODEL_NAMES)
    if unknown:  # a programming error, caught by the tests
        raise RuntimeError(f"architectures not in core.config_schema.MODEL_NAMES: {sorted(unknown)}")


_check_names()
