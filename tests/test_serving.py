"""TF Serving's view of an export, checked with its own protos and restore path: models.config
parsed as ModelServerConfig, the v1 loader in a fresh session, Predict method names, the warm-up
file, and PredictRequests answered like the server would."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tfcnn.errors import VerificationError


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> Path:
    from tfcnn.export import export_run

    base = tmp_path_factory.mktemp("serving")
    shutil.copytree(tiny_run, base / "run")
    return export_run(base / "run", formats=["savedmodel"], root=base / "export", serving_base="/models")


def test_models_config_is_a_model_server_config_with_the_serving_base(exported, tiny_run, tmp_path):
    from tfcnn.export import export_run
    from tfcnn.export.serving import read_models_config

    parsed = read_models_config(exported.parent / "models.config")
    (model,) = parsed.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("tiny", "/models/tiny", "tensorflow")
    assert list(model.model_version_policy.specific.versions) == [1]
    shutil.copytree(tiny_run, tmp_path / "run")
    default = export_run(tmp_path / "run", formats=["savedmodel"], root=tmp_path / "export")
    (model,) = read_models_config(default.parent / "models.config").model_config_list.config
    assert model.base_path == str(default.parent.resolve())  # default: this repository's absolute path


def test_warmup_file_holds_one_real_request_per_signature(exported):
    import tensorflow as tf

    from tfcnn.export.serving import read_warmup

    requests = read_warmup(exported)
    assert [r.model_spec.signature_name for r in requests] == ["serving_default", "serving_bytes"]
    image = tf.make_ndarray(requests[0].inputs["image"])
    assert image.shape == (1, 16, 16, 3) and image.dtype == np.uint8 and image.std() > 0  # a real test image, not zeros
    assert tf.make_ndarray(requests[1].inputs["image_bytes"])[0].startswith(b"\x89PNG")


def test_the_v1_loader_answers_predict_requests_like_keras(exported, tiny_run, npz_path):
    import keras
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from tfcnn.export.serving import PREDICT_METHOD, run_v1

    x = np.load(npz_path)["x_test"][:5]
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "tiny"
    req.model_spec.signature_name = "serving_default"
    req.inputs["image"].CopyFrom(tf.make_tensor_proto(np.repeat(x, 3, axis=-1)))
    methods, (out,) = run_v1(exported, [req])
    assert methods == {"serving_default": PREDICT_METHOD, "serving_bytes": PREDICT_METHOD}
    model = keras.models.load_model(tiny_run / "model.keras", compile=False)
    logits = model.predict(x.astype(np.float32), verbose=0)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(out["probabilities"], probs, atol=1e-5)
    assert [v.decode() for v in out["label"]] == [["class_0", "class_1", "class_2"][i] for i in probs.argmax(1)]


def test_static_check_passes_and_catches_what_the_server_would_trip_over(exported, tmp_path):
    from tfcnn.export import verify_version
    from tfcnn.export.serving import WARMUP_FILE, check_version

    assert check_version(exported, "tiny", 16, 16) == []
    broken = tmp_path / "tiny" / "1"
    shutil.copytree(exported.parent, tmp_path / "tiny")
    (broken.parent / "models.config").write_text("model_config_list { config { name: tiny ")  # truncated
    assert any("TF Serving would not read it" in p for p in check_version(broken, "tiny", 16, 16))
    (broken / WARMUP_FILE).unlink()
    problems = check_version(broken, "tiny", 16, 16)
    assert len(problems) == 1 and f"{WARMUP_FILE}: unreadable" in problems[0]
    with pytest.raises(VerificationError):
        verify_version(broken, samples=10)


@pytest.mark.parametrize("tamper, problem", [
    ("extra", "not listed in model_card.json (added after export)"),
    ("card", "model_card.json was edited after tfcnn wrote it"),
    ("no_hash", "model_card.json.sha256 is missing"),
])
def test_tamper_evidence_covers_every_file_and_the_card_itself(exported, tmp_path, tamper, problem):
    """The card lists every file of the version; its own hash sits beside it (sha256sum's format)."""
    import hashlib
    import json

    from tfcnn.export import verify_version
    from tfcnn.export.card import check_integrity

    shutil.copytree(exported.parent, tmp_path / "tiny")
    vd = tmp_path / "tiny" / "1"
    card = json.loads((vd / "model_card.json").read_text())
    digest, name = (vd / "model_card.json.sha256").read_text().split()
    assert name == "model_card.json" and digest == hashlib.sha256((vd / "model_card.json").read_bytes()).hexdigest()
    assert check_integrity(vd, card["artifacts"]) == []
    if tamper == "extra":
        (vd / "extra.bin").write_bytes(b"\0" * 10)
    elif tamper == "card":
        card["description"] = "something else"
        (vd / "model_card.json").write_text(json.dumps(card))
    else:
        (vd / "model_card.json.sha256").unlink()
    (found,) = check_integrity(vd, card["artifacts"])
    assert problem in found["problem"] and found["file"] == {"extra": "extra.bin"}.get(tamper, "model_card.json")
    with pytest.raises(VerificationError, match="savedmodel"):
        verify_version(vd, samples=10)
