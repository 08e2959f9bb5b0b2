"""A run that cannot be written, or whose disk is too small, is refused in one line before the
work it would lose: an unwritable run directory before any data is loaded, too little free
space before the first epoch (the estimate needs the built model's size)."""

from __future__ import annotations

import shutil
from collections import namedtuple

import pytest

from test_train import make_cfg, run
from tfcnn.config import TrainConfig
from tfcnn.errors import TfcnnError, TrainingError
from tfcnn.run import Run
from tfcnn.train.disk import ALLOWANCE, needed_bytes


def test_an_unwritable_run_directory_is_one_line(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(TfcnnError, match=r"run directory .*a_file/run' cannot be written .*; choose another --out directory"):
        Run.create(blocker / "run")
    import tempfile

    def refuse(*args, **kwargs):  # what a read-only mount says (root ignores permission bits)
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(TfcnnError, match="cannot be written \\(Read-only file system\\)"):
        Run.create(tmp_path / "ro")


def test_the_estimate_counts_checkpoints_and_optimizer_slots():
    p = 1_000_000
    adam = needed_bytes(p, TrainConfig(optimizer="adam", max_checkpoints=3))
    assert adam == 4 * (1 + 2 + 1) * p * 4 + 4 * p * 4 + ALLOWANCE
    assert needed_bytes(p, TrainConfig(optimizer="sgd", max_checkpoints=3)) < adam
    assert needed_bytes(p, TrainConfig(optimizer="adam", max_checkpoints=1)) < adam


def test_too_little_free_disk_stops_before_the_first_epoch(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(TrainingError, match=r"has 97\d\.\d KB free but this run needs about .*lower train.max_checkpoints"):
        run(make_cfg({"epochs": 1}), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
