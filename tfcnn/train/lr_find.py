"""The learning-rate range test (``tfcnn lr-find PIPELINE``): one short run with a growing rate.

Leslie Smith's test, as fastai popularised it: train the pipeline's model from its initial
weights for ``steps`` batches while the learning rate grows geometrically from ``start_lr`` to
``end_lr``, record the loss of each step, and stop once the smoothed loss exceeds ``diverge``
times its best (or goes non-finite). The suggestion is the rate where the smoothed loss falls
fastest per decade of learning rate, searched before the minimum; the minimum's rate (usually
about 10x too high to train with) is reported beside it.

It trains with the pipeline's own data pipeline (augmentation included), model, task loss and
optimizer (without its schedule: the test is the schedule), in a compiled step of its own, and
never touches the run's checkpoints, config.json or model.keras: the LR test says what to
write in the pipeline file, then ``tfcnn run`` trains.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfcnn.config import PipelineConfig
from tfcnn.errors import ConfigError, TrainingError
from tfcnn.run import LRFind, Run
from tfcnn.util import log


def schedule(start_lr: float, end_lr: float, steps: int) -> np.ndarray:
    """The geometric ramp: start_lr * (end_lr / start_lr) ** (i / (steps - 1))."""
    return start_lr * (end_lr / start_lr) ** (np.arange(steps) / max(steps - 1, 1))


def smooth(losses: list[float], beta: float = 0.98) -> list[float]:
    """Bias-corrected exponential moving average (Adam's correction), so early steps are not
    pulled toward zero."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def suggest(lrs: np.ndarray, smoothed: list[float], skip: float = 0.1) -> tuple[float | None, float | None]:
    """(steepest-descent rate, rate at the minimum) of a smoothed curve; None when it never fell.

    The steepest point is the most negative d(loss)/d(log10 lr), looked for between the first
    ``skip`` fraction of the steps (noise while the average warms up) and the minimum; the slope
    is a central difference over about a tenth of the steps, so one noisy step cannot win.
    """
    if len(smoothed) < 5:
        return None, None
    y = np.asarray(smoothed, dtype=np.float64)
    low = int(np.argmin(y))
    first = max(int(skip * len(y)), 1)
    if low <= first:
        return None, float(lrs[low])
    x = np.log10(lrs[: len(y)])
    h = max(1, len(y) // 20)
    idx = np.arange(first, low)
    lo, hi = np.clip(idx - h, 0, len(y) - 1), np.clip(idx + h, 0, len(y) - 1)
    slope = (y[hi] - y[lo]) / (x[hi] - x[lo])
    steep = int(idx[int(np.argmin(slope))])
    return float(lrs[steep]), float(lrs[low])


def find_lr(
    cfg: PipelineConfig,
    run: Run,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    diverge: float = 4.0,
    beta: float | None = None,
) -> LRFind:
    """Run the range test on ``cfg``'s data and model; write ``run``'s LRFind record and return it.

    ``run`` is only written to (lr_find.json); its data bundle comes from ``cfg`` through the
    run's memo (:meth:`tfcnn.run.Run.use_config`), so no config.json is claimed. ``beta`` (the
    smoothing) defaults to a lag of about 5% of the steps: fastai's fixed 0.98 lags ~50 steps,
    half of a 100-step test, which moves the curve (and the suggestion) a decade to the right.
    """
    from tfcnn.data import bundle_for
    from tfcnn.models import build_model
    from tfcnn.tasks import get_task
    from tfcnn.train.optim import build_optimizer

    for name, v in (("start", start_lr), ("end", end_lr), ("diverge", diverge)):
        if not (math.isfinite(v) and v > 0):
            raise ConfigError(f"lr-find: --{name} must be a positive finite number, got {v}")
    if not start_lr < end_lr:
        raise ConfigError(f"lr-find: --start ({start_lr:g}) must be below --end ({end_lr:g})")
    if steps < 5:
        raise ConfigError(f"lr-find: --steps must be at least 5, got {steps}")

    if beta is None:
        beta = 1.0 - 1.0 / max(0.05 * steps, 1.5)
    keras.utils.set_random_seed(cfg.train.seed)
    run.use_config(cfg)
    bundle = bundle_for(run)
    info = bundle.info
    task = get_task(cfg.task, cfg, run)
    model = build_model(cfg.model, info.input_shape, info.num_classes, info.mean, info.std)
    lrs = schedule(start_lr, end_lr, steps)
    optimizer = build_optimizer(cfg.train, float(lrs[0]), clipnorm=True)
    train = task.feed(bundle.train, cfg, training=True)  # what the tape engine trains on, mixing included
    loss_fn = task.loss_fn(info.num_classes, float(cfg.train.label_smoothing))  # the tape engine's loss

    @tf.function(reduce_retracing=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = tf.reduce_mean(loss_fn(y, out))
            total = loss + (tf.add_n(model.losses) if model.losses else 0.0)
        grads = tape.gradient(total, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    log.info("lr-find: %s, %s, lr %.1e -> %.1e over up to %d steps of %d images",
             cfg.model.name, cfg.train.optimizer, start_lr, end_lr, steps, cfg.data.batch_size)
    started = time.perf_counter()
    losses: list[float] = []
    raw: list[float | None] = []
    stopped, best = "completed", math.inf
    batches = iter(train.repeat())
    for i, lr in enumerate(lrs):
        optimizer.learning_rate = float(lr)
        x, y = next(batches)
        value = float(step(x, y))
        if not math.isfinite(value):
            raw.append(None)
            stopped = "non-finite"
            break
        raw.append(value)
        losses.append(value)
        smoothed = smooth(losses, beta)
        best = min(best, smoothed[-1])
        if i >= 10 and smoothed[-1] > diverge * best:
            stopped = "diverged"
            break
        if (i + 1) % max(steps // 10, 1) == 0:
            log.info("lr-find: step %d/%d, lr %.2e, loss %.4f", i + 1, steps, lr, smoothed[-1])
    if len(losses) < 5:
        raise TrainingError(
            f"lr-find: the loss was non-finite after {len(losses)} steps at lr {lrs[len(raw) - 1]:.2e}; "
            "lower --start (the model or data may be broken at any rate)"
        )
    smoothed = smooth(losses, beta)
    steep, low = suggest(lrs, smoothed)
    record = LRFind(
        start_lr=start_lr, end_lr=end_lr, steps=steps, lr=[float(v) for v in lrs[: len(raw)]],
        loss=raw, smoothed=smoothed + [None] * (len(raw) - len(smoothed)), suggested_lr=steep, min_loss_lr=low,
        stopped=stopped, model=cfg.model.name, optimizer=cfg.train.optimizer, batch_size=cfg.data.batch_size,
        seconds=round(time.perf_counter() - started, 2),
    )
    run.write(record)
    if steep is None:
        log.warning("lr-find: the loss never fell steadily between %.1e and %.1e; try a lower --start or more --steps",
                    start_lr, end_lr)
    else:
        log.info("lr-find: suggested learning_rate %.2e (steepest descent; the minimum was at %.2e), %s after %d steps",
                 steep, low, stopped, len(raw))
    return record


def lr_find_dir(cfg: PipelineConfig, out: Path | None) -> Path:
    """Where `tfcnn lr-find` writes: --out, else the run directory `tfcnn run` would use."""
    if out is not None:
        return Path(out)
    return Path(cfg.out_dir) if cfg.out_dir else Path("runs") / cfg.name
