"""Per-epoch iterators vs one repeated iterator: the end-of-epoch stall the train engines avoid.

On TF 2.21 (2-core CPU), training from the main job's pipeline (shuffle, batch, a per-batch
augmentation map, prefetch) with a fresh ``iter(dataset)`` every epoch made about half the
epochs ~10 s longer: the time went after the last batch, when the spent iterator was torn
down, not in any train step; with augmentation off, with tf.data autotuning off, or with one
iterator over ``dataset.repeat()`` it went away. Both engines therefore keep one iterator for
the whole run. This benchmark trains the same model in one process both ways, alternating
blocks of epochs, and reports per-epoch seconds.

Usage: ``python bench/epoch_stall.py [PIPELINE] [--images 27000] [--epochs 6] [--rounds 2]``
Final JSON line: {"per_epoch_iter_s": [...], "repeated_iter_s": [...], "ratio_total": .., ...}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import describe  # noqa: E402  (bench/machine.py, beside this script)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pipeline", nargs="?", default=str(ROOT / "pipelines" / "fashion_mnist.toml"))
    p.add_argument("--images", type=int, default=27000, help="stratified training subset (before the validation split)")
    p.add_argument("--epochs", type=int, default=6, help="epochs per block")
    p.add_argument("--rounds", type=int, default=2, help="blocks of each kind, alternated")
    args = p.parse_args(argv)

    import keras
    import tensorflow as tf

    from tfcnn.config import load
    from tfcnn.data import load_data
    from tfcnn.data.augment import active
    from tfcnn.models import build_model

    cfg = load(args.pipeline, [f"data.train_subset={args.images}", "export.enabled=false"])
    bundle = load_data(cfg.data)
    info = bundle.info
    model = build_model(cfg.model, info.input_shape, info.num_classes, info.mean, info.std)
    optimizer = keras.optimizers.Adam(1e-3)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    @tf.function(reduce_retracing=True)
    def step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(tf.cast(x, tf.float32), training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    spe = int(bundle.train.cardinality())
    repeated = iter(bundle.train.repeat())

    def epoch(kind: str) -> float:
        t0 = time.perf_counter()
        loss = None
        if kind == "per_epoch":
            for x, y in bundle.train:  # a new iterator, dropped when the loop ends
                loss = step(x, y)
        else:
            for _ in range(spe):
                x, y = next(repeated)
                loss = step(x, y)
        float(loss)
        return time.perf_counter() - t0

    epoch("repeated")  # trace and fill the cache outside the timings
    times: dict[str, list[float]] = {"per_epoch": [], "repeated": []}
    for r in range(args.rounds):
        for kind in ("per_epoch", "repeated"):
            for _ in range(args.epochs):
                s = epoch(kind)
                times[kind].append(round(s, 2))
                print(f"round {r + 1} {kind:9s} epoch {s:6.2f} s", flush=True)
    summary = {
        "per_epoch_iter_s": times["per_epoch"],
        "repeated_iter_s": times["repeated"],
        "per_epoch_iter_median_s": round(statistics.median(times["per_epoch"]), 2),
        "repeated_iter_median_s": round(statistics.median(times["repeated"]), 2),
        "ratio_total": round(sum(times["per_epoch"]) / sum(times["repeated"]), 3),
        "steps_per_epoch": spe,
        "model": cfg.model.name,
        "augment": active(cfg.data.augment),
        "tensorflow": tf.__version__,
        "machine": describe(),
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
