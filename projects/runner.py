"""``flexunet project``: one dataset's whole chain on its real samples, with the commands a user runs.

    train -> evaluate -> export (FP32 + INT8, the INT8 search judged on held-out training tiles with
          their masks) -> tiled inference on the held-out images -> parity against Keras (with
          ground truth) of every path that runs here: ONNX Runtime FP32 and INT8, OpenVINO FP32 and
          BF16 -> images per second of each

A run writes only into the project folder it is given (:class:`Project`): everything goes beside
the config (``<project>/reduced/`` for the CPU-sized variant): the config's ``model_dir`` and
``eval_dir`` and ``evaluation.csv`` (training and evaluation, as the seeds name them), ``export/``
(ONNX artifacts and export_report.json), ``out/`` (masks of the held-out images), ``parity/`` (full
report), and ``results/`` (:mod:`flexunet.projects.results`); then the results block of the
project's README.  A config whose outputs would land outside the folder is refused before anything
runs.  The cross-project summary table is not touched: ``flexunet project --summary DIR`` rewrites it.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from flexunet.core.config import CONFIG_FILENAME, Config, load_config
from flexunet.core.errors import EXIT_FAILED, EXIT_OK, FlexunetError
from flexunet.projects.report import SUMMARY_BEGIN, results_markdown, update_readme
from flexunet.projects.results import project_results, write_results
from flexunet.runtime.parity import ModelSpec, run_parity
from flexunet.runtime.parity_report import write_reports

STEPS = ("train", "evaluate", "export", "infer", "parity", "bench")

Say = Callable[[str], None]


# -- the project and its folder -----------------------------------------------------------------------
@dataclass(frozen=True)
class Project:
    """A project folder (``projects/IHC``, named after its dataset, with its README.md) and the
    config of a run, which lies inside it."""

    folder: Path
    config: Path

    @property
    def name(self) -> str:
        return self.folder.resolve().name

    @property
    def work(self) -> Path:
        """Where the run's outputs go: beside the config."""
        return self.config.parent

    @property
    def results(self) -> Path:
        """The folder of the figures kept with the project."""
        return self.work / "results"

    def check_inside(self, path: Path, what: str) -> None:
        """Raise FlexunetError unless ``path`` lies inside the project folder."""
        if not path.resolve().is_relative_to(self.folder.resolve()):
            raise FlexunetError(f"{what} {path} is outside the project folder {self.folder}; "
                                "a project run writes only into its folder")


def resolve_project(project: Path, config: Path | None = None) -> Project:
    """The project of ``flexunet project PROJECT [--config CONFIG]``.

    ``project`` is a project folder (``projects/IHC``) or a config file in one (the folder is then
    the config's folder, or its parent when that is ``reduced/``).  The config is ``config`` if
    given, else the file ``project`` itself, else the folder's reduced variant
    (``reduced/train_eval_infer.config``), else its ``train_eval_infer.config``.

    Raises:
        FlexunetError: no such config, or a config outside the project folder.
    """
    project = Path(project)
    if project.is_file():
        folder = project.parent.parent if project.parent.name == "reduced" else project.parent
        path = Path(config) if config is not None else project
    else:
        folder = project
        path = Path(config) if config is not None else folder / "reduced" / CONFIG_FILENAME
        if config is None and not path.is_file():
            path = folder / CONFIG_FILENAME
    if not path.is_file():
        raise FlexunetError(f"{path}: no such config (a project folder holds {CONFIG_FILENAME} "
                            f"and reduced/{CONFIG_FILENAME})")
    found = Project(folder, path)
    found.check_inside(path, "the config")
    return found


def check_outputs(project: Project, cfg: Config) -> None:
    """Refuse a config whose training outputs would be written outside the project folder."""
    t = cfg.train
    outputs = {"model_dir": t.model_dir, "eval_dir": t.eval_dir}
    if t.epoch_change_infer:
        outputs["epoch_change_infer_dir"] = t.epoch_change_infer_dir
    if t.epoch_change_tiledinfer:
        outputs["epoch_change_tiledinfer_dir"] = t.epoch_change_tiledinfer_dir
    for key, path in outputs.items():
        try:
            project.check_inside(Path(path), f"[train] {key}")
        except FlexunetError as exc:
            raise cfg.error("train", key, str(exc)) from None


