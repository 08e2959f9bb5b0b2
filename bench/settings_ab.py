"""Two settings of one pipeline, training throughput side by side in one process.

What a config switch costs or buys in training speed (``train.mixed_precision``, an augmentation,
``train.fused_batch_norm``, ...) depends on the CPU, so it is measured where it is used: both
settings train the pipeline's model with the real train stage (its engine, batch size and
augmentation) on a stratified subset of its data (--synthetic: random 28x28x1 images),
alternating for --rounds rounds; each keeps its best round (other people's load only ever slows
a run down). Epoch 1 is the warm-up (tracing); the later epochs are timed.

Usage: ``python bench/settings_ab.py [PIPELINE] --a KEY=VALUE ... --b KEY=VALUE ... [--images 12800]``
Prints one line per round and a final JSON line:
{"a": [..], "b": [..], "a_ips": .., "b_ips": .., "speedup": b/a, "speedup_cpu": .., "model": .., "machine": ..}
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


def compare(args: argparse.Namespace, settings: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """Best images/s and images per CPU-second of each named list of config overrides."""
    import numpy as np

    from tfcnn.config import load
    from timing import bundle_for, train_timed  # bench/timing.py (loads TensorFlow)

    def config(overrides: list[str]):
        return load(args.pipeline, overrides=[*subset_overrides(args.images, args.epochs), *overrides])

    first = config(next(iter(settings.values())))
    bundle = bundle_for(first, args.synthetic)
    print(f"machine: {describe()}", flush=True)
    print(f"model: {first.model.name} from {args.pipeline}, {bundle.info.num_train} images x {args.epochs} timed epochs", flush=True)
    for name, overrides in settings.items():
        print(f"{name}: {' '.join(overrides) or '(the pipeline as written)'}", flush=True)
    best: dict[str, dict[str, float]] = {}
    n = bundle.info.num_train
    for round_ in range(1, args.rounds + 1):
        for name, overrides in settings.items():
            timer = train_timed(config(overrides), bundle)
            r = {"ips": float(np.median([n / w for w in timer.wall[1:]])), "ips_cpu": n * len(timer.cpu[1:]) / sum(timer.cpu[1:])}
            print(f"round {round_} {name:>5}: {r['ips']:8.1f} images/s; {r['ips_cpu']:8.1f} images per CPU-second", flush=True)
            old = best.setdefault(name, r)
            best[name] = {k: max(old[k], r[k]) for k in r}
    return best


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_subset_args(ap)
    ap.add_argument("--a", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the first setting (none: the file)")
    ap.add_argument("--b", nargs="+", required=True, metavar="KEY=VALUE", help="overrides of the second setting")
    args = ap.parse_args(argv)
    best = compare(args, {"a": args.a, "b": args.b})
    result = {
        "a": args.a,
        "b": args.b,
        "a_ips": round(best["a"]["ips"], 1),
        "b_ips": round(best["b"]["ips"], 1),
        "speedup": round(best["b"]["ips"] / best["a"]["ips"], 3),
        "speedup_cpu": round(best["b"]["ips_cpu"] / best["a"]["ips_cpu"], 3),
        "pipeline": args.pipeline,
        "machine": describe(),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
