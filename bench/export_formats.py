"""Export formats: full-int8 vs float32 TFLite size and latency, int8 accuracy drop, export+verify time.

Usage: ``python bench/export_formats.py [RUN_DIR]``. With a run directory it exports and verifies
that run (all six formats, the run's own export settings) into a temporary model repository.
Without one it first trains a quick model itself through the real train stage (compact_cnn when
registered, else tiny_cnn) on a stratified Fashion-MNIST subset, so the script is self-contained.

All ratios come from ONE export + verify in one process (verification.json of that version):
  size_ratio     = bytes(model_int8.tflite) / bytes(model_float32.tflite)      goal <= 0.30
  latency_ratio  = batch-1 median latency int8 / float32 (LiteRT, same threads) goal <= 0.7
  accuracy_drop  = Keras test accuracy - int8 test accuracy, in points          goal <= 0.5
  export_verify_seconds = wall time of export_run + verify_version             goal < 90 on 2 cores
Timings on a shared machine are noisy; compare ratios from one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import describe  # noqa: E402  (bench/machine.py, beside this script)

GOALS = {"size_ratio": 0.30, "latency_ratio": 0.7, "accuracy_drop_points": 0.5, "export_verify_seconds": 90.0}


def train_quick_run(out: Path, args: argparse.Namespace) -> Path:
    """A small but real run: the pipeline's train stage on a Fashion-MNIST subset."""
    from tfcnn.config import from_dict
    from tfcnn.models import available
    from tfcnn.pipeline import train_stage

    model = "compact_cnn" if "compact_cnn" in available() else "tiny_cnn"
    cfg = from_dict(
        {
            "name": "bench_export",
            "data": {
                "source": "fashion_mnist",
                "train_subset": args.train_subset,
                "test_subset": args.test_subset,
                "batch_size": 32,  # enough steps for BatchNorm's moving statistics to settle
                "val_fraction": 0.1,
                "seed": 0,
            },
            "model": {"name": model},
            "train": {
                "engine": "fit",
                "epochs": args.epochs,
                "learning_rate": 3e-3,
                "tensorboard": False,
                "early_stopping": {"enabled": False},
            },
            "export": {"latency_runs": args.latency_runs, "threads": args.threads},
            "report": False,
        }
    )
    run_dir = out / "run"
    started = time.perf_counter()
    metrics = train_stage(cfg, run_dir)
    print(
        f"trained {model} on {args.train_subset} images for {args.epochs} epochs in "
        f"{time.perf_counter() - started:.1f} s: test accuracy {100 * metrics['test_accuracy']:.2f}%",
        flush=True,
    )
    return run_dir


def builtin_kernel_latency(vd: Path, args: argparse.Namespace) -> dict[str, float]:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from tfcnn.export.runtime import latency_ms
    from tfcnn.export.tflite import VARIANTS

    out = {}
    for variant in ("tflite_float32", "tflite_int8"):
        it = Interpreter(
            model_path=str(vd / VARIANTS[variant]),
            num_threads=args.threads,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        image = np.random.default_rng(0).integers(0, 256, size=inp["shape"], dtype=np.uint8)

        def once() -> None:
            it.set_tensor(inp["index"], image)
            it.invoke()

        out[variant] = latency_ms(once, args.latency_runs)["latency_ms_median"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?", type=Path, help="trained run directory (default: train a quick one)")
    p.add_argument("--train-subset", type=int, default=6000, help="training images for the quick model")
    p.add_argument("--test-subset", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--latency-runs", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--keep", type=Path, help="work in this directory (quick run + export/) instead of a temp dir")
    args = p.parse_args()

    from tfcnn.errors import VerificationError
    from tfcnn.export import export_run, verify_version
    from tfcnn.util import setup_logging

    setup_logging()  # one progress line per export/verify step

    with tempfile.TemporaryDirectory(prefix="tfcnn-bench-export-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run_dir = args.run_dir or train_quick_run(work, args)
        root = work / "export"
        started = time.perf_counter()
        vd = export_run(run_dir, root=root)
        export_s = time.perf_counter() - started
        try:
            report = verify_version(vd, threads=args.threads)
        except VerificationError as exc:
            print(f"verification failed: {exc}", flush=True)
            report = json.loads((vd / "verification.json").read_text())
        total_s = time.perf_counter() - started

        f32, i8 = report["formats"]["tflite_float32"], report["formats"]["tflite_int8"]
        builtin = builtin_kernel_latency(vd, args)
        print((vd / "verification.md").read_text())
        result = {
            "size_ratio": round(i8["bytes"] / f32["bytes"], 4),
            "latency_ratio": round(i8["latency_ms_median"] / f32["latency_ms_median"], 4),
            "accuracy_drop_points": round(100 * (report["keras"]["accuracy"] - i8["accuracy"]), 3),
            "export_verify_seconds": round(total_s, 1),
            "export_seconds": round(export_s, 1),
            "float32_bytes": f32["bytes"],
            "int8_bytes": i8["bytes"],
            "float32_ms": f32["latency_ms_median"],
            "int8_ms": i8["latency_ms_median"],
            "keras_accuracy": report["keras"]["accuracy"],
            "int8_accuracy": i8["accuracy"],
            "int8_changed": len(report["int8_changed"]),
            # Same two files on LiteRT's builtin kernels (no XNNPACK delegate), for context:
            # XNNPACK's float32 kernels are very fast on AVX2 CPUs without VNNI int8 instructions.
            "latency_ratio_builtin_kernels": round(builtin["tflite_int8"] / builtin["tflite_float32"], 4),
            "samples": report["samples"],
            "verification_passed": report["passed"],
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "machine": describe(),
        }
        result["goals_met"] = {
            "size_ratio": result["size_ratio"] <= GOALS["size_ratio"],
            "latency_ratio": result["latency_ratio"] <= GOALS["latency_ratio"],
            "accuracy_drop_points": result["accuracy_drop_points"] <= GOALS["accuracy_drop_points"],
            "export_verify_seconds": result["export_verify_seconds"] < GOALS["export_verify_seconds"],
        }
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
