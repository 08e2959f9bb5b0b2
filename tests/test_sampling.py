"""data.sampling = "balanced": the train split drawn with classes uniform, on a folder data set,
in both engines; the other splits and the epoch length unchanged; seeded."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_train import make_cfg, read_history, run
from tfcnn.config import from_dict
from tfcnn.data import load_data
from tfcnn.errors import ConfigError

COUNTS = {"common": 60, "rare": 6}  # 10:1


@pytest.fixture(scope="module")
def imbalanced_folder(tmp_path_factory) -> Path:
    """Two classes of distinct 8x8 PNGs, 10 times more of one: a pixel identifies each image."""
    root = tmp_path_factory.mktemp("imbalanced")
    for split, scale in (("train", 1), ("test", 1)):
        for c, (name, n) in enumerate(COUNTS.items()):
            for i in range(n * scale):
                img = np.full((8, 8, 3), 40 + 150 * c, np.uint8)
                img[0, 0] = (i, c, 7)  # unique per (class, image)
                d = root / split / name
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def folder_cfg(root: Path, **data):
    return from_dict({
        "data": {"source": f"folder:{root}", "val_fraction": 0.0, "batch_size": 11, "seed": 3, **data},
        "export": {"enabled": False},
        "report": False,
    }).data


def epoch(bundle) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in bundle.train])
    return np.concatenate(xs), np.concatenate(ys)


def test_balanced_sampling_draws_classes_evenly_from_a_folder(imbalanced_folder):
    b = load_data(folder_cfg(imbalanced_folder, sampling="balanced"))
    n = b.info.num_train
    assert n == sum(COUNTS.values())
    x, y = epoch(b)
    assert len(y) == n  # same epoch length as without it
    counts = np.bincount(y, minlength=2)
    # Binomial(66, 1/2): mean 33, sd 4.1; shuffling would give exactly 60 / 6.
    assert 18 <= counts[1] <= 48, counts
    # Every image is a real image of its own label (the label travels with its image) ...
    assert (x[:, 0, 0, 1] == y).all()
    # ... and the rare class is repeated (a reshuffled pass each time), not only seen once.
    rare_ids = x[y == 1, 0, 0, 0]
    assert set(rare_ids) == set(range(COUNTS["rare"]))
    # Validation / test are untouched: the test split keeps its imbalance.
    assert np.bincount(b.arrays["test"][1]).tolist() == list(COUNTS.values())
    test_labels = np.concatenate([y.numpy() for _, y in b.test])
    assert np.bincount(test_labels).tolist() == list(COUNTS.values())


def test_balanced_sampling_is_seeded_and_changes_every_epoch(imbalanced_folder):
    cfg = folder_cfg(imbalanced_folder, sampling="balanced")
    a, b = load_data(cfg), load_data(cfg)
    first_a, first_b = epoch(a)[1], epoch(b)[1]
    np.testing.assert_array_equal(first_a, first_b)
    assert not np.array_equal(first_a, epoch(a)[1])  # a new class sequence for the second epoch
    other = load_data(dataclasses.replace(cfg, seed=4))
    assert not np.array_equal(first_a, epoch(other)[1])


def test_plain_shuffle_keeps_the_imbalance(imbalanced_folder):
    y = epoch(load_data(folder_cfg(imbalanced_folder)))[1]
    assert np.bincount(y).tolist() == list(COUNTS.values())


@pytest.mark.parametrize("engine", ["tape", "fit"])
def test_both_engines_train_on_a_balanced_stream(engine, tmp_path):
    cfg = make_cfg({"engine": engine, "epochs": 2, "early_stopping": {"enabled": False}}, data_opts={"sampling": "balanced"})
    run(cfg, tmp_path / engine)
    _, rows = read_history(tmp_path / engine)
    assert len(rows) == 2
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert float(rows[1]["loss"]) < float(rows[0]["loss"])


def test_sampling_settings_that_cannot_work_are_one_line():
    with pytest.raises(ConfigError, match="would correct the imbalance twice"):
        make_cfg({"class_weight": "balanced"}, data_opts={"sampling": "balanced"})
    with pytest.raises(ConfigError, match="data.sampling"):
        make_cfg(data_opts={"sampling": "oversample"})
    from tfcnn.train import check_train_config

    cfg = make_cfg(data_opts={"sampling": "balanced"})
    check_train_config(cfg)
    with pytest.raises(ConfigError, match="data.sampling = 'balanced' draws classes evenly, which the 'detection' task"):
        check_train_config(dataclasses.replace(cfg, task="detection"))
