"""The evaluate stage: its numbers agree with sklearn computed independently, and it leaves every
file the figures and the report need; the figures (tfcnn.vis.figures) are drawn from those files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fakedata import synthetic_arrays
from tfcnn.evaluate import expected_calibration_error, reliability_bins
from tfcnn.run import Evaluation, Metrics, Run

NOISY = 9  # test labels flipped on purpose so there are (confident) mistakes to find


def _ece_by_loop(probs: np.ndarray, labels: np.ndarray, bins: int) -> float:
    """Textbook ECE written as plainly as possible, to check the vectorised one."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            total += sel.sum() / len(conf) * abs(correct[sel].mean() - conf[sel].mean())
    return total


def test_ece_perfectly_calibrated_is_near_zero():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 200_000)
    labels = (rng.uniform(0, 1, p.size) < p).astype(int)  # label 1 with probability exactly p
    probs = np.stack([1 - p, p], axis=1)
    assert expected_calibration_error(probs, labels) < 0.01


def test_ece_overconfident_is_large():
    rng = np.random.default_rng(1)
    n, k = 100_000, 10
    predicted = rng.integers(0, k, n)
    probs = np.full((n, k), 0.01 / (k - 1))
    probs[np.arange(n), predicted] = 0.99  # claims 99 %...
    right = rng.uniform(0, 1, n) < 0.7  # ...is right 70 % of the time
    labels = np.where(right, predicted, (predicted + 1 + rng.integers(0, k - 1, n)) % k)
    ece = expected_calibration_error(probs, labels)
    assert ece == pytest.approx(0.29, abs=0.01)
    bins = reliability_bins(probs, labels, 15)
    assert sum(bins["count"]) == n and bins["count"][-1] == n  # all in the top bin


