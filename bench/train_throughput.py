"""Training throughput: tfcnn's tape engine vs model.fit vs the course's eager GradientTape loop.

All three train the same model (seed_cnn, L2 1e-4, batch 64) on the same uint8 tf.data
pipeline (Fashion-MNIST from /usr/share/datasets/fashion-mnist, or --synthetic images) in ONE
process, so they share the machine's state. The engines run through ``tfcnn.train.train``
exactly as a pipeline would (epoch 1 is the warm-up: tracing, cache fill; the later epochs are
timed from their epoch hooks); the course's loop (shared/seeds/000, lines 628-724: a Python
``for`` over batches, ``loss.numpy()`` every step, no tf.function) runs --eager-steps after a
short warm-up.

A fourth variant, ``plain_fit``, is model.fit as the course writes it (compile defaults, so
steps_per_execution=1, no callbacks), next to tfcnn's fit engine. A fifth, ``torch``, is the
course's PyTorch loop (shared/seeds/000, lines 843-930: the same two-conv CNN as seed_cnn, Adam
1e-3 with weight_decay 1e-4, batch 64, a shuffled DataLoader over the same uint8 images scaled to
[0, 1], ``loss.item()`` every step) when ``torch`` is importable (``pip install '.[bench]'``
pins the CPU wheel); it uses torch's default intra-op threads (all cores), as the course's does.
A sixth, ``tape_bf16``, is the tape engine with ``train.mixed_precision = true`` (Keras'
mixed_bfloat16 policy on a CPU: bfloat16 compute, float32 variables and logits); it runs by
default where the CPU has bfloat16 instructions (AVX512-BF16 or AMX), where oneDNN can use them.

The variants alternate for --rounds rounds and each keeps its best round. Prints images/s for
each (median over its timed windows) and images per CPU-second of this process (steadier on a
shared machine, where other people's load stretches wall time but not CPU time), the machine,
and a final JSON line:
{"tape_ips":..,"fit_ips":..,"eager_ips":..,"tape_vs_fit":..,"tape_vs_eager":.., "..._cpu": ..}
Numbers on a shared machine are noisy; compare ratios from one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu, describe  # noqa: E402  (bench/machine.py, beside this script)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfcnn.config import from_dict  # noqa: E402
from tfcnn.models import build_model  # noqa: E402
from timing import EpochTimer, bundle_for, train_timed  # noqa: E402  (bench/timing.py)

FASHION = Path(os.environ.get("TFCNN_DATA_DIR", "/usr/share/datasets/fashion-mnist"))


def rates(images: int, wall: list[float], cpu: list[float]) -> dict[str, float]:
    """images/s over the timed windows: median wall rate, and images per CPU-second.

    On a shared machine wall time swings with other people's load; CPU time (all threads of
    this process) measures the work an engine does per image and is far steadier.
    """
    return {
        "ips": float(np.median([images / w for w in wall])),
        "ips_best": float(max(images / w for w in wall)),
        "ips_cpu": float(images * len(cpu) / sum(cpu)),
    }


def make_config(args: argparse.Namespace, engine: str, mixed_precision: bool = False):
    return from_dict(
        {
            "name": f"bench-{engine}",
            "data": {
                "source": "fashion_mnist",  # --synthetic builds its bundle from arrays instead
                "batch_size": args.batch,
                "val_fraction": 0.0,
                "train_subset": args.batch * args.steps,
                "seed": 0,
            },
            "model": {"name": "seed_cnn", "l2": 1e-4},
            "train": {
                "engine": engine,
                "epochs": 1 + args.epochs,
                "steps_per_execution": args.steps_per_execution,
                "jit_compile": args.jit,
                "tensorboard": False,
                "gradient_norms": args.gradient_norms,
                "mixed_precision": mixed_precision,
                "early_stopping": {"enabled": False},
            },
            "export": {"enabled": False},
        }
    )


def bench_engine(args, engine: str, synthetic: bool, mixed_precision: bool = False) -> dict[str, float]:
    cfg = make_config(args, engine, mixed_precision)
    bundle = bundle_for(cfg, synthetic)
    timer = train_timed(cfg, bundle)
    return rates(bundle.info.num_train, timer.wall[1:], timer.cpu[1:])


def bench_plain_fit(args, synthetic: bool) -> dict[str, float]:
    """model.fit as the course writes it: compile with defaults (steps_per_execution=1), no callbacks."""
    cfg = make_config(args, "fit")
    bundle = bundle_for(cfg, synthetic)
    info = bundle.info
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model, info.input_shape, info.num_classes, info.mean, info.std)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    timer = EpochTimer()
    model.fit(bundle.train, epochs=1 + args.epochs, shuffle=False, verbose=0, callbacks=[timer])
    return rates(bundle.info.num_train, timer.wall[1:], timer.cpu[1:])


def bench_eager(args, synthetic: bool) -> dict[str, float]:
    """The course's custom loop, verbatim in spirit: eager steps, a host sync per step."""
    cfg = make_config(args, "tape")
    bundle = bundle_for(cfg, synthetic)
    info = bundle.info
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model, info.input_shape, info.num_classes, info.mean, info.std)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.Adam(learning_rate=1e-3)
    batches = bundle.train.repeat()
    window = max(args.eager_steps // 4, 1)  # timed in 4 windows, like the engines' epochs
    total = args.eager_warmup + 4 * window
    wall: list[float] = []
    cpu: list[float] = []
    epoch_loss = 0.0
    t0 = c0 = 0.0
    for i, (batch_x, batch_y) in enumerate(batches.take(total)):
        if i >= args.eager_warmup and (i - args.eager_warmup) % window == 0:
            if i > args.eager_warmup:
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            t0, c0 = time.perf_counter(), time.process_time()
        with tf.GradientTape() as tape:
            logits = model(tf.cast(batch_x, tf.float32), training=True)
            loss = loss_fn(batch_y, logits)
            loss += sum(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        epoch_loss += loss.numpy()
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
    return rates(window * args.batch, wall, cpu)


def bench_torch(args, synthetic: bool) -> dict[str, float]:
    """The course's PyTorch loop on the same training images (NCHW float in [0, 1])."""
    import torch
    from torch import nn

    cfg = make_config(args, "tape")
    bundle = bundle_for(cfg, synthetic)
    x, y = bundle.arrays["train"]
    torch.manual_seed(0)
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float() / 255.0
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=args.batch, shuffle=True)
    classes = bundle.info.num_classes
    channels, h, w = images.shape[1:]
    model = nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), 128), nn.ReLU(), nn.Linear(128, classes),
    )
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    wall: list[float] = []
    cpu: list[float] = []
    for epoch in range(1 + args.epochs):  # epoch 0 warms up, like the engines' first epoch
        t0, c0 = time.perf_counter(), time.process_time()
        model.train()
        epoch_loss = 0.0
        for batch_x, batch_y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(batch_x), batch_y)
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item()
        if epoch:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return rates(len(labels), wall, cpu)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def has_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (where mixed_bfloat16 can pay off)."""
    return bool({"avx512_bf16", "amx_tile"} & set(cpu()[1]))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150, help="steps per epoch (train_subset = batch * steps)")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per engine, after one warm-up epoch")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--eager-steps", type=int, default=60, help="timed eager steps (4 windows)")
    ap.add_argument("--eager-warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="alternate the engines this many times; keep each one's best")
    ap.add_argument("--steps-per-execution", type=int, default=16)
    ap.add_argument("--jit", action="store_true", help="XLA-compile the train steps (both engines)")
    ap.add_argument(
        "--no-gradient-norms", dest="gradient_norms", action="store_false", help="turn off the tape engine's per-layer norms"
    )
    ap.add_argument("--synthetic", action="store_true", help="random images instead of Fashion-MNIST")
    ap.add_argument(
        "--only", choices=["tape", "fit", "plain_fit", "eager", "torch", "tape_bf16"], action="append", help="run only these (repeatable)"
    )
    args = ap.parse_args(argv)

    synthetic = args.synthetic or not (FASHION / "train-images-idx3-ubyte.gz").exists()
    which = args.only or ["tape", "fit", "plain_fit", "eager", *(["torch"] if torch_available() else []),
                          *(["tape_bf16"] if has_bf16() else [])]
    if "torch" in which and not torch_available():
        print("train_throughput: error: --only torch needs PyTorch (pip install '.[bench]')", file=sys.stderr)
        sys.exit(2)
    if "torch" not in which:
        print("torch is not installed: the PyTorch variant is skipped (pip install '.[bench]')", flush=True)
    print(f"machine: {describe()}", flush=True)
    print(
        f"data: {'synthetic 28x28x1' if synthetic else FASHION}, seed_cnn l2=1e-4, batch {args.batch}, "
        f"{args.steps} steps/epoch x {args.epochs} timed epochs (+1 warm-up); eager {args.eager_steps} steps",
        flush=True,
    )
    got: dict[str, dict[str, float]] = {}
    for round_ in range(1, args.rounds + 1):
        for name in which:
            t = time.perf_counter()
            if name == "eager":
                r = bench_eager(args, synthetic)
            elif name == "torch":
                r = bench_torch(args, synthetic)
            elif name == "tape_bf16":
                r = bench_engine(args, "tape", synthetic, mixed_precision=True)
            elif name == "plain_fit":
                r = bench_plain_fit(args, synthetic)
            else:
                r = bench_engine(args, name, synthetic)
            print(
                f"round {round_} {name:>9}: {r['ips']:8.1f} images/s (median window, best {r['ips_best']:.1f}); "
                f"{r['ips_cpu']:8.1f} images per CPU-second   ({time.perf_counter() - t:.1f} s)",
                flush=True,
            )
            # Other people's load only ever slows a run down: keep each engine's best round.
            best = got.setdefault(name, r)
            got[name] = {k: max(best[k], r[k]) for k in r}

    def val(name: str, key: str = "ips") -> float | None:
        return round(got[name][key], 1) if name in got else None

    def ratio(a: str, b: str, key: str = "ips") -> float | None:
        return round(got[a][key] / got[b][key], 3) if a in got and b in got else None

    result = {
        "tape_ips": val("tape"),
        "fit_ips": val("fit"),
        "eager_ips": val("eager"),
        "tape_vs_fit": ratio("tape", "fit"),
        "tape_vs_eager": ratio("tape", "eager"),
        "plain_fit_ips": val("plain_fit"),
        "tape_vs_plain_fit": ratio("tape", "plain_fit"),
        "tape_ips_cpu": val("tape", "ips_cpu"),
        "fit_ips_cpu": val("fit", "ips_cpu"),
        "eager_ips_cpu": val("eager", "ips_cpu"),
        "tape_vs_fit_cpu": ratio("tape", "fit", "ips_cpu"),
        "tape_vs_eager_cpu": ratio("tape", "eager", "ips_cpu"),
        "tape_vs_plain_fit_cpu": ratio("tape", "plain_fit", "ips_cpu"),
        "torch_ips": val("torch"),
        "torch_ips_cpu": val("torch", "ips_cpu"),
        "tape_vs_torch": ratio("tape", "torch"),
        "tape_vs_torch_cpu": ratio("tape", "torch", "ips_cpu"),
        "tape_bf16_ips": val("tape_bf16"),
        "tape_bf16_ips_cpu": val("tape_bf16", "ips_cpu"),
        "bf16_vs_tape": ratio("tape_bf16", "tape"),
        "bf16_vs_tape_cpu": ratio("tape_bf16", "tape", "ips_cpu"),
        "machine": describe(),
        "synthetic": synthetic,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
