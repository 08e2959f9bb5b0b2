"""tfcnn.export_model / `tfcnn export MODEL.keras`: a model trained outside tfcnn, exported and
verified with the same contract, card and thresholds as a tfcnn run (issue 12)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fakedata import synthetic_arrays
from tfcnn.cli import main
from tfcnn.errors import ExportError

FORMATS = ["savedmodel", "tflite_float32", "tflite_int8", "onnx"]


@pytest.fixture(scope="module")
def data():
    return synthetic_arrays(300, seed=1), synthetic_arrays(90, seed=2)


@pytest.fixture(scope="module")
def softmax_model(data):
    """A plain model.fit Sequential: rescales to [0, 1] itself, ends in a softmax."""
    import keras

    (x, y), _ = data
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ],
        name="plain_fit",
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def exported(softmax_model, data, tmp_path_factory):
    import tfcnn

    (x, _), (xt, yt) = data
    root = tmp_path_factory.mktemp("ext_repo")
    vd = tfcnn.export_model(
        softmax_model, labels=["a", "b", "c"], test=(xt, yt), representative=x[:100], out=root, name="plain",
        outputs="probabilities", formats=FORMATS, latency_runs=3,
    )
    return vd


def test_fit_trained_model_exports_and_verifies_with_the_default_thresholds(exported, softmax_model, data):
    vd = exported
    report = json.loads((vd / "verification.json").read_text())
    assert report["passed"] is True and set(report["formats"]) == set(FORMATS)
    for fmt in FORMATS:
        assert report["formats"][fmt]["thresholds"], fmt  # the formats' own default limits, none loosened
    assert report["formats"]["savedmodel"]["max_abs_diff"] <= 1e-5 and report["formats"]["onnx"]["agreement"] == 1.0
    # The exported probabilities are the model's own (its softmax, not a re-normalised copy).
    from tfcnn.export import predict_savedmodel

    _, (xt, _) = data
    sm = predict_savedmodel(vd, np.repeat(xt[:10], 3, axis=-1))["probabilities"]
    assert np.abs(sm - softmax_model.predict(xt[:10].astype("float32"), verbose=0)).max() < 1e-5
    card = json.loads((vd / "model_card.json").read_text())
    assert card["training"]["engine"] == "external" and "outside tfcnn" in card["description"]
    contract = json.loads((vd / "contract.json").read_text())
    assert contract["input"]["normalization"]["mean"] == [0.0] and contract["labels"]["names"] == ["a", "b", "c"]
    assert (vd.parent / "reference-1" / "model.keras").is_file()


def test_an_external_export_can_be_verified_again_later(exported, capsys):
    code = main(["verify", str(exported)])
    assert code == 0, capsys.readouterr().err
    code = main(["benchmark", str(exported), "--runs", "2"])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)["artifacts"]["onnx"]["latency_ms_median"] > 0


def test_cli_exports_a_keras_file_with_labels_and_data(softmax_model, data, tmp_path, capsys):
    (x, y), (xt, yt) = data
    softmax_model.save(tmp_path / "mine.keras")
    # The archive names its classes in another order than the model: export maps them onto labels.txt.
    names = np.asarray(["c", "a", "b"])
    order = np.asarray([1, 2, 0])  # model class k is named labels[k]; the archive calls it names[order[k]]
    np.savez(tmp_path / "d.npz", x_train=x, y_train=order[y], x_test=xt, y_test=order[yt], class_names=names)
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    code = main([
        "export", str(tmp_path / "mine.keras"), "--labels", str(tmp_path / "labels.txt"), "--data", f"numpy:{tmp_path / 'd.npz'}",
        "--outputs", "probabilities", "--formats", "savedmodel", "onnx", "--root", str(tmp_path / "repo"),
    ])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    vd = tmp_path / "repo" / "mine" / "1"
    report = json.loads((vd / "verification.json").read_text())
    assert report["passed"] and report["keras"]["accuracy"] > 0.9  # labels mapped right, or accuracy would be ~0


def test_scale_normalization_runs_in_graph(data, tmp_path):
    """A model that expects [0, 1] inputs: normalization={'scale': 1/255} puts the scaling in the graph."""
    import keras

    import tfcnn

    (x, y), (xt, yt) = data
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x / 255.0, y, epochs=10, verbose=0)
    vd = tfcnn.export_model(model, labels=["a", "b", "c"], test=(xt, yt), out=tmp_path, name="scaled",
                            normalization={"scale": 1 / 255}, formats=["savedmodel"], latency_runs=2)
    norm = json.loads((vd / "contract.json").read_text())["input"]["normalization"]
    assert norm["mean"] == [0.0] and norm["std"] == [pytest.approx(255.0)]
    report = json.loads((vd / "verification.json").read_text())
    keras_acc = float(np.mean(model.predict(xt / 255.0, verbose=0).argmax(1) == yt))
    assert report["keras"]["accuracy"] == pytest.approx(keras_acc, abs=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"labels": ["a", "b"]}, "2 labels given but the model outputs 3 classes"),
        ({"test": (np.zeros((4, 8, 8, 1), np.uint8), np.zeros(4, int))}, "images have shape (4, 8, 8, 1), the model takes (N, 16, 16, 1)"),
        ({"test": (np.full((4, 16, 16, 1), 0.5, np.float32), np.zeros(4, int))}, "give raw pixels 0..255"),
        ({"test": (np.zeros((4, 16, 16, 1), np.uint8), np.zeros(4, float))}, "labels must be 4 integer class ids"),
        ({"test": (np.zeros((4, 16, 16, 1), np.uint8), np.full(4, 7))}, "must be class ids 0..2"),
        ({"representative": np.zeros((4, 16, 16, 3), np.uint8)}, "representative: images have shape (4, 16, 16, 3)"),
        ({"formats": ["tflite_int9"]}, "did you mean 'tflite_int8'"),
        ({"outputs": "softmax"}, "outputs = 'softmax'"),
        ({"normalization": {"std": 0}}, "std > 0"),
        ({"outputs": "logits"}, "every row of the model's outputs is a probability distribution"),
    ],
)
def test_bad_input_is_one_error_line(softmax_model, data, tmp_path, kwargs, message):
    import tfcnn

    _, (xt, yt) = data
    args = {"labels": ["a", "b", "c"], "test": (xt, yt), "out": tmp_path, "name": "bad", "outputs": "probabilities", **kwargs}
    with pytest.raises(ExportError) as err:
        tfcnn.export_model(softmax_model, **args)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_wrong_output_shape_and_unregistered_custom_layer(tmp_path, data):
    import keras

    import tfcnn
    from tfcnn.export.external import load_keras_file

    _, (xt, yt) = data
    dense = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Dense(3)])  # (batch, 16, 16, 3) out
    with pytest.raises(ExportError, match=r"model output shape is \(None, 16, 16, 3\); export needs \(batch, classes\)"):
        tfcnn.export_model(dense, labels=["a", "b", "c"], test=(xt, yt), out=tmp_path)

    class Doubler(keras.layers.Layer):  # not registered: cannot be deserialised in another process
        def call(self, x):
            return 2 * x

    model = keras.Sequential([keras.Input((16, 16, 1)), Doubler(), keras.layers.Flatten(), keras.layers.Dense(3)])
    model.save(tmp_path / "custom.keras")
    with pytest.raises(ExportError, match=r"custom class .*Doubler.* --import MODULE"):
        load_keras_file(tmp_path / "custom.keras")


def test_a_model_built_for_any_size_exports_at_input_size(data, tmp_path):
    import keras

    import tfcnn

    (x, y), (xt, yt) = data
    keras.utils.set_random_seed(2)
    inp = keras.Input((None, None, 1))
    z = keras.layers.Rescaling(1 / 255.0)(inp)
    z = keras.layers.Conv2D(8, 3, activation="relu")(z)
    z = keras.layers.GlobalMaxPooling2D()(z)
    model = keras.Model(inp, keras.layers.Dense(3)(z))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=5, verbose=0)
    with pytest.raises(ExportError, match=r"pass input_size=\(height, width\)"):
        tfcnn.export_model(model, labels=["a", "b", "c"], test=(xt, yt), out=tmp_path)
    with pytest.raises(ExportError, match="input_size/channels ask for"):
        tfcnn.export_model(model, labels=["a", "b", "c"], test=(xt, yt), out=tmp_path, input_size=(16, 16), channels=3)
    vd = tfcnn.export_model(model, labels=["a", "b", "c"], test=(xt, yt), out=tmp_path, name="anysize",
                            input_size=(16, 16), formats=["savedmodel", "onnx"], latency_runs=2)
    contract = json.loads((vd / "contract.json").read_text())
    assert (contract["input"]["height"], contract["input"]["width"]) == (16, 16)
    assert json.loads((vd / "verification.json").read_text())["passed"]


def test_logits_model_exported_as_probabilities_is_refused_before_writing(data, tmp_path):
    """Every format would reproduce the same wrong scores and verify perfectly: only the scores show it."""
    import keras

    import tfcnn

    _, (xt, yt) = data
    inputs = keras.Input(xt.shape[1:])
    h = keras.layers.Rescaling(1 / 255)(inputs)
    logits = keras.layers.Dense(3)(keras.layers.Flatten()(h))
    model = keras.Model(inputs, logits)
    with pytest.raises(ExportError, match=r"outputs = 'probabilities' .* but the model's outputs are not probabilities"):
        tfcnn.export_model(model, labels=["a", "b", "c"], test=(xt, yt), out=tmp_path, name="m", outputs="probabilities")
    assert not (tmp_path / "m").exists()
