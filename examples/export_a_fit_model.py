"""Train a Keras model with plain `model.fit`, then export and verify it with tfcnn.

    python examples/export_a_fit_model.py --out /tmp/tfcnn-example

What tfcnn adds to a model it never trained: one input contract (RGB uint8 pixels in, the
model's normalization in-graph, softmax probabilities out) for a TF Serving SavedModel, four
TFLite variants, ONNX and CoreML, a model card with hashes, and a verification of every
artifact against the Keras model on your test images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras
import numpy as np

import tfcnn
from tfcnn.config import DataConfig
from tfcnn.data import load_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("export"))
    p.add_argument("--train", type=int, default=6000, help="Fashion-MNIST training images to use")
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=4)
    args = p.parse_args()
    tfcnn.setup_logging()

    # Any uint8 images will do; here a Fashion-MNIST subset (the Debian package, $TFCNN_DATA_DIR or TFDS).
    data = load_data(DataConfig(source="fashion_mnist", train_subset=args.train, test_subset=args.test, val_fraction=0.0))
    (x, y), (x_test, y_test) = data.arrays["train"], data.arrays["test"]

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Rescaling(1 / 255.0),  # the model takes raw 0..255 pixels
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="fit_cnn",
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=args.epochs, batch_size=64, verbose=2)
    print(f"Keras test accuracy: {model.evaluate(x_test, y_test, verbose=0)[1]:.4f}")

    version_dir = tfcnn.export_model(
        model,
        labels=data.info.class_names,
        test=(x_test, y_test),  # what verify compares every artifact on
        representative=x[:300],  # calibrates the full-integer int8 model
        outputs="probabilities",  # the model ends in a softmax
        out=args.out,
        name="fit_cnn",
        formats=["savedmodel", "tflite_float32", "tflite_int8", "onnx"],
    )
    report = tfcnn.verify(version_dir)  # again, as a serving host would (raises if anything fails)
    for fmt, row in report["formats"].items():
        print(f"{fmt:16} accuracy {row['accuracy']:.4f}  agreement with Keras {row['agreement']:.4f}")
    print(version_dir)


if __name__ == "__main__":
    main()
