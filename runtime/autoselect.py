"""``--backend auto`` for an ``.onnx`` model: the fastest path ``flexunet tune`` measured for it on
this machine among those that passed their verdict, read from the record beside the model
(:data:`RECORD`, written by :mod:`flexunet.runtime.tune`); never a path that failed.

A record counts only while it describes what would run: the model file's sha256, this machine's
CPU (model name and flags) and the inference libraries' versions must all be those recorded, and the
chosen file's sha256 too.  Otherwise (no record, an unreadable or stale one, nothing passed) ``auto``
runs the exact FP32 path, ONNX Runtime (:data:`UNTUNED`), and says why.  :func:`choose` returns the
choice and a one-line explanation; nothing is loaded here.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from flexunet.core.errors import first_line
from flexunet.core.machine import cpu_info, library_versions, sha256_file

#: The record beside the model (``MODEL_DIR/tune.json``).
RECORD = "tune.json"
#: Version of the record's layout; another version is ignored.
SCHEMA = 1
#: What ``auto`` runs for an ``.onnx`` model without a usable record: ONNX Runtime in FP32.
UNTUNED = "onnxruntime"
#: Libraries whose versions a record must match (those installed).
ENGINE_LIBRARIES = ("onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt")


@dataclass(frozen=True)
class Choice:
    """What ``auto`` runs: ``path`` with ``backend``; ``line`` says what and why; ``entry`` is the
    record's entry of the chosen path (None for the untuned fallback); ``found``: a record was
    there (used or ignored), so the line is worth printing."""

    path: Path
    backend: str
    line: str
    entry: dict | None = None
    found: bool = False


def resolve(model_path: str | os.PathLike, backend: str) -> Choice | None:
    """:func:`choose` for ``auto`` on an existing ``.onnx`` file; None for anything else (an explicit
    backend, another model type, a missing file: the loader reports it)."""
    path = Path(model_path)
    if backend != "auto" or path.suffix.lower() != ".onnx" or not path.is_file():
        return None
    return choose(path)


def untuned(path: str | os.PathLike, backend: str) -> str:
    """``backend``, with ``auto`` for an ``.onnx`` replaced by the exact path (for runs that must
    compare the file named, such as parity and tune themselves)."""
    return UNTUNED if backend == "auto" and Path(path).suffix.lower() == ".onnx" else backend


def machine_key() -> dict:
    """What a record's speeds depend on besides the model: the CPU and the engines' versions."""
    model, flags = cpu_info()
    versions = library_versions(ENGINE_LIBRARIES)
    versions.pop("python", None)
    return {"cpu": model, "cpu_flags_sha256": hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest(),
            "versions": versions}


def stale_reason(record: dict, model: Path, key: dict | None = None) -> str | None:
    """Why ``record`` does not describe ``model`` on this machine (None: it does)."""
    if record.get("schema") != SCHEMA:
        return f"record version {record.get('schema')!r}, expected {SCHEMA}"
    entry = next((e for e in record.get("paths", []) if e.get("file") == model.name), None)
    if entry is None:
        return f"{model.name} was not tuned"
    if sha256_file(model) != entry.get("sha256"):
        return f"{model.name} changed since it was tuned (sha256 differs)"
    key = key or machine_key()
    recorded = record.get("machine", {})
    if (recorded.get("cpu"), recorded.get("cpu_flags_sha256")) != (key["cpu"], key["cpu_flags_sha256"]):
        return f"tuned on another CPU ({recorded.get('cpu')})"
    if recorded.get("versions") != key["versions"]:
        changed = sorted(set(recorded.get("versions", {}).items()) ^ set(key["versions"].items()))
        return f"inference libraries changed since ({', '.join(sorted({name for name, _ in changed}))})"
    return None


def fastest_passed(entries: Iterable[dict]) -> list[dict]:
    """The entries that passed their verdict, fastest first (those without a speed last)."""
    passed = [e for e in entries if e.get("verdict") == "pass" and (e.get("tiles_per_s") or 0) > 0]
    return sorted(passed, key=lambda e: -e["tiles_per_s"])


def describe(entry: dict, record_name: str = RECORD) -> str:
    """The one line of a chosen entry: what runs, its speed, and the verdict that let it."""
    speed = f"{entry['tiles_per_s']:.1f} tiles/s"
    if entry.get("speedup"):
        speed += f", {entry['speedup']:.2f}x the FP32 ONNX Runtime path"
    kept = f", retention {100 * entry['retention']:.2f}%" if entry.get("retention") is not None else ""
    return (f"auto: {entry['backend']} on {entry['file']} ({entry.get('precision')}): the fastest path that passed "
            f"in {record_name} ({speed}; verdict by {entry.get('rule')}{kept})")


def choose(model_path: str | os.PathLike) -> Choice:
    """What ``--backend auto`` runs for the ``.onnx`` ``model_path`` (see the module docstring).

    With the record's reference model, every path the record passed may be chosen (another file of
    the folder, such as ``model.int8.onnx``, or another engine); with another file the record
    lists, only that file's paths.
    """
    path = Path(model_path)
    record_path = path.parent / RECORD

    def fallback(why: str) -> Choice:
        return Choice(path, UNTUNED, f"auto: exact FP32 ONNX Runtime on {path.name} ({why})",
                      found=record_path.is_file())

    if not record_path.is_file():
        return fallback(f"no {RECORD} beside it; `flexunet tune {path.parent}` measures the faster paths")
    try:
        record = json.loads(record_path.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("paths"), list):
            raise ValueError("not a tune record")
        problem = stale_reason(record, path)
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        return fallback(f"{record_path} ignored: unreadable ({first_line(exc, 120)})")
    if problem:
        return fallback(f"{record_path} ignored as stale: {problem}; run flexunet tune again")
    reference = path.name == record.get("reference", {}).get("file")
    entries = [e for e in record["paths"] if reference or e.get("file") == path.name]
    for entry in fastest_passed(entries):
        file = path.parent / entry["file"]
        if file == path or (file.is_file() and sha256_file(file) == entry.get("sha256")):
            return Choice(file, entry["backend"], describe(entry, str(record_path)), entry, True)
    return fallback(f"no path in {record_path} passed its verdict")
