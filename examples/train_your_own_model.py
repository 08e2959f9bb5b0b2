"""Your own Keras functional model and tf.data pipeline, trained with tfcnn's tape engine
(L2 + early stopping + checkpoints), then exported and verified.

    python examples/train_your_own_model.py --out /tmp/tfcnn-example
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras
import tensorflow as tf

import tfcnn
from tfcnn.config import DataConfig
from tfcnn.data import load_data


def build_model() -> keras.Model:
    """A small functional CNN: raw 0..255 pixels in, logits out."""
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    for filters in (32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        # momentum 0.9 rather than Keras' 0.99: with a few hundred steps the 0.99 moving averages
        # are still far from the batch statistics, and inference-mode accuracy collapses to chance.
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10)(x)  # logits
    return keras.Model(inputs, outputs, name="own_cnn")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("export"))
    p.add_argument("--train", type=int, default=10000, help="Fashion-MNIST training images to use")
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=8)
    args = p.parse_args()
    tfcnn.setup_logging()

    data = load_data(DataConfig(source="fashion_mnist", train_subset=args.train, test_subset=args.test, val_fraction=0.1))
    (x, y), (x_val, y_val), (x_test, y_test) = data.arrays["train"], data.arrays["val"], data.arrays["test"]
    train_ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0).batch(64).prefetch(tf.data.AUTOTUNE)
    val_ds = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(256)

    keras.utils.set_random_seed(0)
    result = tfcnn.train_model(
        build_model(),
        train_ds,
        val_ds,
        epochs=args.epochs,
        optimizer="adam",
        learning_rate=3e-3,
        schedule="cosine",
        l2=1e-4,  # + 1e-4 * sum(w^2) over every kernel
        early_stopping={"monitor": "val_accuracy", "patience": 2, "restore_best": True},
        checkpoint_dir=args.out / "checkpoints",  # run it again and it resumes
    )
    print(f"trained {result.epochs_run} epochs (best {result.best_epoch}, {result.stop_reason})")

    version_dir = tfcnn.export_model(
        result.model,
        labels=data.info.class_names,
        test=(x_test, y_test),
        representative=x[:300],
        out=args.out,
        name="own_cnn",
        formats=["savedmodel", "tflite_float32", "tflite_int8", "onnx"],
    )
    print(version_dir)


if __name__ == "__main__":
    main()
