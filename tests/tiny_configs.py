"""Config text the training tests share: the ``[train]``, ``[eval]`` and ``[test]`` splits of a
synthetic dataset that ``make_dataset`` wrote under ``./data`` beside the config, and the tiled
inference overlap."""
from __future__ import annotations


def splits(epochs: int = 1, batch_size: int = 8, overlap: int = 16) -> str:
    """The sections after ``[model]``: no early stopping, no learning-rate reducer."""
    return f"""
[train]
epochs        = {epochs}
batch_size    = {batch_size}
patience      = 0
learning_rate_reducer = False
image_datapath = "./data/train/images"
mask_datapath  = "./data/train/masks"

[eval]
image_datapath = "./data/valid/images"
mask_datapath  = "./data/valid/masks"

[test]
image_datapath = "./data/test/images"
mask_datapath  = "./data/test/masks"

[tiledinfer]
overlapping = {overlap}
"""
