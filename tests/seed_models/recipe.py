"""Deterministic weights for the seed architectures whose real weights are too big to keep here.

DeepLabV3Plus (ResNet50), EfficientNetB7UNet and TensorflowEfficientUNet (EfficientNetB0) have fixed
widths: their ``.h5`` files are 47 MB to 227 MB.  Instead of a file, the reference keeps the seed
model's output for weights made by :func:`weight`, a pure function of

* the layer's position among the layers that own weights (``model.layers`` order, 0-based),
* the weight's index in that layer (the order the legacy HDF5 layouts store them in),
* the weight's short name (``kernel``, ``gamma``, ``moving_variance``, ...: it picks the kind of
  values) and its shape and dtype.

``make_seed_models.py`` assigns these weights to the model the seed's own code built and records its
output; the tests write the seed's HDF5 layouts from the same weights and the recorded layer names.
numpy only: importable without TensorFlow.
"""
from __future__ import annotations

import numpy as np

__all__ = ["RECIPE_SEED", "weight", "fan_in"]

RECIPE_SEED = 20240926
#: Kernels are uniform with variance GAIN / fan_in: between LeCun's 1 (DeepLab's output then spans
#: only 0.447..0.457) and He's 2 (its sigmoid then saturates), so that 100+ layers neither vanish nor
#: saturate: every reference output lies in 0.29..0.84.
GAIN = 1.5


def fan_in(name: str, shape: tuple[int, ...]) -> int:
    """Inputs per output unit of a kernel: H*W for a depthwise kernel, all but the last axis else."""
    if name == "depthwise_kernel":
        return int(np.prod(shape[:-2])) or 1
    return int(np.prod(shape[:-1])) or 1


def weight(layer_index: int, weight_index: int, name: str, shape, dtype: str = "float32") -> np.ndarray:
    """The array for weight ``weight_index`` (short name ``name``) of weight-owning layer
    ``layer_index``; the same arguments always give the same array."""
    shape = tuple(int(d) for d in shape)
    rng = np.random.default_rng([RECIPE_SEED, int(layer_index), int(weight_index)])
    if name == "count":                        # Normalization's sample count: unused at inference
        return np.full(shape, 1000, dtype=dtype)
    if name in ("moving_variance", "variance"):
        values = rng.uniform(0.5, 1.5, shape)
    elif name == "gamma":
        values = rng.uniform(0.6, 1.2, shape)
    elif name in ("beta", "bias", "moving_mean", "mean"):
        values = rng.uniform(-0.1, 0.1, shape)
    elif name in ("kernel", "depthwise_kernel", "pointwise_kernel"):
        limit = np.sqrt(3.0 * GAIN / fan_in(name, shape))
        values = rng.uniform(-limit, limit, shape)
    else:
        raise ValueError(f"recipe: no rule for a weight named {name!r} {shape}")
    return values.astype(dtype)