@pytest.mark.parametrize("bins", [2, 10, 15])
def test_ece_matches_plain_loop(bins):
    rng = np.random.default_rng(bins)
    logits = rng.normal(size=(5000, 4)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 4, 5000)
    assert expected_calibration_error(probs, labels, bins) == pytest.approx(_ece_by_loop(probs, labels, bins), abs=1e-12)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A tape-engine tiny_cnn run (real training records, TensorBoard histograms), evaluated once."""
    from tfcnn import config as config_mod
    from tfcnn.data import load_data
    from tfcnn.evaluate import evaluate, evaluate_options
    from tfcnn.models import build_model
    from tfcnn.train import train

    root = tmp_path_factory.mktemp("evaluate")
    xtr, ytr = synthetic_arrays(240, seed=1)
    xte, yte = synthetic_arrays(90, seed=2)
    yte = yte.copy()
    yte[:NOISY] = (yte[:NOISY] + 1) % 3
    npz = root / "noisy.npz"
    np.savez(npz, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, class_names=np.array(["ring", "bar", "dot"]))
    cfg = config_mod.from_dict({
        "name": "eval",
        "data": {"source": f"numpy:{npz}", "batch_size": 32, "val_fraction": 0.2},
        "model": {"name": "tiny_cnn"},
        "train": {"engine": "tape", "epochs": 3, "learning_rate": 0.02, "histogram_freq": 1},
        "evaluate": {"top_k": 2, "confident_threshold": 0.6, "embedding_samples": 60, "gallery_size": 8,
                     "temperature_scaling": True},
    })
    run = Run.create(root / "run")
    run.save_config(cfg)
    bundle = load_data(cfg.data)
    info = bundle.info
    run.write(info)
    result = train(cfg, bundle, run, lambda: build_model(cfg.model, info.input_shape, info.num_classes, info.mean, info.std))
    out = evaluate(result.model, bundle, run, **evaluate_options(cfg.evaluate))
    return {"run_dir": run.root, "run": run, "result": out, "model": result.model, "bundle": bundle,
            "plots_after_evaluate": run.path("plots").exists()}


def _independent(evaluated):
    x, y = evaluated["bundle"].arrays["test"]
    logits = evaluated["model"].predict(x.astype("float32"), verbose=0).astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return probs / probs.sum(1, keepdims=True), y


def test_metrics_match_sklearn(evaluated):
    from sklearn import metrics as skm

    probs, y = _independent(evaluated)
    pred = probs.argmax(1)
    res = evaluated["result"]
    ev = json.loads((evaluated["run_dir"] / "evaluation.json").read_text())
    assert ev["num_errors"] >= NOISY - 2 and 0 < res["test_accuracy"] < 1  # the flipped labels are mistakes
    assert res["test_accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-6)
    assert res["test_loss"] == pytest.approx(skm.log_loss(y, probs, labels=[0, 1, 2]), rel=1e-4)
    assert res["top_k"] == 2
    assert res["top_k_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, probs, k=2, labels=[0, 1, 2]), abs=1e-6)
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=[0, 1, 2], zero_division=0)
    for i, row in enumerate(ev["per_class"]):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((p[i], r[i], f[i], s[i]), abs=1e-6)
    assert ev["averages"]["macro"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0), abs=1e-6)
    assert ev["averages"]["weighted"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted", zero_division=0), abs=1e-6)
    cm = np.array(ev["confusion_matrix"])
    assert (cm == skm.confusion_matrix(y, pred, labels=[0, 1, 2])).all()
    assert cm.sum() == len(y) == ev["num_test"]
    assert (cm.sum(1) == np.bincount(y, minlength=3)).all()
    assert res["ece"] == pytest.approx(_ece_by_loop(probs, y, 15), abs=1e-5)


def _pairwise_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney statistic: P(score of a positive > score of a negative), ties half."""
    pos, neg = scores[positive], scores[~positive]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def test_per_class_roc_auc_is_the_pairwise_ranking_statistic(evaluated):
    probs, y = _independent(evaluated)
    ev = json.loads((evaluated["run_dir"] / "evaluation.json").read_text())
    for k, row in enumerate(ev["per_class"]):
        assert row["roc_auc"] == pytest.approx(_pairwise_auc(probs[:, k], y == k), abs=1e-4)
        assert 0 < row["pr_auc"] <= 1
    macro = ev["averages"]["macro"]
    assert macro["roc_auc"] == pytest.approx(np.mean([r["roc_auc"] for r in ev["per_class"]]))


def test_per_class_auc_edge_cases():
    from tfcnn.evaluate.metrics import per_class_auc

    labels = np.array([0, 0, 1, 1])
    perfect = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.3, 0.7, 0.0], [0.1, 0.9, 0.0]])
    rows = per_class_auc(perfect, labels)
    assert rows[0] == {"roc_auc": 1.0, "pr_auc": 1.0} and rows[1] == {"roc_auc": 1.0, "pr_auc": 1.0}
    assert rows[2] == {"roc_auc": None, "pr_auc": None}  # no test image of class 2: no curve, not NaN
    constant = per_class_auc(np.full((4, 2), 0.5), labels)
    assert constant[0]["roc_auc"] == 0.5 and constant[0]["pr_auc"] == 0.5  # no ranking: chance level


FIGURES = ("confusion_matrix", "reliability", "reliability_scaled", "misclassified", "confident_mistakes", "embedding_pca",
           "embedding_tsne", "learning_curves", "gradient_norms", "weight_histograms")


