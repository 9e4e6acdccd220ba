"""Run a model on verification tiles and judge an artifact with the one comparator
(:mod:`flexunet.core.compare`): exported files run the way production runs them, through the
runtime's backends."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from flexunet.core.compare import Comparison, Tolerance, judge
from flexunet.core.errors import VerificationError


def predict_batches(predict, tiles: np.ndarray, batch_size: int = 4) -> np.ndarray:
    """``predict`` over ``tiles`` in batches, concatenated as float32."""
    outs = [np.asarray(predict(tiles[i:i + batch_size])) for i in range(0, len(tiles), batch_size)]
    return np.concatenate(outs).astype(np.float32)


def keras_predict(model, tiles: np.ndarray, batch_size: int = 4) -> np.ndarray:
    """A loaded Keras model's probabilities on ``tiles``."""
    return predict_batches(model.predict_on_batch, tiles, batch_size)


def onnx_predict(onnx_path: Path, tiles: np.ndarray, batch_size: int = 4) -> np.ndarray:
    """An exported ONNX file's probabilities through the runtime's ONNX Runtime backend (CPU),
    which also reads and checks its metadata."""
    from flexunet.runtime.backends.onnx import OnnxBackend

    with OnnxBackend(onnx_path, provider="cpu") as backend:
        return predict_batches(backend.predict, tiles, batch_size)


def engine_predict(engine_path: Path, tiles: np.ndarray) -> np.ndarray:
    """A TensorRT engine's probabilities through the runtime's TensorRT backend (batches of the
    engine's largest batch size)."""
    from flexunet.runtime.backends.tensorrt import TensorRTBackend

    with TensorRTBackend(engine_path) as backend:
        return predict_batches(backend.predict, tiles, backend.max_batch)


def require_agreement(result: Comparison, tolerance: Tolerance, what: str, reference: str, hint: str = "") -> None:
    """Refuse artifact ``what`` (VerificationError, exit 1) when ``result``, its comparison with
    ``reference``, fails ``tolerance``; ``hint`` says what may help.  The verification tiles carry
    no ground truth, so the verdict (:func:`~flexunet.core.compare.judge`) is by agreement."""
    failures = judge("", result, tolerance).failures
    if failures:
        raise VerificationError(f"{what} does not reproduce {reference} on {result.items} tiles: "
                                f"{'; '.join(failures)}{hint}; not written")
