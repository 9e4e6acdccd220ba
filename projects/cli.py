"""``flexunet project`` command: run one project (TensorFlow is imported only then), or with
``--summary DIR`` rewrite the cross-project table of DIR/README.md."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from flexunet.core.console import handle_errors, import_tensorflow_quietly
from flexunet.core.errors import EXIT_CODES_HELP
from flexunet.projects.report import SUMMARY_BEGIN, SUMMARY_END, SUMMARY_RESULTS


@click.command("project", epilog=EXIT_CODES_HELP)
@click.argument("project", required=False, type=click.Path(path_type=Path))
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Folder holding the datasets (e.g. ../shared/data): the config's dataset paths are re-rooted here.")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Config to run, inside PROJECT [default: PROJECT/reduced/train_eval_infer.config, "
                   "the CPU-sized variant].")
@click.option("--skip-train", is_flag=True, help="Reuse the trained model in the config's model_dir.")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Override [train] epochs.")
@click.option("--summary", "summary_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help=f"Run nothing: rebuild the table of all projects below SUMMARY from their {SUMMARY_RESULTS}, "
                   f"print it and write it between the {SUMMARY_BEGIN} and {SUMMARY_END} markers of "
                   "SUMMARY/README.md (e.g. --summary projects).")
@handle_errors
def project_cmd(project, data_root, config, skip_train, epochs, summary_dir):
    """Run a dataset project end to end: train, evaluate on the held-out [test] split, export ONNX
    FP32 + INT8, tiled inference on the held-out images, parity of both against Keras, throughput.

    PROJECT is a project folder (projects/IHC) or a config file in one. Everything is written inside
    PROJECT: reports beside the config (results/, parity/, out/, export/) and the figures in
    PROJECT/README.md. Exit code 1 when an exported model fails its parity check.

    The table of all projects is not touched by a run: refresh it with --summary.
    """
    if summary_dir is not None:
        if project is not None or config is not None or skip_train or epochs is not None or data_root is not None:
            raise click.UsageError("--summary runs no project: give it alone, without PROJECT or run options")
        return _summary(summary_dir)
    if project is None:
        raise click.UsageError("give a PROJECT folder to run, or --summary DIR")
    from flexunet.projects.results import parity_failures
    from flexunet.projects.runner import resolve_project, run_project

    found = resolve_project(project, config)
    import_tensorflow_quietly()
    results, code = run_project(found, data_root, skip_train=skip_train, epochs=epochs,
                                say=lambda line: click.echo(line))
    for line in parity_failures(results):
        click.echo(f"error: {line}", err=True)
    sys.exit(code)


def _summary(folder: Path) -> None:
    from flexunet.projects.report import update_summary

    table, written = update_summary(folder)
    click.echo(table)
    readme = folder / "README.md"
    if written:
        click.echo(f"wrote the table into {readme}", err=True)
    else:
        click.echo(f"note: {readme} has no {SUMMARY_BEGIN} ... {SUMMARY_END} markers; the table was only printed",
                   err=True)