def test_files_written(evaluated):
    rd: Path = evaluated["run_dir"]
    ev = json.loads((rd / "evaluation.json").read_text())
    probs, y = _independent(evaluated)
    with np.load(rd / "predictions.npz") as z:
        assert z["probs"].shape == (90, 3) and np.allclose(z["probs"].sum(1), 1, atol=1e-5)
        assert np.allclose(z["probs"], probs, atol=1e-4) and (z["labels"] == y).all()
    # Numbers only: the record lists its arrays files, and no figure was drawn.
    assert ev["files"] == {"predictions": "predictions.npz", "embedding": "embedding.npz"}
    assert not evaluated["plots_after_evaluate"]
    assert ev["unavailable"] == {}
    assert ev["schema"] == "tfcnn.evaluation/1" and ev["headline"]["test_accuracy"] == ev["test_accuracy"]
    record = Run(rd).read(Evaluation)  # the flat file reads back as the typed record
    assert record.details["per_class"] == ev["per_class"] and record.num_test == evaluated["result"]["num_test"]
    assert record.headline == pytest.approx({k: v for k, v in evaluated["result"].items() if k != "num_test"})
    mistakes = ev["confident_mistakes"]
    assert mistakes and all(m["prob"] > 0.6 and m["label"] != m["predicted"] for m in mistakes)
    assert [m["prob"] for m in mistakes] == sorted((m["prob"] for m in mistakes), reverse=True)
    with np.load(rd / "embedding.npz") as z:
        assert z["pca"].shape == (60, 2) and z["tsne"].shape == (60, 2)
        assert np.bincount(z["labels"], minlength=3).min() >= 19  # class-balanced sample
    assert ev["training"]["engine"] == "tape" and ev["training"]["best_epoch"] is not None


def test_vis_draws_every_figure_from_the_files(evaluated):
    """Everything this run can show is drawn: tape engine -> gradient norms, histogram_freq -> weight plots."""
    from tfcnn.vis.figures import PLOTS, render_figures

    rd: Path = evaluated["run_dir"]
    figures = render_figures(rd)
    assert set(PLOTS) == set(FIGURES)
    assert figures["unavailable"] == {}
    for key in FIGURES:
        path = rd / figures["files"][key]
        assert path.parent == rd / "plots", key
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100, key
            assert "Software" not in im.text  # matplotlib's chunk carries a URL; the report must not
    with Image.open(rd / figures["files"]["misclassified"]) as im:
        assert im.text["Title"].startswith("Misclassified test images (true / predicted)")


def test_evaluate_run_reloads_and_explains_missing_inputs(evaluated, tmp_path):
    """`tfcnn evaluate RUN_DIR` reproduces the numbers; without training records the figures are
    skipped with a reason (not an error), and metrics.json is refreshed, not replaced."""
    import shutil

    from tfcnn.evaluate import evaluate_run
    from tfcnn.vis.figures import render_figures

    rd = tmp_path / "copy"
    shutil.copytree(evaluated["run_dir"], rd, ignore=shutil.ignore_patterns("history.csv", "diagnostics.json", "tensorboard", "plots"))
    cfg = json.loads((rd / "config.json").read_text())
    cfg["evaluate"]["embedding_samples"] = 0
    (rd / "config.json").write_text(json.dumps(cfg))
    Run(rd).write(Metrics(engine="tape", scores={"test_accuracy": -1.0}))
    again = evaluate_run(rd)
    for key in ("test_loss", "test_accuracy", "top_k_accuracy", "ece"):
        assert again[key] == pytest.approx(evaluated["result"][key], abs=1e-5), key
    merged = json.loads((rd / "metrics.json").read_text())
    assert merged["engine"] == "tape" and merged["test_accuracy"] == pytest.approx(again["test_accuracy"])
    ev = json.loads((rd / "evaluation.json").read_text())
    assert "embedding" not in ev["files"] and not (rd / "embedding.npz").exists()  # the copied, older one is gone
    figures = render_figures(rd)
    for key in ("learning_curves", "gradient_norms", "weight_histograms", "embedding_pca", "embedding_tsne"):
        assert key in figures["unavailable"] and key not in figures["files"], key
    assert "embedding_samples = 0" in figures["unavailable"]["embedding_pca"]
    assert "diagnostics.json is missing" in figures["unavailable"]["gradient_norms"]
    assert (rd / "plots" / "confusion_matrix.png").is_file()