def _pairs(cfg: Config):
    """Training and held-out pairs; a missing folder or file is one line naming it (exit 2)."""
    from flexunet.train.dataset import split_pairs

    train, test = split_pairs(cfg, "train"), split_pairs(cfg, "test")
    if not test:
        raise cfg.error("test", "image_datapath", "missing: a project run needs a held-out [test] split")
    if not train:
        raise cfg.error("train", "image_datapath", "missing: a project run trains on [train]")
    wanted = set(cfg.test.files or [])
    found = {p.image.name for p in test} | {p.image.stem for p in test}
    missing = sorted(w for w in wanted if w not in found)
    if missing:
        raise cfg.error("test", "files", f"{len(missing)} held-out file(s) not found in "
                        f"{cfg.test.image_datapath} with masks in {cfg.test.mask_datapath}: "
                        + ", ".join(missing[:5]))
    return train, test


# -- the steps ---------------------------------------------------------------------------------------
class _Steps:
    """Numbered step headers with times, through ``say``."""

    def __init__(self, say: Say):
        self.say = say
        self.times: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        k = STEPS.index(name) + 1
        self.say(f"[{k}/{len(STEPS)}] {name}")
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        self.times[name] = round(time.perf_counter() - t, 2)
        self.say(f"[{k}/{len(STEPS)}] {name}: done in {self.times[name]:.0f}s")
        return out


def _train(cfg: Config, model_path: Path, skip: bool, epochs: int | None, steps: _Steps) -> dict | None:
    """Train (or, with ``skip``, reuse the model in model_dir); the training record or None."""
    if skip:
        if not model_path.is_file():
            raise FlexunetError(f"{model_path}: no trained model to reuse (run without --skip-train)")
        steps.say(f"[1/{len(STEPS)}] train: skipped, reusing {model_path}")
        return None
    from flexunet.train.trainer import train

    r = steps.run("train", train, cfg, epochs=epochs)
    if r.interrupted:
        raise KeyboardInterrupt
    return {"seconds": round(r.seconds, 1), "epochs_run": r.epochs_run, "best_epoch": r.best_epoch,
            "best_val_loss": r.best_val_loss, "max_minutes": cfg.train.max_minutes}


def _infer(onnx: Path, images: list[Path], out: Path):
    from flexunet.runtime.segmenter import Segmenter

    with Segmenter(onnx) as seg:
        summary = seg.segment_folder(images, out, colorize=True, overlay=True)
    if summary.skipped:
        raise FlexunetError(f"{summary.skipped[0][0]}: {summary.skipped[0][1]}")
    return summary


#: The paths a project measures besides Keras: its key in results.json's throughput, and the model
#: (file of the export and backend; "auto" is ONNX Runtime for an .onnx).
PATHS = {"onnx_fp32": ("model.onnx", "auto"), "onnx_int8": ("model.int8.onnx", "auto"),
         "openvino_fp32": ("model.onnx", "openvino"), "openvino_bf16": ("model.onnx", "openvino-bf16")}


def _paths(export_dir: Path) -> tuple[dict[str, ModelSpec], dict[str, str]]:
    """The paths that can run here (:data:`PATHS`, as parity candidates), and why the others cannot
    (the engines and CPU features :func:`flexunet.runtime.tune.tune_paths` checks)."""
    from flexunet.runtime.tune import tune_paths

    runnable, skipped = tune_paths(export_dir / "model.onnx")
    have = {(p.file.name, p.backend) for p in runnable}
    reasons = {(s["file"], s["backend"]): s["reason"] for s in skipped}
    specs, missing = {}, {}
    for key, (file, backend) in PATHS.items():
        if backend == "auto" or (file, backend) in have:
            specs[key] = ModelSpec(export_dir / file, backend)
        else:
            missing[key] = reasons.get((file, backend)) or reasons.get((file, "openvino"), "not available here")
    return specs, missing


def _parity(reference: Path, candidates: list[ModelSpec], images: list[Path], masks_dir: Path, config: Path,
            out: Path, say: Say):
    report = run_parity(reference, candidates, images, masks_dir=masks_dir, config=config, progress=say)
    write_reports(report, out)
    return report


