"""oneDNN on vs off: training throughput of a pipeline's model with TF_ENABLE_ONEDNN_OPTS=1 and =0.

TensorFlow's x86 wheels turn oneDNN's kernels on by default only on CPUs with AVX512-VNNI,
AVX512-BF16 or AMX; on an AVX2-only CPU they are off. ``import tfcnn`` turns them on (unless
the variable is already set) because this benchmark measured them faster there. The setting is
read once, when TensorFlow loads, so each measurement runs in a child process; the parent
alternates the two settings for --rounds rounds and keeps each setting's best round.

Each child trains the pipeline's model with the real train stage (tape engine, the pipeline's
batch size) on a stratified Fashion-MNIST subset (--synthetic: random images), times the
epochs after the first (tracing, cache fill), and reports images/s.

Usage: ``python bench/onednn.py [PIPELINE] [--images 12800] [--epochs 2] [--rounds 2]``
Prints one line per child and a final JSON line:
{"onednn_ips": .., "plain_ips": .., "speedup": .., "model": .., "machine": ..}
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from machine import describe  # noqa: E402  (bench/machine.py, beside this script)
from subset import add_subset_args, subset_overrides  # noqa: E402  (bench/subset.py)


def child(args: argparse.Namespace) -> dict:
    """Runs inside a fresh interpreter whose TF_ENABLE_ONEDNN_OPTS the parent chose."""
    sys.path.insert(0, str(ROOT))
    from timing import bundle_for, train_timed  # bench/timing.py: loads TensorFlow, so only here

    from tfcnn.config import load

    cfg = load(args.pipeline, subset_overrides(args.images, args.epochs))
    bundle = bundle_for(cfg, args.synthetic)
    timer = train_timed(cfg, bundle)
    timed = timer.wall[1:]
    return {
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "model": cfg.model.name,
        "batch": cfg.data.batch_size,
        "ips": max(bundle.info.num_train / w for w in timed),
        "epoch_seconds": [round(w, 2) for w in timed],
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_subset_args(p)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return {}

    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for setting in ("1", "0"):
            env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting, TF_CPP_MIN_LOG_LEVEL="2")
            cmd = [sys.executable, __file__, args.pipeline, "--child", "--images", str(args.images), "--epochs", str(args.epochs)]
            if args.synthetic:
                cmd.append("--synthetic")
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"bench child with TF_ENABLE_ONEDNN_OPTS={setting} failed:\n{out.stderr[-2000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"TF_ENABLE_ONEDNN_OPTS={setting}: {result['ips']:.0f} img/s (epochs {result['epoch_seconds']} s)", flush=True)
            if setting not in best or result["ips"] > best[setting]["ips"]:
                best[setting] = result
    summary = {
        "onednn_ips": round(best["1"]["ips"], 1),
        "plain_ips": round(best["0"]["ips"], 1),
        "speedup": round(best["1"]["ips"] / best["0"]["ips"], 3),
        "model": best["1"]["model"],
        "batch": best["1"]["batch"],
        "images": args.images,
        "data": "synthetic" if args.synthetic else "fashion_mnist",
        "machine": describe(),
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
