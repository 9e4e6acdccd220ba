"""The training history files the seeds write, from one row of logged values per epoch.

``<eval_dir>/train_metrics.csv`` and ``train_losses.csv`` (``epoch`` then one column per metric or
loss, 6 significant digits) and their PNG plots ``train_metrics.png`` / ``train_losses.png``.
Every file is written atomically, so a reader never sees half a file while training runs.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from flexunet.core.atomic import atomic_path, write_text

#: Names under which Keras logs the learning rate (not a metric or loss: not in the files).
LEARNING_RATE_KEYS = ("learning_rate", "lr")


def write_history(rows: list[dict], eval_dir: Path) -> None:
    """The two CSV files and their plots for ``rows`` (``{"epoch": n, name: value, ...}``)."""
    if not rows:
        return
    names = [k for k in rows[-1] if k != "epoch" and k not in LEARNING_RATE_KEYS]
    metric_keys = [k for k in names if "loss" not in k]
    loss_keys = [k for k in names if "loss" in k]
    write_text(eval_dir / "train_metrics.csv", history_csv(rows, metric_keys))
    write_text(eval_dir / "train_losses.csv", history_csv(rows, loss_keys))
    if metric_keys:
        plot_history(rows, metric_keys, "metrics", eval_dir / "train_metrics.png")
    plot_history(rows, loss_keys, "losses", eval_dir / "train_losses.png")


def history_csv(rows: list[dict], keys: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["epoch", *keys])
    for r in rows:
        w.writerow([r["epoch"], *[("" if r.get(k) is None else f"{r[k]:.6g}") for k in keys]])
    return buf.getvalue()


def plot_history(rows: list[dict], keys: list[str], title: str, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    epochs = [r["epoch"] for r in rows]
    for k in keys:
        ax.plot(epochs, [r.get(k, math.nan) for r in rows], marker="o", ms=3, label=k)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
