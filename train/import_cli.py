"""``flexunet import``: a seed API ``best_model.h5`` converted once into a flexunet ``.keras`` model.

The architecture is rebuilt from the training config by flexunet's builder and the file's weights
are loaded layer by layer as data (:mod:`flexunet.architectures.seed_h5`); nothing in the file is
deserialised or run. Nothing is written unless every weight fits: then the ``.keras`` model, a copy of
the config and the training record (``training.json``, as training writes them) appear beside each
other, each written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import click

from flexunet.core.atomic import write_file
from flexunet.core.config import CONFIG_FILENAME, load_config
from flexunet.core.console import handle_errors, import_tensorflow_quietly
from flexunet.core.errors import EXIT_CODES_HELP, FlexunetError, ModelError, require_model_file


def _check_model(model: Path) -> None:
    require_model_file(model)
    if model.suffix.lower() != ".h5":
        raise ModelError(f"{model}: flexunet import reads seed .h5 models (best_model.h5); got "
                         f"{model.suffix or 'no suffix'}")


def _check_output(output: Path, cfg_path: Path) -> Path | None:
    """Refuse an output that cannot be written before anything is built; returns where the config
    copy goes (None when the config already sits there)."""
    if output.suffix.lower() != ".keras":
        raise FlexunetError(f"{output}: -o must name a .keras file (e.g. best_model.keras)")
    if output.exists() and not output.is_file():
        raise FlexunetError(f"{output}: exists and is not a file")
    copy = output.parent / CONFIG_FILENAME
    if copy.exists():
        if copy.resolve() == cfg_path.resolve() or copy.read_bytes() == cfg_path.read_bytes():
            return None
        raise FlexunetError(f"{copy}: a different {CONFIG_FILENAME} is already beside {output.name}; "
                            "choose another -o folder (the model's config is kept beside it)")
    return copy


@click.command("import", epilog=EXIT_CODES_HELP)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"Training config of the model [default: {CONFIG_FILENAME} beside it or in its "
                   "parent folder].")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The .keras model to write (the config copy and training.json go beside it).")
@handle_errors
def import_cmd(model, config, output):
    """Convert a seed API model MODEL (best_model.h5: whole model or weights only, tf.keras 2 or
    Keras 3) into a flexunet .keras model.

    The network is rebuilt from the config by flexunet and the file's weights loaded by layer; no
    code in the file runs. A file that does not fit the config (another architecture or setting,
    missing or extra weights) is refused in one line naming the first layer that does not fit
    (exit 2), and nothing is written.
    """
    from flexunet.architectures import check_supported
    from flexunet.architectures.seed_h5 import find_seed_config
    from flexunet.architectures.seed_h5_format import read_seed_weights
    from flexunet.train.memory import check_build_memory

    _check_model(model)
    cfg_path = find_seed_config(model, config)
    cfg = load_config(cfg_path)
    check_supported(cfg)  # one flexunet does not build: one line, before anything is read at length
    copy = _check_output(output, cfg_path)
    seed = read_seed_weights(model)  # not a seed model: refused before TensorFlow is imported
    check_build_memory(cfg)
    import_tensorflow_quietly()
    from flexunet.architectures.seed_h5 import rebuild_seed_model
    from flexunet.train.trainer import write_training_record

    keras_model, loaded = rebuild_seed_model(cfg, seed)
    click.echo(loaded.summary())
    click.echo(f"architecture: {cfg.model.model} from {cfg_path}; parameters: {keras_model.count_params()}")
    write_file(output, keras_model.save)
    if copy is not None:
        write_file(copy, lambda tmp: shutil.copyfile(cfg_path, tmp))
    record = write_training_record(cfg, output.parent, imported_from=str(model.resolve()),
                                   seed_format=loaded.description)
    click.echo(f"wrote {output} ({CONFIG_FILENAME} and {record.name} beside it)")
