"""The network builders: every architecture a config's ``[model] model`` can name.

This layer sits between core and runtime (``flexunet.architectures``, folder ``train/architectures``):
it builds Keras models from a config's ``[model]`` section and nothing else, so the runtime can rebuild
a seed ``.h5`` model without importing the training code. Keras is imported only inside the builder
modules; importing this package imports neither Keras nor TensorFlow.

Every builder module provides

* ``build(m, height, width, seed=None, *, flex=False) -> keras.Model``: ``m`` is the config's
  :class:`~flexunet.core.config_schema.ModelConfig`, ``height``/``width`` the input size (``None`` for
  any size the network accepts), ``seed`` the Dropout seed; ``flex`` selects the Lizard seed's
  multiclass "Flex" variant where it differs. The model's input is named ``image`` and takes raw
  0..255 pixels when ``m.input_normalize`` is true (a weightless ``Rescaling(1/255)`` first), 0..1
  otherwise; its output layer is named ``probabilities`` (sigmoid for one class, softmax for more).
  The weight-owning layers come in the seed's order with the seed's weight shapes, so a seed ``.h5``
  loads into it by layer order. No ``Lambda`` layers: models save, reload and export cleanly.
* ``required_multiple(m) -> int``: what input height and width must be a multiple of.

Builders raise ``ValueError`` (one line) for inconsistent settings; :func:`build` turns that into a
:class:`~flexunet.core.errors.ConfigError` naming the config file.
"""
from __future__ import annotations

import importlib

from flexunet.core.config_schema import MODEL_NAMES
from flexunet.core.errors import ConfigError

__all__ = ["ARCHITECTURES", "REFUSED", "architecture", "build", "required_multiple", "is_flex"]

#: Config model name -> builder module (in this package). The seed API's names, the Lizard seed's
#: "Flex" names and flexunet's own spellings of the plain UNet.
ARCHITECTURES = {
    "TensorflowUNet": "unet", "TensorFlowUNet": "unet", "TensorflowSlightlyFlexibleUNet": "unet",
    "UNet": "unet", "TensorFlowFlexUNet": "unet", "TensorflowFlexUNet": "unet",
}

#: Config model name -> why flexunet does not build it (one line).
REFUSED: dict[str, str] = {}


def is_flex(name: str) -> bool:
    """True for the Lizard seed's multiclass "Flex" family names."""
    return name.lower().startswith("tensorflowflex")


def architecture(cfg):
    """The builder module for ``cfg``'s ``[model] model``; a one-line ConfigError for one flexunet
    does not build (saying why)."""
    name = cfg.model.model
    if name in REFUSED:
        raise cfg.error("model", "model", f"{name} is not supported: {REFUSED[name]}")
    if name not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise cfg.error("model", "model", f"{name!r} is not one of {known}")
    return importlib.import_module(f"{__name__}.{ARCHITECTURES[name]}")


def required_multiple(cfg) -> int:
    """What the input height and width of ``cfg``'s network must be a multiple of."""
    return architecture(cfg).required_multiple(cfg.model)


def build(cfg, height: int | None = None, width: int | None = None):
    """The network ``cfg`` describes (``height``/``width`` override the configured input size;
    ``None`` keeps it). Raises a one-line ConfigError for settings the builder rejects."""
    module = architecture(cfg)
    m = cfg.model
    h = m.image_height if height is None else height
    w = m.image_width if width is None else width
    try:
        return module.build(m, h, w, seed=cfg.seed, flex=is_flex(m.model))
    except ValueError as exc:
        raise ConfigError(f"{cfg.path}: [model] {exc}") from None


def _check_names() -> None:
    unknown = (set(ARCHITECTURES) | set(REFUSED)) - set(MODEL_NAMES)
    if unknown:  # a programming error, caught by the tests
        raise RuntimeError(f"architectures not in core.config_schema.MODEL_NAMES: {sorted(unknown)}")


_check_names()
