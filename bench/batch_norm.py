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
from settings_ab import compare  # noqa: E402  (bench/settings_ab.py: the side-by-side timing)
from subset import add_subset_args  # noqa: E402  (bench/subset.py)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_subset_args(ap)
    args = ap.parse_args(argv)
    best = compare(args, {"keras": ["train.fused_batch_norm=false"], "fused": ["train.fused_batch_norm=true"]})
    from tfcnn.config import load

    result = {
        "fused_ips": round(best["fused"]["ips"], 1),
        "keras_ips": round(best["keras"]["ips"], 1),
        "speedup": round(best["fused"]["ips"] / best["keras"]["ips"], 3),
        "speedup_cpu": round(best["fused"]["ips_cpu"] / best["keras"]["ips_cpu"], 3),
        "model": load(args.pipeline).model.name,
        "machine": describe(),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
