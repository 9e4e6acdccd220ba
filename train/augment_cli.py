"""``flexunet augment``: a PNG grid of augmented training samples (see :mod:`flexunet.train.augment`).

Importing this module does not import TensorFlow; the command imports it when it runs.
"""
from __future__ import annotations

from pathlib import Path

import click

from flexunet.core.config import load_config
from flexunet.core.console import handle_errors, import_tensorflow_quietly
from flexunet.train.cli import CONFIG_ARG, DATA_ROOT_OPT


@click.command("augment")
@CONFIG_ARG
@DATA_ROOT_OPT
@click.option("-n", "count", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Augmented samples in the grid.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="PNG file to write [default: <eval_dir>/augmentation_grid.png].")
@handle_errors
def augment_cmd(config, data_root, count, output):
    """Write a PNG grid of augmented training image/mask pairs as CONFIG's [augmentor] settings
    make them (the grid training writes to <eval_dir> when it starts), to see what they do."""
    from flexunet.train.augment import AugmentSettings, augmentation_on

    cfg = load_config(config, data_root=data_root)
    settings = AugmentSettings.from_config(cfg)
    import_tensorflow_quietly()
    from flexunet.train.augment_grid import write_grid

    path = write_grid(cfg, output, count)
    click.echo(f"wrote {path}: {count} samples; transforms: {settings.describe()}")
    if not augmentation_on(cfg):
        click.echo("note: training does not augment with this config ([model] generator and "
                   "[generator] augmentation must both be True)")
