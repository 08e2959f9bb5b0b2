"""The benchmarks run and end with their JSON line (tiny sizes: this checks they work, not timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import fashion_available

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench(script: str, *args: str, timeout: int = 300) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_train_throughput_bench_reports_every_engine():
    r = bench("train_throughput.py", "--synthetic", "--steps", "4", "--epochs", "1", "--eager-steps", "4",
              "--eager-warmup", "1", "--rounds", "1", "--steps-per-execution", "2")
    for key in ("tape_ips", "fit_ips", "eager_ips", "plain_fit_ips"):
        assert r[key] > 0, key
    assert r["tape_vs_fit"] == pytest.approx(r["tape_ips"] / r["fit_ips"], rel=1e-2)
    pytest.importorskip("torch")  # the course's PyTorch loop runs beside them when torch is installed
    assert r["torch_ips"] > 0 and r["tape_vs_torch"] == pytest.approx(r["tape_ips"] / r["torch_ips"], rel=1e-2)
    assert "CPUs" in r["machine"] and r["synthetic"] is True


def test_onednn_bench_runs_both_settings_in_child_processes():
    r = bench("onednn.py", "--synthetic", "--images", "512", "--epochs", "1", "--rounds", "1")
    assert r["onednn_ips"] > 0 and r["plain_ips"] > 0
    assert r["speedup"] == pytest.approx(r["onednn_ips"] / r["plain_ips"], rel=1e-2)
    assert r["model"] == "compact_cnn" and r["data"] == "synthetic"


@pytest.mark.skipif(not fashion_available(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_epoch_stall_bench_times_both_iterator_styles():
    r = bench("epoch_stall.py", "--images", "1000", "--epochs", "2", "--rounds", "1")
    assert len(r["per_epoch_iter_s"]) == 2 and len(r["repeated_iter_s"]) == 2
    assert r["steps_per_epoch"] == 8  # 1,000 images, 10% held out for validation, batch 128
    assert r["augment"] is True


def test_reliability_suite_judges_its_own_broken_cases_and_real_ones():
    """The judge names each bad outcome of cases built to fail (incl. a SIGSEGV in the worker),
    and real config / pipeline-file cases come out as clean one-line errors."""
    r = bench("reliability.py", "--light", "--selftest", "--only", "^selftest/", "--only", r"config/nan:train\.",
              "--only", "^pipeline file/")
    assert r["selftest_ok"], r["selftest"]
    assert r["cases"] >= 20 and r["bad"] == 0, r
    assert r["clean_error"] == r["cases"]


def test_input_pipeline_bench_reports_both_rates_and_their_ratio():
    r = bench("input_pipeline.py", "--synthetic", "--images", "512", "--epochs", "1", "--pipeline-epochs", "1",
              "--rounds", "1", "--no-augmented-train")
    assert r["pipeline_ips"] > 0 and r["step_ips"] > 0
    assert r["ratio"] == pytest.approx(r["pipeline_ips"] / r["step_ips"], rel=1e-2)


def test_batch_norm_bench_times_both_kernels():
    r = bench("batch_norm.py", "--synthetic", "--images", "512", "--epochs", "1", "--rounds", "1")
    assert r["fused_ips"] > 0 and r["keras_ips"] > 0
    assert r["speedup"] == pytest.approx(r["fused_ips"] / r["keras_ips"], rel=1e-2)
    assert r["model"] == "compact_cnn" and "CPUs" in r["machine"]


def test_settings_ab_bench_times_two_settings_of_one_pipeline():
    r = bench("settings_ab.py", "--synthetic", "--images", "512", "--epochs", "1", "--rounds", "1",
              "--b", "train.fused_batch_norm=false", "data.augment.flip=false")
    assert r["a"] == [] and r["b"] == ["train.fused_batch_norm=false", "data.augment.flip=false"]
    assert r["a_ips"] > 0 and r["b_ips"] > 0
    assert r["speedup"] == pytest.approx(r["b_ips"] / r["a_ips"], rel=1e-2)
    assert r["pipeline"].endswith("fashion_mnist.toml") and "CPUs" in r["machine"]


def _segment_errors():
    import importlib.util

    spec = importlib.util.spec_from_file_location("segment_errors", BENCH / "segment_errors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_segment_errors_votes_each_object_and_counts_what_it_got_right():
    """Two objects in one 16x16 scene: A (class 0, 4x4) with 12 of its pixels called class 0 and
    4 called class 2; B (class 1, 2x4) all called class 2. A's majority is right, B's is not; the
    oracle vote makes all of A class 0 and all of B class 2; background pixels stay untouched."""
    import numpy as np

    from tfcnn.data.scenes import Scenes

    se = _segment_errors()
    masks = np.zeros((1, 16, 16), np.uint8)
    masks[0, 2:6, 2:6] = 1  # A: class 0 -> mask id 1
    masks[0, 10:12, 8:12] = 2  # B: class 1 -> mask id 2
    boxes = np.full((1, 3, 5), -1, np.float32)
    boxes[0, 0] = [2 / 16, 2 / 16, 6 / 16, 6 / 16, 0]
    boxes[0, 1] = [10 / 16, 8 / 16, 12 / 16, 12 / 16, 1]
    scenes = Scenes(np.zeros((1, 16, 16), np.uint8), boxes, masks, np.full((1, 3), -1, np.int32))
    pred = masks.astype(np.int64).copy()
    pred[0, 5, 2:6] = 3  # 4 of A's 16 pixels called class 2
    pred[0, 10:12, 8:12] = 3  # all of B called class 2
    pred[0, 0, 0] = 1  # a false positive on the background: no object owns it
    rows, voted = se.objects(scenes, pred)
    assert [(r["cls"], r["right"], r["side"], r["crowd"], r["touches"]) for r in rows] == [
        (0, True, 4, 2, False), (1, False, 4, 2, False)]
    assert (voted[0, 2:6, 2:6] == 1).all() and (voted[0, 10:12, 8:12] == 3).all() and voted[0, 0, 0] == 1
    assert se.share(rows) == {"objects": 2, "accuracy": 0.5}
    assert se.share(rows, c=lambda r: r["cls"] == 1) == {"objects": 1, "accuracy": 0.0}


def test_segment_errors_pooled_vote_keeps_the_background_share_and_sums_to_one():
    import numpy as np

    se = _segment_errors()
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=(2, 12, 12)).astype(np.float32)
    q = se.pooled_vote(p, 5)
    np.testing.assert_allclose(q[..., 0], p[..., 0], atol=1e-7)
    np.testing.assert_allclose(q.sum(-1), 1.0, atol=1e-5)
    # a window of 1 changes nothing
    np.testing.assert_allclose(se.pooled_vote(p, 1), p, atol=1e-5)


def test_segment_errors_tells_overlapping_boxes_from_free_ones():
    """Boxes that share area touch each other; a box that only meets another at an edge is free."""
    import numpy as np

    from tfcnn.data.scenes import Scenes

    se = _segment_errors()
    masks = np.zeros((1, 16, 16), np.uint8)
    masks[0, 0:4, 0:4] = 1  # A
    masks[0, 2:6, 4:8] = 2  # B: its box [2:6, 2:8] overlaps A's box [0:4, 0:4]
    masks[0, 2:6, 8:12] = 3  # C: its box [2:6, 8:12] meets B's at column 8, sharing no pixel
    boxes = np.full((1, 3, 5), -1, np.float32)
    boxes[0, 0] = [0, 0, 4 / 16, 4 / 16, 0]
    boxes[0, 1] = [2 / 16, 2 / 16, 6 / 16, 8 / 16, 1]
    boxes[0, 2] = [2 / 16, 8 / 16, 6 / 16, 12 / 16, 2]
    scenes = Scenes(np.zeros((1, 16, 16), np.uint8), boxes, masks, np.full((1, 3), -1, np.int32))
    rows, _ = se.objects(scenes, masks.astype(np.int64))
    assert [r["touches"] for r in rows] == [True, True, False] and all(r["right"] for r in rows)
    assert se.share(rows, o=lambda r: r["touches"]) == {"objects": 2, "accuracy": 1.0}


def test_segment_errors_refuses_a_missing_run_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, str(BENCH / "segment_errors.py"), str(tmp_path / "nowhere")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("segment_errors: run directory")
