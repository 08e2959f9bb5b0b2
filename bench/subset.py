"""What the benchmarks that time a pipeline's model on a subset of its data share (no TensorFlow
import here: bench/onednn.py's parent process must not load it)."""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def add_subset_args(parser: argparse.ArgumentParser) -> None:
    """PIPELINE, --images, --epochs, --rounds and --synthetic."""
    parser.add_argument("pipeline", nargs="?", default=str(ROOT / "pipelines" / "fashion_mnist.toml"))
    parser.add_argument("--images", type=int, default=12800, help="training images per epoch (a stratified subset)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs, after one warm-up epoch")
    parser.add_argument("--rounds", type=int, default=2, help="alternate the settings this many times; keep each one's best")
    parser.add_argument("--synthetic", action="store_true", help="random 28x28x1 images instead of the pipeline's data")


def subset_overrides(images: int, epochs: int) -> list[str]:
    """Config overrides for timing: ``images`` training images, no validation split, 1 + ``epochs``
    epochs (the first is the warm-up) without early stopping, TensorBoard or export."""
    return [
        f"train.epochs={1 + epochs}",
        "train.tensorboard=false",
        "train.early_stopping.enabled=false",
        "data.val_fraction=0.0",
        f"data.train_subset={images}",
        "export.enabled=false",
    ]
