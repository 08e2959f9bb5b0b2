"""Input pipeline vs training step: can the augmentation keep up with the model?

In ONE process, on the main job's pipeline (pipelines/fashion_mnist.toml: Fashion-MNIST from
/usr/share/datasets/fashion-mnist, or --synthetic images when it is not installed):

* ``pipeline``: images/s of the train split's tf.data pipeline alone (shuffle, batch, the
  seeded augmentation -- by default the main job's flip plus RandAugment with 2 ops at
  magnitude 0.3 and mixup alpha 0.2 -- and prefetch), iterated with nothing consuming it;
* ``step``: images/s the main job's training step consumes (the tape engine on the same images
  with augmentation off, so the step is not waiting on the pipeline);
* ``augmented_train`` (unless --no-augmented-train): the same training with the augmentation
  on, to show whether it slows training down.

Each is timed after a warm-up epoch (tracing, cache fill) and keeps its best of --rounds
rounds (other people's load only ever slows a run down). Images per CPU-second of this process
are printed beside the wall rates (steadier on a shared machine). Goal: pipeline >= 3x step.
Final JSON line: {"pipeline_ips":..,"step_ips":..,"ratio":..,"ratio_cpu":..,"goal":3.0,"met":..}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import describe  # noqa: E402  (bench/machine.py, beside this script)

import numpy as np  # noqa: E402

from tfcnn import config  # noqa: E402
from timing import bundle_for, train_timed  # noqa: E402  (bench/timing.py)

FASHION = Path(os.environ.get("TFCNN_DATA_DIR", "/usr/share/datasets/fashion-mnist"))
GOAL = 3.0


def make_config(args: argparse.Namespace, augment: bool) -> config.PipelineConfig:
    """The main job's pipeline file, cut to --images training images and a few epochs."""
    overrides = [
        f"data.train_subset={args.images}",
        "data.val_fraction=0.0",
        f"train.epochs={1 + args.epochs}",
        "train.tensorboard=false",
        "train.early_stopping.enabled=false",
        "export.enabled=false",
    ]
    if augment:
        overrides += [
            f"data.augment.randaugment_ops={args.ops}",
            f"data.augment.randaugment_magnitude={args.magnitude}",
            f"data.augment.mixup={args.mixup}",
        ]
    cfg = config.load(args.pipeline, overrides)
    if not augment:
        cfg.data.augment = config.AugmentConfig()  # every op off: the step alone
    return cfg


def pipeline_rate(cfg: config.PipelineConfig, synthetic: bool, epochs: int) -> dict[str, float]:
    """images/s of iterating the augmented train split with nothing consuming it (best epoch)."""
    bundle = bundle_for(cfg, synthetic)
    n = bundle.info.num_train
    wall, cpu = [], []
    for epoch in range(1 + epochs):
        t, c = time.perf_counter(), time.process_time()
        seen = 0
        for images, _ in bundle.train:
            seen += int(images.shape[0])
        if epoch:  # epoch 0: tracing and the cache fill
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        assert seen == n, (seen, n)
    return {"ips": max(n / w for w in wall), "ips_cpu": n * len(cpu) / sum(cpu)}


def train_rate(cfg: config.PipelineConfig, synthetic: bool) -> dict[str, float]:
    """images/s of the training epochs after the first (best epoch), through the real train stage."""
    bundle = bundle_for(cfg, synthetic)
    timer = train_timed(cfg, bundle)
    n = bundle.info.num_train
    return {"ips": max(n / w for w in timer.wall[1:]), "ips_cpu": n * len(timer.cpu[1:]) / sum(timer.cpu[1:])}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", type=Path, default=ROOT / "pipelines" / "fashion_mnist.toml")
    ap.add_argument("--images", type=int, default=12_800, help="training images (data.train_subset)")
    ap.add_argument("--epochs", type=int, default=2, help="timed training epochs after one warm-up epoch")
    ap.add_argument("--pipeline-epochs", type=int, default=4, help="timed passes over the pipeline after one warm-up")
    ap.add_argument("--ops", type=int, default=2, help="RandAugment ops per image")
    ap.add_argument("--magnitude", type=float, default=0.3, help="RandAugment magnitude (Keras factor, 0..1)")
    ap.add_argument("--mixup", type=float, default=0.2, help="mixup alpha")
    ap.add_argument("--rounds", type=int, default=2, help="repeat and keep each measurement's best")
    ap.add_argument("--no-augmented-train", dest="augmented_train", action="store_false",
                    help="skip training with the augmentation on")
    ap.add_argument("--synthetic", action="store_true", help="random 28x28x1 images instead of Fashion-MNIST")
    args = ap.parse_args(argv)

    synthetic = args.synthetic or not (FASHION / "train-images-idx3-ubyte.gz").exists()
    aug_cfg, plain_cfg = make_config(args, True), make_config(args, False)
    import tensorflow  # noqa: F401  (loaded, so describe() names its version)

    print(f"machine: {describe()}", flush=True)
    print(f"data: {'synthetic 28x28x1' if synthetic else FASHION}, {args.images} training images, "
          f"batch {aug_cfg.data.batch_size}, model {aug_cfg.model.name}, engine {aug_cfg.train.engine}", flush=True)
    print(f"augmentation: {aug_cfg.data.augment.summary()}", flush=True)
    got: dict[str, dict[str, float]] = {}

    def keep(name: str, r: dict[str, float], seconds: float) -> None:
        print(f"{name:>16}: {r['ips']:9.1f} images/s; {r['ips_cpu']:9.1f} images per CPU-second   ({seconds:.1f} s)", flush=True)
        best = got.setdefault(name, r)
        got[name] = {k: max(best[k], r[k]) for k in r}

    for round_ in range(1, args.rounds + 1):
        print(f"round {round_}", flush=True)
        t = time.perf_counter()
        keep("pipeline", pipeline_rate(aug_cfg, synthetic, args.pipeline_epochs), time.perf_counter() - t)
        t = time.perf_counter()
        keep("step", train_rate(plain_cfg, synthetic), time.perf_counter() - t)
        if args.augmented_train:
            t = time.perf_counter()
            keep("augmented_train", train_rate(aug_cfg, synthetic), time.perf_counter() - t)

    ratio = got["pipeline"]["ips"] / got["step"]["ips"]
    ratio_cpu = got["pipeline"]["ips_cpu"] / got["step"]["ips_cpu"]
    result = {
        "pipeline_ips": round(got["pipeline"]["ips"], 1),
        "step_ips": round(got["step"]["ips"], 1),
        "augmented_train_ips": round(got["augmented_train"]["ips"], 1) if "augmented_train" in got else None,
        "ratio": round(ratio, 3),
        "pipeline_ips_cpu": round(got["pipeline"]["ips_cpu"], 1),
        "step_ips_cpu": round(got["step"]["ips_cpu"], 1),
        "ratio_cpu": round(ratio_cpu, 3),
        "goal": GOAL,
        "met": bool(ratio >= GOAL),
        "augment": aug_cfg.data.augment.summary(),
        "images": args.images,
        "machine": describe(),
        "synthetic": synthetic,
    }
    print(f"pipeline / step = {ratio:.2f}x wall, {ratio_cpu:.2f}x per CPU-second (goal >= {GOAL:g}x: "
          f"{'met' if result['met'] else 'NOT met'})", flush=True)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
