"""Keras backend: a trained ``.keras`` model, the reference the exported models are checked against.

TensorFlow is imported when a model is loaded, never when this module is imported.  A ``.keras``
file does not describe its pre-processing, so the :class:`ModelInfo` comes from the training
config: the ``train_eval_infer.config`` copy training writes beside the model, or ``config=``.
A seed API ``best_model.h5`` runs here too: rebuilt from its config (beside it, in its parent folder,
or ``config=``) by flexunet's builder, its weights loaded as data (:func:`load_keras_model`).
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from flexunet.core.config import CONFIG_FILENAME, load_config
from flexunet.core.console import import_tensorflow_quietly
from flexunet.core.errors import MissingDependencyError, ModelError, first_line, require_model_file
from flexunet.core.modelinfo import ModelInfo
from flexunet.runtime.backends.base import Backend, check_channels

#: A seed API model file (HDF5), rebuilt from its config and loaded by layer.
SEED_SUFFIX = ".h5"


class KerasBackend(Backend):
    """A ``.keras`` model run with ``predict_on_batch`` on TensorFlow's default device.

    Args:
        path: the ``.keras`` file.
        config: the training config (default: ``train_eval_infer.config`` beside the model).

    Raises:
        ModelError: no config, or a file Keras cannot load.
        MissingDependencyError: TensorFlow is not installed.
    """

    def __init__(self, path: str | os.PathLike, config: str | os.PathLike | None = None):
        self.path = Path(path)
        config_path = Path(config) if config is not None else self.path.parent / CONFIG_FILENAME
        if is_seed_h5(self.path):
            from flexunet.architectures.seed_h5 import find_seed_config

            config_path = find_seed_config(self.path, config)  # beside it or in its parent folder
        elif config is None and not config_path.is_file():  # a --config given is read (or refused) as it is
            raise ModelError(f"{self.path}: no {CONFIG_FILENAME} beside the model; pass --config "
                             "with its training config, or export it to ONNX (which carries its own metadata)")
        from flexunet.architectures import required_multiple

        cfg = load_config(config_path)
        self.model = load_keras_model(self.path, cfg=cfg)  # a file that is not a model: before TensorFlow
        info = ModelInfo.from_config(cfg, multiple=required_multiple(cfg))
        import keras

        _, height, width, channels = self.model.input_shape
        check_channels(self.path, info, channels, self.model.output_shape[-1], said_by=config_path)
        if height is not None and width is not None and info.height is not None and \
                (height, width) != (info.height, info.width):
            raise ModelError(f"{self.path}: the model takes {height}x{width} inputs but {config_path} says "
                             f"{info.height}x{info.width}")
        if height is not None and width is not None:
            self.fixed_size = (int(height), int(width))
        info.height, info.width = self.fixed_size or (None, None)
        self.info = info
        self.name = f"keras {keras.__version__} (TensorFlow {_tensorflow_version()})"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a batch (``predict_on_batch``, inference mode)."""
        return np.asarray(self.model.predict_on_batch(np.asarray(batch, dtype=np.float32)), dtype=np.float32)

    def close(self) -> None:
        """Drop the model."""
        self.model = None


def is_seed_h5(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a seed API ``.h5`` model (loaded by rebuilding its architecture)."""
    return Path(path).suffix.lower() == SEED_SUFFIX


def load_keras_model(path: str | os.PathLike, cfg=None):
    """The one Keras model loader of flexunet: a ``.keras`` archive loaded for inference
    (``compile=False``: no loss or metric is deserialised, so nothing of the training package is
    needed). Training code compiles the model itself when it evaluates.

    A seed ``.h5`` is rebuilt from its config ``cfg`` (default: the ``train_eval_infer.config``
    beside it or in its parent folder) with flexunet's builder and its weights loaded as data
    (:mod:`flexunet.architectures.seed_h5`): nothing in the file is deserialised.

    Raises:
        ModelError: a missing file, a file that is not a Keras archive, or one Keras cannot load; a
            ``.h5`` without a config, or one that does not fit the architecture its config describes.
        MissingDependencyError: TensorFlow is not installed.
    """
    path = Path(path)
    require_model_file(path)
    if is_seed_h5(path):
        return _load_seed_h5(path, cfg)
    problem = _archive_problem(path)
    if problem:
        raise ModelError(f"{path}: cannot load model: not a Keras archive ({problem})")
    _import_keras()
    import keras

    from flexunet.architectures import bilinear  # noqa: F401 -- registers flexunet>BilinearUpsampling
    from flexunet.architectures import prepare_loaded

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for corrupt or foreign archives
        raise ModelError(f"{path}: cannot load model ({first_line(exc, 200)})") from None
    return prepare_loaded(model)


def _import_keras() -> None:
    try:
        import_tensorflow_quietly()
        import keras  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"the keras backend needs TensorFlow ({exc}); install it with "
                                     "pip install 'flexunet[train]', or export the model to ONNX") from None


def _load_seed_h5(path: Path, cfg):
    """A seed ``.h5`` rebuilt from its config and loaded by layer (never deserialised)."""
    from flexunet.architectures.seed_h5 import find_seed_config, rebuild_seed_model
    from flexunet.architectures.seed_h5_format import read_seed_weights

    if cfg is None:
        cfg = load_config(find_seed_config(path))
    seed = read_seed_weights(path)  # a file that is not a seed model: refused before TensorFlow
    _import_keras()
    model, _ = rebuild_seed_model(cfg, seed)
    return model


def _archive_problem(path: Path) -> str | None:
    """Why ``path`` is not a Keras archive (a zip holding ``config.json``), or None; checked before
    TensorFlow is imported."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return "corrupt or wrong format"
    if not names:
        return "an empty zip file"
    if "config.json" not in names:
        return "no config.json in it"
    return None


def _tensorflow_version() -> str:
    import tensorflow as tf

    return tf.__version__


def load(path: Path, config: str | os.PathLike | None = None) -> KerasBackend:
    """A :class:`KerasBackend` for ``path`` (see its arguments)."""
    return KerasBackend(path, config=config)
