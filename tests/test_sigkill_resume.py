"""Training survives SIGKILL: the process is killed from outside at a random moment after its first
checkpoint, the same command is run again, and with ``train.deterministic = true`` the run ends
with the weights of a run never interrupted — for both engines, with dropout, augmentation and
shuffling (all three draw random numbers that a resume must replay, not redraw)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

TRAIN = textwrap.dedent(
    """
    import json, sys
    sys.path[:0] = [sys.argv[1]]
    from tfcnn.config import from_dict
    from tfcnn.pipeline import run_pipeline
    engine, npz, run_dir, kill_in_write = sys.argv[2:6]
    if int(kill_in_write):  # SIGKILL this process inside the write of that epoch's checkpoint
        import glob, os, signal

        def die_half_written(path):
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

        if engine == "tape":
            import tensorflow as tf
            real_save = tf.train.CheckpointManager.save

            def save(self, checkpoint_number=None, **kw):
                if checkpoint_number == int(kill_in_write):  # the files written, the index not yet updated
                    prefix = f"{self._prefix}-{checkpoint_number}"
                    self._checkpoint.write(prefix)
                    die_half_written(glob.glob(prefix + ".data-*")[0])
                return real_save(self, checkpoint_number=checkpoint_number, **kw)

            tf.train.CheckpointManager.save = save
        else:
            import keras
            real_save_weights = keras.Model.save_weights
            backups = []

            def save_weights(self, filepath, *args, **kw):
                if "backup" in str(filepath):
                    backups.append(filepath)
                    if len(backups) == int(kill_in_write):
                        real_save_weights(self, filepath, *args, **kw)
                        die_half_written(str(filepath))
                return real_save_weights(self, filepath, *args, **kw)

            keras.Model.save_weights = save_weights
    cfg = from_dict({
        "name": "killed",
        "data": {"source": f"numpy:{npz}", "batch_size": 32, "val_fraction": 0.2, "augment": {"flip": True, "translate": 0.1}},
        "model": {"name": "tiny_cnn", "dropout": 0.3},
        "train": {"engine": engine, "epochs": 6, "learning_rate": 0.01, "deterministic": True, "tensorboard": False,
                  "steps_per_execution": 4, "early_stopping": {"enabled": False}},
        "export": {"enabled": False}, "report": False,
    })
    summary = run_pipeline(cfg, run_dir)  # the same command, first and again
    print(json.dumps({"accuracy": summary["metrics"]["test_accuracy"]}))
    """
)


def _start(script: Path, engine: str, npz: Path, run_dir: Path, kill_in_write: int = 0) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, str(script), str(REPO), engine, str(npz), str(run_dir), str(kill_in_write)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> dict:
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def _weights(run_dir: Path) -> list[np.ndarray]:
    import keras

    return keras.saving.load_model(run_dir / "model.keras", compile=False).get_weights()


def _epochs_saved(run_dir: Path, engine: str) -> int:
    """How many finished epochs the run's resumable state holds (0 before the first)."""
    try:
        if engine == "tape":  # tf.train.CheckpointManager's index: model_checkpoint_path: "epoch-N"
            text = (run_dir / "checkpoints" / "checkpoint").read_text()
            return int(text.split('"')[1].rsplit("-", 1)[1])
        meta = run_dir / "checkpoints" / "backup" / "training_metadata.json"  # Keras' BackupAndRestore
        return int(json.loads(meta.read_text())["epoch"])
    except (OSError, IndexError, ValueError, KeyError):
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["tape", "fit"])
def test_sigkill_mid_run_then_the_same_command_ends_with_the_uninterrupted_weights(tmp_path, engine):
    from fakedata import write_npz

    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    npz = tmp_path / "synthetic.npz"
    write_npz(npz, n_train=1600)  # 40 steps per epoch
    whole = _finish(_start(script, engine, npz, tmp_path / "whole"))

    run_dir = tmp_path / "killed"
    proc = _start(script, engine, npz, run_dir)
    try:
        deadline = time.monotonic() + 240
        marks = []  # when epochs 1 and 2 were saved: the second epoch's length times the kill
        while len(marks) < 2 and proc.poll() is None and time.monotonic() < deadline:
            if _epochs_saved(run_dir, engine) > len(marks):
                marks.append(time.monotonic())
            time.sleep(0.005)
        assert proc.poll() is None and len(marks) == 2, "the run ended before it could be killed"
        time.sleep(random.Random().uniform(0.05, 0.8) * (marks[1] - marks[0]))  # at a random step of epoch 3
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "model.keras").exists(), "killed after training had finished: nothing to resume"

    resumed = _finish(_start(script, engine, npz, run_dir))
    diagnostics = json.loads((run_dir / "diagnostics.json").read_text())
    assert diagnostics["resumed_at"] and diagnostics["resumed_at"][0] >= 2
    got, want = _weights(run_dir), _weights(tmp_path / "whole")
    assert max(float(np.abs(a - b).max()) for a, b in zip(got, want)) == 0.0
    assert resumed["accuracy"] == whole["accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["tape", "fit"])
def test_a_kill_inside_a_checkpoint_write_leaves_the_previous_one_usable(tmp_path, engine):
    """The process kills itself while epoch 3's checkpoint is half written (files truncated, before
    the commit): the rerun resumes from epoch 2 and ends with the uninterrupted weights. Keras'
    own BackupAndRestore overwrote its one weights file in place: the rerun could not load it."""
    from fakedata import write_npz

    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    npz = tmp_path / "synthetic.npz"
    write_npz(npz, n_train=400)
    whole = _finish(_start(script, engine, npz, tmp_path / "whole"))
    run_dir = tmp_path / "killed"
    proc = _start(script, engine, npz, run_dir, kill_in_write=3)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL and _epochs_saved(run_dir, engine) == 2
    resumed = _finish(_start(script, engine, npz, run_dir))
    assert json.loads((run_dir / "diagnostics.json").read_text())["resumed_at"] == [2]
    got, want = _weights(run_dir), _weights(tmp_path / "whole")
    assert max(float(np.abs(a - b).max()) for a, b in zip(got, want)) == 0.0
    assert resumed["accuracy"] == whole["accuracy"]
