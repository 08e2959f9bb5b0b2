"""Calibration set size vs full-integer int8 accuracy: how many representative images are enough.

Usage: ``python bench/calibration.py [RUN_DIR]``. With a run directory it uses that run's model and
data (e.g. the Fashion-MNIST job's). Without one it first trains a quick model (compact_cnn when
registered, else tiny_cnn) on a stratified Fashion-MNIST subset through tfcnn's own data loader
(the Debian package's IDX files, /usr/share/datasets/fashion-mnist), so the script is
self-contained.

For each calibration size (default 50 / 100 / 300 / 1000) and each seed, the representative images
are drawn from the TRAINING split exactly as ``tfcnn export`` draws them
(:func:`tfcnn.export.tflite.representative_images`: seeded, without replacement, plus one range-pin
copy), the full-integer int8 file is converted the way the export converts it (in the export's
native-converter child process), and its test accuracy and top-1 agreement with Keras are measured
with the LiteRT interpreter. The last line is one JSON object:

  calibration_split        always "train" (the test split is only measured on)
  sizes                    the calibration sizes asked for; used_images: what each really drew
  int8_accuracy[size]      mean test accuracy over the seeds (min / max beside it)
  agreement[size]          mean top-1 agreement with Keras over the seeds
  keras_accuracy           the float model on the same test images
Timings on a shared machine are noisy; the accuracies are deterministic for a given model and seed.
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


def quick_run(out: Path, args: argparse.Namespace) -> Path:
    """A small real run (config, data, model, metrics) trained with model.fit on a Fashion-MNIST
    subset: what load_source needs, without the evaluate stage's extras."""
    import keras

    from tfcnn.config import from_dict
    from tfcnn.data import load_data
    from tfcnn.models import available, build_model
    from tfcnn.run import Metrics, Run

    model_name = "compact_cnn" if "compact_cnn" in available() else "tiny_cnn"
    cfg = from_dict({
        "name": "bench_calibration",
        "data": {"source": "fashion_mnist", "train_subset": args.train_subset, "test_subset": args.test_subset,
                 "batch_size": 32, "val_fraction": 0.1, "seed": 0},
        "model": {"name": model_name},
        "report": False,
    })
    started = time.perf_counter()
    bundle = load_data(cfg.data)
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model, bundle.info.input_shape, bundle.info.num_classes, bundle.info.mean, bundle.info.std)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(bundle.train, epochs=args.epochs, verbose=0)
    run = Run.create(out / "run")
    run.save_config(cfg)
    run.write(bundle.info)
    model.save(run.path("model"))
    acc = float(model.evaluate(bundle.test, verbose=0)[1])
    run.write(Metrics(engine="fit", epochs_run=args.epochs, scores={"test_accuracy": acc}))
    print(f"trained {model_name} on {bundle.info.num_train} Fashion-MNIST images for {args.epochs} epochs in "
          f"{time.perf_counter() - started:.1f} s: test accuracy {100 * acc:.2f}%", flush=True)
    return run.root


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?", type=Path, help="trained run directory (default: train a quick one)")
    p.add_argument("--sizes", default="50,100,300,1000", help="calibration set sizes, comma-separated")
    p.add_argument("--seeds", type=int, default=3, help="draws per size (the spread shows how much the draw matters)")
    p.add_argument("--test-images", type=int, default=2000, help="test images measured on (the first N)")
    p.add_argument("--train-subset", type=int, default=6000, help="training images for the quick model")
    p.add_argument("--test-subset", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1 or args.seeds < 1:
        p.error("--sizes must list positive integers and --seeds must be >= 1")

    import numpy as np
    import tensorflow as tf

    from tfcnn.export import tflite as tflite_mod
    from tfcnn.export.isolate import shared_worker
    from tfcnn.export.source import bundle_of, load_source
    from tfcnn.export.wrapper import mobile_archive, to_rgb
    from tfcnn.tasks import get_task

    with tempfile.TemporaryDirectory(prefix="tfcnn-bench-calibration-") as tmp:
        work = Path(tmp)
        src = load_source(args.run_dir or quick_run(work, args))
        if src.cfg.task != "classification":
            p.error(f"{src.root} is a {src.cfg.task} run; this benchmark measures a classifier's accuracy")
        task = get_task(src.cfg.task, src.cfg, src.run)
        arrays = bundle_of(src.run).arrays
        x_train = arrays["train"][0]
        x_test, y_test = arrays["test"][0][: args.test_images], np.asarray(arrays["test"][1][: args.test_images]).astype(np.int64)
        model = src.load_model()
        keras_probs = task.reference(model, x_test)
        source = work / "mobile_float32"
        mobile_archive(model, tf.float32, task).write_out(str(source), verbose=False)
        rgb = np.ascontiguousarray(to_rgb(x_test))
        worker = shared_worker()
        # one throw-away conversion starts the converter's child and its TensorFlow: convert_seconds are conversions only
        worker.call(tflite_mod.convert, "tflite_int8", source, tflite_mod.representative_images(x_train, 1, 0), task.int8_float_names)
        rows: dict[str, list[dict[str, float]]] = {}
        used: dict[str, int] = {}
        for n in sizes:
            for seed in range(args.seeds):
                rep = tflite_mod.representative_images(x_train, n, src.cfg.data.seed + seed)
                used[str(n)] = len(rep) - 1
                started = time.perf_counter()
                data = worker.call(tflite_mod.convert, "tflite_int8", source, rep, task.int8_float_names)
                convert_s = time.perf_counter() - started
                path = work / f"int8_{n}_{seed}.tflite"
                path.write_bytes(data)
                probs = tflite_mod.LiteRTRunner(path).predict(rgb)
                row = {"accuracy": float(np.mean(probs.argmax(1) == y_test)),
                       "agreement": float(np.mean(probs.argmax(1) == keras_probs.argmax(1))), "convert_s": convert_s}
                rows.setdefault(str(n), []).append(row)
                print(f"calibration {len(rep) - 1:5d} images (seed {seed}): int8 accuracy {100 * row['accuracy']:.2f}%, "
                      f"agreement {100 * row['agreement']:.2f}%, converted in {convert_s:.1f} s", flush=True)
        keras_acc = float(np.mean(keras_probs.argmax(1) == y_test))

        def stat(key: str, fn) -> dict[str, float]:
            return {n: round(float(fn([r[key] for r in rs])), 6) for n, rs in rows.items()}

        result = {
            "calibration_split": "train",
            "train_images_available": int(len(x_train)),
            "sizes": sizes,
            "used_images": used,
            "seeds": args.seeds,
            "range_pin_images": 1,
            "int8_accuracy": stat("accuracy", np.mean),
            "int8_accuracy_min": stat("accuracy", np.min),
            "int8_accuracy_max": stat("accuracy", np.max),
            "agreement": stat("agreement", np.mean),
            "keras_accuracy": round(keras_acc, 6),
            "test_images": int(len(y_test)),
            "convert_seconds": stat("convert_s", np.mean),
            "model": model.name,
            "run_dir": str(args.run_dir) if args.run_dir else "quick Fashion-MNIST run (trained here)",
            "cpu_count": os.cpu_count(),
            "machine": describe(),
        }
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
