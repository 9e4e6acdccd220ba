"""The ``flexunet`` command.

Subcommands are looked up lazily (click's LazyGroup pattern): ``flexunet --help`` and the runtime
commands never import TensorFlow; ``train``/``evaluate``/``export`` import it only when they run.
"""
from __future__ import annotations

import importlib
import importlib.util

import click

from flexunet.core.console import quiet_tensorflow, setup_logging
from flexunet.core.errors import EXIT_CODES_HELP

# name -> "module:attribute" of the click command
COMMANDS = {
    "synth": "flexunet.train.cli:synth_cmd",
    "summary": "flexunet.train.cli:summary_cmd",
    "train": "flexunet.train.cli:train_cmd",
    "evaluate": "flexunet.train.cli:evaluate_cmd",
    "export": "flexunet.export.cli:export_cmd",
    "project": "flexunet.projects.cli:project_cmd",
    "infer": "flexunet.runtime.infer_cli:infer_cmd",
    "parity": "flexunet.runtime.parity_cli:parity_cmd",
    "bench": "flexunet.runtime.bench_cli:bench_cmd",
}


class LazyGroup(click.Group):
    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy:
            module, attr = self.lazy[name].split(":")
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:
                found = False
            if not found:
                return None  # a part not installed in this distribution
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=EXIT_CODES_HELP)
@click.version_option(package_name="flexunet", message="flexunet %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="More messages.")
def cli(verbose):
    """flexunet: UNet segmentation for microscopy and pathology, from training to fast tiled inference."""
    setup_logging(verbose)
    quiet_tensorflow()


def main(argv=None):
    setup_logging()
    quiet_tensorflow()
    cli.main(args=argv, prog_name="flexunet")


if __name__ == "__main__":
    main()
