"""The seed's layer facts files (``tests/seed_models/<arch>.<keras>.layers.txt``), read once here for
every architecture test."""
from __future__ import annotations

import re
from pathlib import Path

SEED_MODELS = Path(__file__).resolve().parent / "seed_models"


def seed_layers(name: str) -> list[tuple[str, bool, list[tuple[int, ...]]]]:
    """(class, trainable, weight shapes) of each weight-owning layer the facts file ``name`` in
    ``tests/seed_models`` lists, in ``model.layers`` order (a scalar weight has shape ``()``)."""
    rows = []
    for line in (SEED_MODELS / name).read_text().splitlines():
        if re.match(r"^\d+\t", line):
            _, _, cls, trainable, shapes = line.split("\t")
            dims = [s.split("=")[1] for s in shapes.split("; ")]
            rows.append((cls, trainable == "True", [tuple(int(d) for d in s.split("x")) if s else () for s in dims]))
    return rows
