"""How much memory a config's UNet needs, from the config alone (nothing is built, nothing imported
but psutil), and the refusal of a model this machine cannot hold.

The figures are float32 and deliberately a floor, so that only what cannot fit is refused:

* building the model holds its weights: 4 bytes a parameter;
* training holds the weights, their gradients and Adam's two moments (16 bytes a parameter) and
  the output of every layer for one batch at the configured input size (what backpropagation keeps;
  TensorFlow's own workspace comes on top).

The parameter count and the layer outputs follow :mod:`flexunet.architectures.unet` exactly (the tests
compare them with a built model).  The memory a process may use is what the operating system
reports available (psutil), read when a command starts.
"""
from __future__ import annotations

from dataclasses import dataclass

from flexunet.core.config import UNET_MODEL_NAMES, Config, ModelConfig
from flexunet.core import machine
from flexunet.core.errors import ConfigError

FLOAT_BYTES = 4
#: weights, gradients, and Adam's first and second moments, float32
TRAINING_BYTES_PER_PARAMETER = 4 * FLOAT_BYTES


@dataclass(frozen=True)
class Estimate:
    """The memory a config's model needs (bytes) and what this machine has available."""

    parameters: int
    activations_per_sample: int  # outputs of every layer for one input of the configured size
    batch_size: int
    available: int
    total: int

    @property
    def weights_bytes(self) -> int:
        return FLOAT_BYTES * self.parameters

    @property
    def training_bytes(self) -> int:
        return (TRAINING_BYTES_PER_PARAMETER * self.parameters
                + FLOAT_BYTES * self.activations_per_sample * self.batch_size)


def _levels(m: ModelConfig) -> list[tuple[int, int]]:
    """(filters, kernel side) of each level, as :func:`flexunet.architectures.unet.build_unet` makes them."""
    kernel = m.base_kernels[0]
    return [(m.base_filters * 2 ** i, kernel if i == 0 else max(kernel - 2 * i, 3))
            for i in range(m.num_layers)]


def parameter_count(m: ModelConfig) -> int:
    """The number of parameters of the UNet ``m`` describes (weights, biases, batch-norm statistics)."""
    bn = 4 if m.normalization else 0
    levels = _levels(m)

    def block(c_in: int, f: int, k: int) -> int:  # conv, [BN], dropout, conv, [BN]
        return (k * k * c_in * f + f + bn * f) + (k * k * f * f + f + bn * f)

    total = 0
    for i, (f, k) in enumerate(levels):
        total += block(m.image_channels if i == 0 else levels[i - 1][0], f, k)
        if i < len(levels) - 1:  # the decoder level mirroring this one
            total += 2 * 2 * (2 * f) * f + f  # 2x2 transpose conv from the level below
            total += block(2 * f, f, k)
    return total + levels[0][0] * m.num_classes + m.num_classes  # 1x1 head


def activations_per_sample(m: ModelConfig) -> int:
    """Elements of every layer's output for one input of the configured size (input included)."""
    per_block = 3 + (2 if m.normalization else 0)  # conv, [BN], dropout, conv, [BN]
    pixels = m.image_height * m.image_width
    total = pixels * m.image_channels * (2 if m.input_normalize else 1)  # input [and rescaled]
    for i, (f, _) in enumerate(_levels(m)):
        area = pixels // 4 ** i
        total += per_block * f * area  # encoder block
        if i < m.num_layers - 1:
            total += f * area // 4  # max-pool
            total += (1 + 2 + per_block) * f * area  # decoder: transpose conv, concatenation, block
    return total + pixels * m.num_classes  # head


def available_memory() -> tuple[int, int]:
    """(available, total) bytes, as :mod:`flexunet.core.machine` reads them (container and
    address-space limits included)."""
    available = machine.available_memory()
    return available, machine.total_memory() or available


def is_analytic(m: ModelConfig) -> bool:
    """Whether the figures come from the config alone: the plain UNet's. Other architectures are
    counted on the built network (:func:`estimate_built`); before it is built their floor is 0."""
    return m.model in UNET_MODEL_NAMES


def estimate(cfg: Config) -> Estimate:
    """The memory ``cfg``'s model needs and what this machine has (see the module's notes)."""
    available, total = available_memory()
    if not is_analytic(cfg.model):
        return Estimate(0, 0, cfg.train.batch_size, available, total)
    return Estimate(parameter_count(cfg.model), activations_per_sample(cfg.model),
                    cfg.train.batch_size, available, total)


def estimate_built(cfg: Config, model) -> Estimate:
    """The same figures counted on a built ``keras.Model``: its parameters, and the outputs of its
    layers for one input (any architecture)."""
    available, total = available_memory()
    outputs = 0
    for layer in model.layers:
        for tensor in (layer.output if isinstance(layer.output, (list, tuple)) else [layer.output]):
            size = 1
            for dim in tuple(tensor.shape)[1:]:
                size *= int(dim or 1)
            outputs += size
    return Estimate(int(model.count_params()), outputs, cfg.train.batch_size, available, total)


def gib(n: int) -> str:
    v = n / 2 ** 30
    return f"{v:.1f} GiB" if v < 1000 else f"{v:,.0f} GiB"


def _model_keys(m: ModelConfig) -> str:
    return (f"[model] base_filters = {m.base_filters}, num_layers = {m.num_layers}, "
            f"base_kernels = {m.base_kernels}")


def check_build_memory(cfg: Config) -> Estimate:
    """Refuse (one line, exit 2) a model whose weights alone exceed the memory available."""
    est = estimate(cfg)
    if est.weights_bytes > est.available:
        raise ConfigError(
            f"{cfg.path}: {_model_keys(cfg.model)}: the model's {est.parameters:.3g} parameters need "
            f"{gib(est.weights_bytes)} just to be built (float32), more than the "
            f"{gib(est.available)} this machine has available")
    return est


def check_training_memory(cfg: Config) -> Estimate:
    """Refuse (one line, exit 2) a model that cannot be trained in the memory available."""
    est = check_build_memory(cfg)
    if est.training_bytes > est.available:
        m = cfg.model
        raise ConfigError(
            f"{cfg.path}: {_model_keys(m)}, image_width = {m.image_width}, image_height = "
            f"{m.image_height} and [train] batch_size = {est.batch_size}: training needs at least "
            f"{gib(est.training_bytes)} (float32 weights, gradients and Adam state of "
            f"{est.parameters:,} parameters, layer outputs of one batch), more than the "
            f"{gib(est.available)} this machine has available")
    return est


def describe(est: Estimate, cfg: Config) -> str:
    """One line for ``flexunet summary``: the training estimate against the memory available."""
    m = cfg.model
    line = (f"memory: at least {gib(est.training_bytes)} to train a batch of {est.batch_size} at "
            f"{m.image_width}x{m.image_height} (weights {gib(est.weights_bytes)}); "
            f"{gib(est.available)} available of {gib(est.total)}")
    if est.training_bytes > est.available:
        line += "; too large to train here"
    return line