def _throughput(models: dict[str, ModelSpec], images: list[Path], config: Path, say: Say) -> dict:
    """Images per second end to end (decode to written mask) for each model, the seed-style loop
    timed in the same run as the FP32 ONNX model (``flexunet bench``'s measuring)."""
    from flexunet.runtime.bench import run_bench

    out = {}
    for key, spec in models.items():
        baseline = dict(baseline="seed", keras=models["keras"].path) if key == "onnx_fp32" else {}
        data = run_bench(spec.path, images, backend=spec.backend, batch_sizes=(1, 4), repeat=5, warmup=2, runs=2,
                         batch_size=4, config=config, progress=say, **baseline)
        e2e = data["end_to_end"]
        out[key] = {"images_per_s": e2e["slides_per_s"], "tiles_per_s": e2e["tiles_per_s"],
                    "backend": data["model"].get("backend"), "peak_rss_bytes": e2e["peak_rss_bytes"]}
        if data["baseline"]:
            out[key]["seed_loop_images_per_s"] = data["baseline"]["slides_per_s"]
            out[key]["vs_seed_loop"] = data["baseline"]["ratio"]
    out["machine"] = data["machine"]
    return out


def _earlier_training(results_json: Path, weights_sha256: str) -> dict | None:
    """With --skip-train: the training record of the earlier run that trained this very model
    (same Keras weights hash), marked as reused; None when there is none."""
    try:
        earlier = json.loads(results_json.read_text())
    except (OSError, ValueError):
        return None
    t = earlier.get("training")
    if not t or earlier.get("keras_weights_sha256") != weights_sha256:
        return None
    return {**t, "reused_from": t.get("reused_from") or earlier.get("started")}


# -- the run -----------------------------------------------------------------------------------------
def run_project(project: Project, data_root: Path | None = None, *, skip_train: bool = False,
                epochs: int | None = None, say: Say = print) -> tuple[dict, int]:
    """Run the chain for one project; returns results.json's content and the exit code (0 every
    exported model passes parity, 1 one fails)."""
    from flexunet.export.exporter import ExportOptions, run_export
    from flexunet.train.evaluate import evaluate
    from flexunet.train.trainer import BEST_MODEL_FILE

    cfg = load_config(project.config, data_root=data_root)
    check_outputs(project, cfg)
    work = project.work
    train_pairs, test_pairs = _pairs(cfg)
    test_images = [p.image for p in test_pairs]
    model_path = cfg.train.model_dir / BEST_MODEL_FILE
    steps = _Steps(say)
    started = datetime.now().isoformat(timespec="seconds")
    say(f"project {project.name}: {project.config} ({len(train_pairs)} training images, "
        f"{len(test_pairs)} held-out)")

    training = _train(cfg, model_path, skip_train, epochs, steps)
    ev = steps.run("evaluate", evaluate, cfg, model_path)
    export_dir = work / "export"
    report = steps.run("export", run_export, model_path, ExportOptions(
        out_dir=export_dir, config=cfg.path, data_root=data_root, int8=True,
        calibration_images=[p.image for p in train_pairs], calibration_masks=cfg.train.mask_datapath,
        int8_min_dice=0.0))
    onnx = export_dir / "model.onnx"
    steps.run("infer", _infer, onnx, test_images, work / "out")
    paths, unavailable = _paths(export_dir)
    for key, reason in unavailable.items():
        say(f"{key}: not measured ({reason})")
    prep = steps.run("parity", _parity, model_path, list(paths.values()), test_images, cfg.test.mask_datapath,
                     cfg.path, work / "parity", say)
    speed = steps.run("bench", _throughput, {"keras": ModelSpec(model_path), **paths}, test_images, cfg.path, say)

    if training is None:
        training = _earlier_training(project.results / "results.json", report["keras_weights_sha256"])
    results = project_results(project.name, cfg, project.config, data_root, started=started, training=training,
                              evaluation=ev, export_report=report, parity=prep, throughput=speed,
                              unavailable=unavailable,
                              train_images=len(train_pairs), test_images=test_images, step_seconds=steps.times)
    write_results(project.results, results, cfg, onnx, test_pairs, work / "parity")
    update_readme(project.folder / "README.md", results,
                  project.results.resolve().relative_to(project.folder.resolve()))
    say(results_markdown(results))
    _point_to_summary(project, say)
    return results, (EXIT_OK if results["parity"]["passed"] else EXIT_FAILED)


def _point_to_summary(project: Project, say: Say) -> None:
    """When the folder above the project keeps a summary table, say how to refresh it."""
    parent = project.folder.resolve().parent
    try:
        keeps_table = SUMMARY_BEGIN in (parent / "README.md").read_text()
    except OSError:
        keeps_table = False
    if keeps_table:
        say(f"the table of all projects in {parent / 'README.md'} is refreshed by: "
            f"flexunet project --summary {parent}")
