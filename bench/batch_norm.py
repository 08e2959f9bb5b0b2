"""Fused vs Keras batch normalisation: training throughput of a pipeline's model, side by side.

``train.fused_batch_norm`` (on by default) trains through TensorFlow's FusedBatchNormV3 kernel
instead of Keras 3's op-by-op BatchNormalization (tfcnn/models/fused_bn.py says why). Both
settings train the pipeline's model with the real train stage (its engine, batch size and
augmentation) on a stratified subset of its data (--synthetic: random 28x28x1 images) in ONE
process, alternating for --rounds rounds; each keeps its best round (other people's load only
ever slows a run down). Epoch 1 is the warm-up (tracing); the later epochs are timed.

Usage: ``python bench/batch_norm.py [PIPELINE] [--images 12800] [--epochs 2] [--rounds 2]``
Prints one line per round and a final JSON line:
{"fused_ips": .., "keras_ips": .., "speedup": .., "speedup_cpu": .., "model": .., "machine": ..}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import describe  # noqa: E402  (bench/machine.py, beside this script)
from subset import add_subset_args, subset_overrides  # noqa: E402  (bench/subset.py)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_subset_args(ap)
    args = ap.parse_args(argv)

    import numpy as np

    from tfcnn.config import load
    from timing import bundle_for, train_timed  # bench/timing.py (loads TensorFlow)

    def config(fused: bool):
        return load(args.pipeline, overrides=[*subset_overrides(args.images, args.epochs),
                                               f"train.fused_batch_norm={'true' if fused else 'false'}"])

    bundle = bundle_for(config(True), args.synthetic)
    model_name = config(True).model.name
    print(f"machine: {describe()}", flush=True)
    print(f"model: {model_name} from {args.pipeline}, {bundle.info.num_train} images x {args.epochs} timed epochs", flush=True)
    best: dict[str, dict[str, float]] = {}
    for round_ in range(1, args.rounds + 1):
        for name, fused in (("keras", False), ("fused", True)):
            timer = train_timed(config(fused), bundle)
            n = bundle.info.num_train
            r = {"ips": float(np.median([n / w for w in timer.wall[1:]])), "ips_cpu": n * len(timer.cpu[1:]) / sum(timer.cpu[1:])}
            print(f"round {round_} {name:>5}: {r['ips']:8.1f} images/s; {r['ips_cpu']:8.1f} images per CPU-second", flush=True)
            old = best.setdefault(name, r)
            best[name] = {k: max(old[k], r[k]) for k in r}
    result = {
        "fused_ips": round(best["fused"]["ips"], 1),
        "keras_ips": round(best["keras"]["ips"], 1),
        "speedup": round(best["fused"]["ips"] / best["keras"]["ips"], 3),
        "speedup_cpu": round(best["fused"]["ips_cpu"] / best["keras"]["ips_cpu"], 3),
        "model": model_name,
        "machine": describe(),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
