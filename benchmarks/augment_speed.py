"""Does augmentation starve training? Epoch time with and without it, on a project's config.

    python benchmarks/augment_speed.py --data-root ../shared/data \
        [--config projects/Tiled-MultipleMyeloma/reduced/train_eval_infer.config] [--steps 8] [--rounds 3]

Three training input pipelines of the same config (the real one: decode, tile, cache, shuffle,
augment in parallel, batch, prefetch) feed one compiled model in turn:

* ``none``: no augmentation;
* ``config``: the config's own augmentation (its [generator]/[augmentor] keys);
* ``all``: every transform of the seed's ImageMaskAugmentor at once, with the parameters of the seed's
  MultipleMyeloma augmentor configs (flips, rotation by 6 angles, shrink, shear, elastic deformation,
  distortion, barrel and pincushion warps around 5 centres, sharpening, brightening).

Each pipeline first makes one full pass (its cache filled, as after training's first epoch); then in
each round every pipeline runs an "epoch" of ``--steps`` training steps (``train_on_batch`` on the
next batch), in turn, so that all see the same machine load. Reported: the median epoch time of
each and its ratio to ``none``, the share of it training spent waiting for its next batch, and
each pipeline's batch rate on its own (no training) for the headroom; the machine's load average. Writes benchmarks/results/augment_speed.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import SHARED_DATA, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "projects/Tiled-MultipleMyeloma/reduced/train_eval_infer.config"
CENTERS = ((0.3, 0.3), (0.7, 0.3), (0.5, 0.5), (0.3, 0.7), (0.7, 0.7))


def all_transforms():
    from flexunet.train.augment import AugmentSettings

    return AugmentSettings(
        hflip=True, vflip=True, angles=(30.0, 60.0, 90.0, 120.0, 180.0, 210.0), shrinks=(0.8,),
        shears=(0.2,), deformation=(1300.0, (8.0,)), distortion=(40.0, 0.5, (0.02,)),
        barrdistortion=(0.3, 0.3, CENTERS), pincdistortion=(0.3, -0.3, CENTERS), sharpening=(1.0,),
        brightening=(1.2, 10.0))


def pipelines(cfg, maker, pairs):
    """name -> (iterator over training batches, settings description)."""
    from flexunet.train import dataset as ds
    from flexunet.train.augment import AugmentSettings, Augmenter

    vmax, c = 255.0 * maker.preprocess.scale, maker.preprocess.channels
    variants = {"none": None, "config": AugmentSettings.from_config(cfg), "all": all_transforms()}
    out = {}
    for name, s in variants.items():
        aug = None if s is None else Augmenter(s, maker.height, maker.width, c, cfg.seed, vmax)
        data, steps = ds.make_tf_dataset(maker, pairs, cfg.train.batch_size, training=True, seed=cfg.seed,
                                         augmenter=aug)
        it = iter(data)
        t = time.perf_counter()
        for _ in range(steps):  # one full pass: the cache is filled
            next(it)
        print(f"{name}: first pass {steps} batches in {time.perf_counter() - t:.1f}s", flush=True)
        out[name] = (it, s.describe() if s else "nothing")
    return out


def measure(cfg, steps: int, rounds: int) -> dict:
    from flexunet.train import dataset as ds
    from flexunet.train.trainer import build_model, compile_model, set_seed, training_splits

    set_seed(cfg.seed)
    pairs = training_splits(cfg).train
    maker = ds.SampleMaker(cfg)
    feeds = pipelines(cfg, maker, pairs)
    model = build_model(cfg)
    compile_model(cfg, model)
    x, y = next(feeds["none"][0])
    model.train_on_batch(x, y)  # compiled once before timing
    epochs, waits = {k: [] for k in feeds}, {k: [] for k in feeds}
    load = [os.getloadavg()[0]]
    for r in range(rounds):
        for name, (it, _) in feeds.items():
            t = time.perf_counter()
            wait = 0.0
            for _ in range(steps):
                w = time.perf_counter()
                x, y = next(it)
                wait += time.perf_counter() - w
                model.train_on_batch(x, y)
            epochs[name].append(time.perf_counter() - t)
            waits[name].append(wait)
        load.append(os.getloadavg()[0])
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in epochs.items()), flush=True)
    alone = {}
    for name, (it, _) in feeds.items():
        t = time.perf_counter()
        for _ in range(2 * steps):
            next(it)
        alone[name] = 2 * steps / (time.perf_counter() - t)
    base = statistics.median(epochs["none"])
    return {
        "batch_size": cfg.train.batch_size, "input": [cfg.model.image_height, cfg.model.image_width],
        "steps_per_epoch": steps, "rounds": rounds, "train_images": len(pairs),
        "load_average_1min": [round(v, 1) for v in load],
        "variants": {k: {"transforms": feeds[k][1], "epoch_seconds": [round(v, 3) for v in epochs[k]],
                         "median_epoch_seconds": round(statistics.median(epochs[k]), 3),
                         "ratio_to_none": round(statistics.median(epochs[k]) / base, 3),
                         "input_wait_seconds": [round(v, 3) for v in waits[k]],
                         "input_wait_share": round(sum(waits[k]) / sum(epochs[k]), 4),
                         "pipeline_alone_batches_per_second": round(alone[k], 2)}
                     for k in feeds},
    }


def shown(config: Path) -> str:
    """The config's path relative to the repository when it is inside it."""
    path = config.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def markdown(res: dict, config: Path) -> str:
    lines = [
        "# Augmentation cost: training epoch time with and without augmentation", "",
        f"Config `{shown(config)}`: input {res['input'][0]}x{res['input'][1]}, batch "
        f"{res['batch_size']}, {res['train_images']} training images; an epoch = {res['steps_per_epoch']} "
        f"training steps, {res['rounds']} rounds interleaved; median shown. "
        "`python benchmarks/augment_speed.py --data-root ../shared/data`", "",
        "| pipeline | transforms | epoch (s) | ratio to none | training waiting for input | "
        "pipeline alone (batches/s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for k, v in res["variants"].items():
        lines.append(f"| {k} | {v['transforms']} | {v['median_epoch_seconds']:.2f} | "
                     f"{v['ratio_to_none']:.2f} | {100 * v['input_wait_share']:.1f}% | "
                     f"{v['pipeline_alone_batches_per_second']:.1f} |")
    load = res["load_average_1min"]
    lines += ["", f"Machine load (1-min load average, {len(load)} readings between rounds): "
              f"{min(load):.1f}-{max(load):.1f} on {os.cpu_count()} cores. \"Training waiting for input\": "
              "the share of the epoch spent in fetching the next batch (0 when the pipeline keeps up)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--data-root", type=Path, default=SHARED_DATA)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--name", default="augment_speed")
    args = p.parse_args(argv)

    from flexunet.core.config import load_config
    from flexunet.core.console import import_tensorflow_quietly

    cfg = load_config(args.config, data_root=args.data_root)
    import_tensorflow_quietly()
    res = measure(cfg, args.steps, args.rounds)
    md = markdown(res, args.config)
    print(md)
    write_results(args.name, {"config": shown(args.config), **res}, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
