"""`tfcnn runs`: every run under a folder side by side, sortable, as a table, CSV, JSON and HParams."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from tfcnn.cli import main
from tfcnn.errors import TfcnnError
from tfcnn.run import Metrics, Run
from tfcnn.util import write_json
from tfcnn.vis.runs import COLUMNS, find_runs, list_runs, render, write_hparams


@pytest.fixture(scope="module")
def runs_dir(tiny_run, tmp_path_factory) -> Path:
    """Four runs: the real tiny run, a copy with a better score that shipped, one with a broken
    metrics.json, one configured but not trained; plus a plain folder that is not a run."""
    root = tmp_path_factory.mktemp("runs_listing")
    shutil.copytree(tiny_run, root / "tiny")
    tiny = Run(root / "tiny")
    m = tiny.read(Metrics)
    m.scores["test_accuracy"] = 0.9
    tiny.write(m)
    shutil.copytree(tiny_run, root / "sweep" / "better")
    better = Run(root / "sweep" / "better")
    m = better.read(Metrics)
    m.scores["test_accuracy"] = 0.999
    m.train_seconds = 1.5
    better.write(m)
    version = root / "export" / "better" / "1"
    version.mkdir(parents=True)
    write_json(version / "model_card.json", {"metrics": {"verification_passed": True}})
    write_json(better.path("exports"), [str(version), str(root / "export" / "better" / "2")])  # 2 is gone
    shutil.copytree(tiny_run, root / "broken")
    (root / "broken" / "metrics.json").write_text("{nope")
    (root / "fresh").mkdir()
    shutil.copy(tiny_run / "config.json", root / "fresh" / "config.json")
    (root / "notes").mkdir()
    (root / "notes" / "x.txt").write_text("not a run")
    return root


def test_find_runs_stops_at_run_dirs_and_skips_other_folders(runs_dir):
    names = [p.relative_to(runs_dir).as_posix() for p in find_runs(runs_dir)]
    assert names == ["broken", "fresh", "sweep/better", "tiny"]


def test_rows_are_sorted_by_score_best_first_with_unscored_runs_last(runs_dir, tiny_run):
    rows = list_runs(runs_dir)
    assert [r["run"] for r in rows[:2]] == ["sweep/better", "tiny"]
    assert {r["run"] for r in rows[2:]} == {"broken", "fresh"}
    best, tiny = rows[0], rows[1]
    actual = Run(tiny_run).read(Metrics)
    assert best["score"] == 0.999 and best["score_name"] == "test_accuracy"
    assert tiny["score"] == 0.9 and tiny["params"] == actual.params and tiny["epochs_run"] == actual.epochs_run
    assert tiny["model"] == "tiny_cnn" and tiny["engine"] == "fit" and tiny["epochs"] == 6 and tiny["lr"] == 0.01
    assert best["exported"] == 1 and best["verified"] == "passed" and "1 recorded export version(s) are gone" in best["note"]
    assert tiny["exported"] == 0 and tiny["verified"] is None
    notes = {r["run"]: r["note"] for r in rows}
    assert "metrics.json is not valid JSON" in notes["broken"] and "not trained yet" in notes["fresh"]


def test_sort_by_other_columns_and_bad_column(runs_dir):
    asc = list_runs(runs_dir, sort="train_seconds")
    assert asc[0]["run"] == "sweep/better"  # 1.5 s, the fastest
    assert [r["run"] for r in list_runs(runs_dir, sort="run", descending=True)] == ["tiny", "sweep/better", "fresh", "broken"]
    with pytest.raises(TfcnnError, match="cannot sort by 'acuracy'; choose one of run, task"):
        list_runs(runs_dir, sort="acuracy")
    with pytest.raises(TfcnnError, match="does not exist"):
        list_runs(runs_dir / "nope")


def test_csv_json_and_table(runs_dir, capsys, tmp_path):
    rows = list_runs(runs_dir)
    parsed = list(csv.DictReader(io.StringIO(render(rows, "csv"))))
    assert list(parsed[0]) == list(COLUMNS) and parsed[0]["run"] == "sweep/better" and float(parsed[0]["score"]) == 0.999
    assert json.loads(render(rows, "json"))[0]["run"] == "sweep/better"
    table = render(rows, "table").splitlines()
    assert table[0].split()[:3] == ["run", "task", "model"] and "test_accuracy" in table[0]
    assert table[1].startswith("sweep/better") and len(table) == 5
    assert main(["runs", str(runs_dir), "--out", str(tmp_path / "runs.csv")]) == 0
    assert (tmp_path / "runs.csv").read_text().startswith("run,task,model")
    assert main(["runs", str(runs_dir), "--json", "--sort", "run", "--asc"]) == 0
    assert [r["run"] for r in json.loads(capsys.readouterr().out)] == ["broken", "fresh", "sweep/better", "tiny"]


def test_hparams_logs_carry_each_runs_settings_and_score(runs_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    rows = list_runs(runs_dir)
    logdir = write_hparams(rows, tmp_path / "hp")
    acc = EventAccumulator(str(logdir / "sweep__better"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    session = next(plugin_data_pb2.HParamsPluginData.FromString(v) for v in content.values())
    start = session.session_start_info
    assert start.hparams["lr"].number_value == 0.01 and start.hparams["model"].string_value == "tiny_cnn"
    (event,) = acc.Tensors("score")
    import tensorflow as tf

    assert float(tf.make_ndarray(event.tensor_proto)) == pytest.approx(0.999)
