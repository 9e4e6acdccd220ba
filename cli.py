"""The ``flexunet`` command.

Subcommands are looked up lazily (click's LazyGroup pattern): ``flexunet --help`` and the runtime
commands never import TensorFlow; ``train``/``evaluate``/``export`` import it only when they run.
Ctrl-C exits 130 with one line from the moment this module starts loading in the ``flexunet``
process (:func:`~flexunet.core.console.install_interrupt_handler`; importing it elsewhere changes
no signal handling).
"""
from __future__ import annotations

import os
import sys

from flexunet.core import console


def _is_the_command() -> bool:
    """Whether this process is the ``flexunet`` command (its console script or ``python -m
    flexunet``), not a program that imports this module."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name == "flexunet.__main__":
        return True
    script = os.path.basename(getattr(main, "__file__", None) or "")
    return os.path.splitext(script)[0] in ("flexunet", "flexunet-script")


if _is_the_command():  # before the imports below: they take most of the start-up time
    console.install_interrupt_handler()

import errno
import importlib
import importlib.util

import click

from flexunet.core.console import quiet_tensorflow, setup_logging
from flexunet.core.errors import EXIT_CODES_HELP, EXIT_INTERRUPTED

# name -> "module:attribute" of the click command
COMMANDS = {
    "synth": "flexunet.train.cli:synth_cmd",
    "summary": "flexunet.train.cli:summary_cmd",
    "train": "flexunet.train.cli:train_cmd",
    "evaluate": "flexunet.train.cli:evaluate_cmd",
    "import": "flexunet.train.import_cli:import_cmd",
    "export": "flexunet.export.cli:export_cmd",
    "project": "flexunet.projects.cli:project_cmd",
    "infer": "flexunet.runtime.infer_cli:infer_cmd",
    "parity": "flexunet.runtime.parity_cli:parity_cmd",
    "bench": "flexunet.runtime.bench_cli:bench_cmd",
    "augment": "flexunet.train.augment_cli:augment_cmd",
    "tune": "flexunet.runtime.tune_cli:tune_cmd",
}


class OneLineUsageError(click.UsageError):
    """A usage error shown as one ``error:`` line (exit 2), like every other refusal of flexunet,
    with where to find the command's help."""

    def show(self, file=None) -> None:
        where = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"error: {self.format_message().removesuffix('.')}{where}", file=file, err=True)


def _one_line(exc: click.UsageError) -> click.UsageError:
    """``exc`` as a :class:`OneLineUsageError` (help requested by running a group bare stays help)."""
    if isinstance(exc, (OneLineUsageError, click.exceptions.NoArgsIsHelpError)):
        return exc
    return OneLineUsageError(exc.format_message(), exc.ctx)


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

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx):
        """Run the subcommand; its usage errors (parsing, bad values) are one line."""
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc) from None


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=EXIT_CODES_HELP)
@click.version_option(package_name="flexunet", message="flexunet %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="More messages.")
def cli(verbose):
    """flexunet: UNet segmentation for microscopy and pathology, from training to fast tiled inference."""
    setup_logging(verbose)
    quiet_tensorflow()


def main(argv=None):
    """The ``flexunet`` process: run the command line and exit with its code (see EXIT_CODES_HELP).

    It installs the process's Ctrl-C handler (:func:`~flexunet.core.console.install_interrupt_handler`),
    and click runs without its standalone mode so that Ctrl-C never becomes click's ``Aborted!``
    (exit 1); usage errors are one ``error:`` line (exit 2), as :class:`OneLineUsageError` shows them."""
    console.install_interrupt_handler()
    setup_logging()
    quiet_tensorflow()
    try:
        code = cli.main(args=argv, prog_name="flexunet", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except (click.Abort, KeyboardInterrupt):  # only where the handler could not be installed
        click.echo(console.INTERRUPTED, err=True)
        code = EXIT_INTERRUPTED
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the reader has gone
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
