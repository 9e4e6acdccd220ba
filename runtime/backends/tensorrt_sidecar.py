"""An engine's JSON sidecar ``<engine>.json``: where it is, the model and platform it records, and
whether this machine can run the engine (pure checks; TensorRT is needed only to describe this
machine when no platform is given).

An engine only runs under the TensorRT version and on the GPU model it was built for; the builder
(:func:`flexunet.export.tensorrt.build_engine`) records both, and :func:`load_engine_checked`
refuses an engine whose sidecar does not match this machine, naming both, instead of letting
TensorRT fail obscurely.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from flexunet.core.errors import MissingDependencyError, ModelError
from flexunet.core.modelinfo import ModelInfo
from flexunet.runtime.backends.tensorrt_platform import check_available, current_platform

SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = "flexunet.tensorrt-engine"
# sidecar "platform" keys an engine must match, with the words used in messages
PLATFORM_KEYS = (("tensorrt_version", "TensorRT"), ("gpu_name", "GPU"),
                 ("compute_capability", "compute capability"))


def sidecar_path(engine_path: str | Path) -> Path:
    """The JSON sidecar of an engine: ``model.fp16.engine`` -> ``model.fp16.engine.json``."""
    return Path(str(engine_path) + SIDECAR_SUFFIX)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _describe(platform: dict) -> str:
    return (f"TensorRT {platform.get('tensorrt_version', '?')} on {platform.get('gpu_name', '?')} "
            f"(compute capability {platform.get('compute_capability', '?')})")


def compatibility_problem(sidecar: dict, current: dict) -> str | None:
    """Why an engine described by ``sidecar`` cannot run here, or None if it can.

    Args:
        sidecar: the engine's sidecar (its ``"platform"`` entry is used) or a platform dict itself.
        current: this machine's platform, as returned by :func:`current_platform`.

    An engine is tied to the exact TensorRT version and to the GPU model / compute capability it
    was built on (TensorRT does not guarantee engines are portable across either).  CUDA driver and
    runtime versions are recorded but not compared.
    """
    built = sidecar.get("platform", sidecar) if isinstance(sidecar, dict) else {}
    if not isinstance(built, dict):
        built = {}
    differs = [label for key, label in PLATFORM_KEYS
               if built.get(key) is None or str(built.get(key)) != str(current.get(key))]
    if not differs:
        return None
    return (f"engine was built with {_describe(built)} but this machine has {_describe(current)} "
            f"({', '.join(differs)} {'differs' if len(differs) == 1 else 'differ'}); rebuild the engine on this machine")


def model_info_from_sidecar(sidecar: dict, where: str = "engine sidecar") -> ModelInfo:
    """The :class:`ModelInfo` recorded in an engine sidecar."""
    if "model_info" not in sidecar:
        raise ModelError(f"{where}: no model_info entry (rebuild the engine with flexunet)")
    return ModelInfo.from_json(json.dumps(sidecar["model_info"]), where)


def read_sidecar(engine_path: str | Path) -> dict:
    """Read and check the shape of an engine's sidecar (ModelError, one line, if missing/corrupt)."""
    engine_path = Path(engine_path)
    side = sidecar_path(engine_path)
    if not side.is_file():
        raise ModelError(f"{engine_path}: no sidecar {side.name} beside the engine (it records the "
                         "TensorRT version and GPU the engine was built for); rebuild the engine with flexunet")
    try:
        sidecar = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{side}: unreadable engine sidecar ({exc})") from None
    if not isinstance(sidecar, dict) or not isinstance(sidecar.get("platform"), dict):
        raise ModelError(f"{side}: not a flexunet engine sidecar (no 'platform' entry)")
    return sidecar


def load_engine_checked(engine_path: str | Path, current: dict | None = None,
                        device: int = 0) -> tuple[bytes, dict]:
    """Read a serialised engine and its sidecar, refusing an engine built for another platform.

    Args:
        engine_path: the ``.engine`` file; its sidecar is ``<engine>.json``.
        current: this machine's platform (default: :func:`current_platform` of ``device``, which
            needs TensorRT and a GPU); pass a dict to check without them.
        device: CUDA device the engine is meant to run on.

    Returns:
        ``(engine bytes, sidecar dict)``.

    Raises:
        ModelError: missing engine or sidecar, a sidecar that does not describe this engine, or an
            engine built with another TensorRT version or on another GPU model.
        MissingDependencyError: ``current`` not given and TensorRT or a GPU is not available.
    """
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise ModelError(f"{engine_path}: no such engine file")
    sidecar = read_sidecar(engine_path)
    try:
        data = engine_path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{engine_path}: cannot read ({exc.strerror or exc})") from None
    recorded = sidecar.get("engine_sha256")
    if recorded and recorded != sha256_bytes(data):
        raise ModelError(f"{engine_path}: the engine does not match its sidecar {sidecar_path(engine_path).name} "
                         "(sha256 differs; one of them was replaced); rebuild the engine")
    if current is None:
        reason = check_available(device)
        if reason:
            raise MissingDependencyError(reason)
        current = current_platform(device)
    problem = compatibility_problem(sidecar, current)
    if problem:
        raise ModelError(f"{engine_path}: {problem}")
    return data, sidecar
