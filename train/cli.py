"""Training-side subcommands: synth, summary, train, evaluate.

Importing this module does not import TensorFlow; each command imports it when it runs.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from flexunet.core.console import handle_errors, import_tensorflow_quietly
from flexunet.core.config import load_config
from flexunet.core.errors import EXIT_INTERRUPTED

CONFIG_ARG = click.argument("config", type=click.Path(path_type=Path))
DATA_ROOT_OPT = click.option(
    "--data-root", type=click.Path(path_type=Path), default=None,
    help="Folder holding the datasets: relative dataset paths in the config are re-rooted here "
         "(leading ./, ../ and a 'dataset/' folder are dropped).")


def _progress_printer(label: str):
    state = {"last": -1}

    def progress(done: int, total: int) -> None:
        pct = int(100 * done / max(total, 1))
        if pct != state["last"] and (pct % 10 == 0 or done == total):
            state["last"] = pct
            click.echo(f"\r{label}: {done}/{total} ({pct}%)", nl=done == total, err=True)

    return progress


@click.command("synth")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(["tiles", "slides", "multiclass"]), default="tiles",
              show_default=True, help="tiles: small cell images; slides: 2560x1920 slides; "
                                      "multiclass: cells of 3 types with colour masks.")
@click.option("--train", "n_train", type=click.IntRange(1), default=None, help="Training images.")
@click.option("--valid", "n_valid", type=click.IntRange(1), default=None, help="Validation images.")
@click.option("--test", "n_test", type=click.IntRange(1), default=None, help="Test images.")
@click.option("--size", type=click.IntRange(16), default=None,
              help="Side of the square train/valid/test images [default: 128; slides 2560x1920].")
@click.option("--seed", type=int, default=0, show_default=True)
@handle_errors
def synth_cmd(out, kind, n_train, n_valid, n_test, size, seed):
    """Make synthetic stained-cell images with exact masks under OUT/{train,valid,test,mini_test}.

    OUT must be new or empty, or made by synth (it holds flexunet-synth.json, the list of the files
    synth wrote there); only those files are replaced or removed, nothing else is touched.
    """
    from flexunet.train.synth import RECORD_NAME, make_dataset

    counts = {k: v for k, v in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test)) if v}
    summary = make_dataset(out, kind=kind, size=size, seed=seed, progress=_progress_printer("synth"),
                           **counts)
    click.echo(f"wrote {kind} dataset to {out} (seed {summary['seed']}): " + ", ".join(
        f"{split} {n}" for split, n in summary["counts"].items()))
    files = summary["files"]
    click.echo(f"files: {files['new']} new, {files['replaced']} replaced, {files['identical']} already "
               f"identical, {files['removed']} removed (left by its earlier run), {files['left']} not "
               f"its own left untouched; record {Path(out) / RECORD_NAME}")


@click.command("summary")
@CONFIG_ARG
@handle_errors
def summary_cmd(config):
    """Print the network a CONFIG describes (layer table), the memory training it needs, and its
    parameter count. An architecture flexunet does not build is refused in one line saying why; a
    UNet whose weights exceed this machine's memory is refused before it is built."""
    from flexunet.architectures import check_supported
    from flexunet.train.memory import check_build_memory, describe, estimate_built, is_analytic

    cfg = load_config(config)
    check_supported(cfg)  # an architecture flexunet does not build: one line, before TensorFlow
    estimate = check_build_memory(cfg)  # before building: a model too large is refused in one line
    import_tensorflow_quietly()
    from flexunet.train.trainer import build_model

    model = build_model(cfg)
    if not is_analytic(cfg.model):  # counted on the built network
        estimate = estimate_built(cfg, model)
    model.summary(print_fn=lambda line, **_: click.echo(line), line_length=110)
    click.echo(describe(estimate, cfg))
    click.echo(f"parameters: {model.count_params()}")


@click.command("train")
@CONFIG_ARG
@DATA_ROOT_OPT
@click.option("--epochs", type=click.IntRange(1), default=None, help="Override [train] epochs.")
@handle_errors
def train_cmd(config, data_root, epochs):
    """Train the UNet described by CONFIG (a seed-format train_eval_infer.config).

    Writes <model_dir>/best_model.keras, <eval_dir>/train_metrics.csv, train_losses.csv and their
    PNG plots. Ctrl-C stops cleanly and keeps the best model. A model that cannot be trained in this
    machine's memory (see `flexunet summary`) is refused before anything is written.
    """
    from flexunet.train.memory import check_training_memory

    cfg = load_config(config, data_root=data_root)
    check_training_memory(cfg)  # before TensorFlow is imported: refused in a second, not a minute
    import_tensorflow_quietly()
    from flexunet.train.trainer import train

    result = train(cfg, epochs=epochs)
    click.echo(f"best model: {result.model_path} (epoch {result.best_epoch}, val_loss "
               f"{result.best_val_loss:.4f}); {result.epochs_run} epochs in {result.seconds:.0f}s")
    click.echo(f"curves: {cfg.train.eval_dir}/train_metrics.png, train_losses.png")
    if result.interrupted:
        sys.exit(EXIT_INTERRUPTED)


@click.command("evaluate")
@CONFIG_ARG
@DATA_ROOT_OPT
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="Model to evaluate: .keras, or a seed .h5 (rebuilt from CONFIG, its weights "
                   "loaded by layer) (default <model_dir>/best_model.keras).")
@handle_errors
def evaluate_cmd(config, data_root, model_path):
    """Evaluate the trained model on CONFIG's [test] split; writes evaluation.csv beside CONFIG."""
    cfg = load_config(config, data_root=data_root)
    import_tensorflow_quietly()
    from flexunet.train.evaluate import evaluate

    ev = evaluate(cfg, model_path)
    width = max(len(k) for k in ev.metrics)
    click.echo(f"test split: {ev.images} images, {ev.samples} samples")
    for k, v in ev.metrics.items():
        click.echo(f"  {k:<{width}}  {v:.4f}")
    if ev.per_class is not None:
        from flexunet.core.config import class_names

        for name, v in zip(class_names(cfg), ev.per_class):
            click.echo(f"  dice {name:<{width - 5}}  {v:.4f}")
    click.echo(f"wrote {ev.csv_path}")
