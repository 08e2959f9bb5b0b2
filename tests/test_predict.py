"""`tfcnn predict` on a run and on an export version: same rows, same answers, scriptable output."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tfcnn.cli import main
from tfcnn.errors import TfcnnError

FORMATS = ["savedmodel", "tflite_float32", "onnx"]


def run_cli(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def version(tiny_run, tmp_path_factory) -> Path:
    """The tiny run exported to savedmodel, tflite_float32 and onnx (from a copy: tiny_run is shared)."""
    from tfcnn.export import export_run

    base = tmp_path_factory.mktemp("predict_export")
    run_copy = base / "run"
    shutil.copytree(tiny_run, run_copy)
    return export_run(run_copy, formats=FORMATS, root=base / "export")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory, npz_path) -> Path:
    """Test-split images as files: grey PNGs (some nested, one at 24x24 to be resized) and RGB
    PNGs with R=G=B, plus a text file and a hidden file a folder search must skip."""
    root = tmp_path_factory.mktemp("predict_images")
    x = np.load(npz_path)["x_test"][..., 0]
    (root / "nested" / "deeper").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(x[i]).save(root / f"grey{i}.png")
    Image.fromarray(x[4]).resize((24, 24), Image.Resampling.BILINEAR).save(root / "nested" / "grey_big.png")
    for i in range(5, 7):
        Image.fromarray(np.repeat(x[i][..., None], 3, axis=-1)).save(root / "nested" / "deeper" / f"rgb{i}.PNG")
    (root / "notes.txt").write_text("not an image")
    Image.fromarray(x[7]).save(root / ".hidden.png")
    return root


def image_files(image_dir: Path) -> list[Path]:
    return sorted(p for p in image_dir.rglob("*") if p.suffix.lower() == ".png" and not p.name.startswith("."))


@pytest.fixture(scope="module")
def keras_rows(tiny_run, image_dir):
    from tfcnn.prediction import predict_images

    return predict_images(tiny_run, image_files(image_dir), top_k=3)


def probs_of(row) -> dict[int, float]:
    return {t["class_id"]: t["probability"] for t in row["top_k"]}


@pytest.mark.parametrize("fmt", FORMATS)
def test_version_agrees_with_keras(version, image_dir, keras_rows, fmt):
    from tfcnn.export.predict import predict_version

    rows = predict_version(version, image_files(image_dir), format=fmt, top_k=3, batch_size=3)
    assert [r["image"] for r in rows] == [r["image"] for r in keras_rows]
    for got, ref in zip(rows, keras_rows):
        assert got["error"] is None and ref["error"] is None
        assert got["top_k"][0]["class_id"] == ref["top_k"][0]["class_id"], got["image"]
        assert got["top_k"][0]["label"] == ref["top_k"][0]["label"]
        p, q = probs_of(got), probs_of(ref)
        assert sorted(p) == sorted(q) == [0, 1, 2]
        assert max(abs(p[c] - q[c]) for c in p) <= 1e-4, (fmt, got["image"], p, q)


def test_default_format_and_choices(version, tmp_path):
    from tfcnn.export.predict import available_formats, check_source, choose_format

    assert available_formats(version) == (FORMATS, {})
    assert choose_format(version) == "savedmodel"
    assert check_source(version) == ("version", "savedmodel")
    assert check_source(version, "onnx") == ("version", "onnx")
    # Without a SavedModel the first runnable format in registry order is the default.
    fake = tmp_path / "v"
    fake.mkdir()
    contract = json.loads((version / "contract.json").read_text())
    del contract["artifacts"]["savedmodel"]
    (fake / "contract.json").write_text(json.dumps(contract))
    shutil.copy(version / "model_card.json", fake / "model_card.json")
    assert choose_format(fake) == "tflite_float32"


def test_run_rows_through_cli_match_library(capsys, tiny_run, image_dir, keras_rows):
    code, out, _ = run_cli(capsys, "predict", tiny_run, *image_files(image_dir), "--json")
    assert code == 0
    assert json.loads(out) == keras_rows


def test_folder_finds_every_image(capsys, version, image_dir):
    from tfcnn.prediction import find_images

    expected = image_files(image_dir)
    found = find_images([image_dir])
    assert sorted(found) == expected  # nested folders, upper-case .PNG; no .txt, no hidden file
    assert find_images([image_dir, expected[0]]) == found  # a file also under the folder counts once
    code, out, _ = run_cli(capsys, "predict", version, image_dir, "--json", "--format", "onnx")
    assert code == 0
    assert sorted(r["image"] for r in json.loads(out)) == sorted(map(str, expected))


def test_folder_without_images_is_one_error_line(capsys, version, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    code, out, err = run_cli(capsys, "predict", version, empty)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "has no images" in err and str(empty) in err


def test_csv_and_json_parse(capsys, version, image_dir, keras_rows):
    files = image_files(image_dir)
    code, out, _ = run_cli(capsys, "predict", version, *files, "--csv", "--format", "tflite_float32", "--top-k", "2")
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert [r["image"] for r in table] == list(map(str, files))
    assert list(table[0]) == [
        "image", "top1_class_id", "top1_label", "top1_probability", "top2_class_id", "top2_label", "top2_probability", "error"
    ]
    for r, ref in zip(table, keras_rows):
        assert r["top1_label"] == ref["top_k"][0]["label"] and r["error"] == ""
        assert float(r["top1_probability"]) >= float(r["top2_probability"])

    code, out, _ = run_cli(capsys, "predict", version, *files, "--json", "--top-k", "1")
    assert code == 0
    rows = json.loads(out)
    assert [len(r["top_k"]) for r in rows] == [1] * len(files)
    assert [r["top_k"][0]["label"] for r in rows] == [r["top_k"][0]["label"] for r in keras_rows]


def test_table_is_default(capsys, version, image_dir):
    files = image_files(image_dir)[:2]
    code, out, _ = run_cli(capsys, "predict", version, *files)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["image", "top-1", "top-2", "top-3"]
    assert [line.split()[0] for line in lines[1:]] == list(map(str, files))
    assert all(line.count("%") == 3 for line in lines[1:])


@pytest.mark.parametrize("fmt", ["nosuch", "tflite_int8"])
def test_unknown_format_is_one_error_line(capsys, version, image_dir, fmt):
    code, out, err = run_cli(capsys, "predict", version, image_dir, "--format", fmt)
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert f"format {fmt!r}" in err and "savedmodel, tflite_float32, onnx" in err
    with pytest.raises(TfcnnError, match="choose one of"):
        from tfcnn.export.predict import predict_version

        predict_version(version, image_files(image_dir), format=fmt)


def test_format_with_a_run_dir_is_an_error(capsys, tiny_run, image_dir):
    code, _, err = run_cli(capsys, "predict", tiny_run, image_dir, "--format", "onnx")
    assert code == 2 and err.count("\n") == 1 and "is a run directory" in err


def test_neither_run_nor_version(capsys, version, image_dir, tmp_path):
    code, _, err = run_cli(capsys, "predict", tmp_path, image_dir)
    assert code == 2 and err.count("\n") == 1
    assert "neither a run directory" in err and "contract.json" in err
    # The model's folder (export/<name>) is pointed at its versions.
    code, _, err = run_cli(capsys, "predict", version.parent, image_dir)
    assert code == 2 and f"pass one, e.g. {version}" in err


def test_missing_image_path_is_an_error(capsys, version, tmp_path):
    code, _, err = run_cli(capsys, "predict", version, tmp_path / "nope.png")
    assert code == 2 and "does not exist" in err and err.count("\n") == 1


def test_bad_image_is_one_error_row(capsys, tiny_run, version, image_dir, tmp_path):
    from tfcnn.export.predict import predict_version
    from tfcnn.prediction import predict_images

    good = image_files(image_dir)[:3]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    files = [good[0], bad, *good[1:]]
    for rows in (predict_images(tiny_run, files, batch_size=2), predict_version(version, files, format="onnx", batch_size=2)):
        assert [r["image"] for r in rows] == list(map(str, files))
        errors = [r for r in rows if r["error"]]
        assert len(errors) == 1 and errors[0]["image"] == str(bad) and errors[0]["top_k"] == []
        assert str(bad) in errors[0]["error"] and "\n" not in errors[0]["error"]
        assert all(len(r["top_k"]) == 3 for r in rows if not r["error"])
    capsys.readouterr()  # the library calls' progress lines (logging is on after the CLI tests)

    code, out, _ = run_cli(capsys, "predict", version, *files)
    assert code == 1  # results written, but not every image could be read
    error_lines = [line for line in out.splitlines() if "ERROR" in line]
    assert len(error_lines) == 1 and error_lines[0].startswith(str(bad))
    assert len(out.splitlines()) == 1 + len(files)
    code, out, _ = run_cli(capsys, "predict", version, *files, "--csv")
    table = list(csv.DictReader(io.StringIO(out)))
    assert [bool(r["error"]) for r in table] == [False, True, False, False]
    assert table[1]["top1_label"] == ""


def test_out_file_and_progress_without_terminal(capsys, version, image_dir, tmp_path):
    """Off a terminal: one plain log line (stderr) per group of batches, no ANSI codes or \\r
    redraws; the result goes to --out atomically, or is all that stdout carries."""
    many = tmp_path / "many"
    many.mkdir()
    src = image_files(image_dir)
    for i in range(40):
        shutil.copy(src[i % len(src)], many / f"img{i:03d}.png")
    target = tmp_path / "out" / "predictions.json"
    code, out, err = run_cli(capsys, "predict", version, many, "--out", target, "--batch-size", "2", "--format", "onnx")
    assert code == 0 and out == ""
    assert "\x1b[" not in err and "\r" not in err
    progress = [line for line in err.splitlines() if "predict onnx:" in line]
    assert 2 <= len(progress) <= 11  # 20 batches, grouped
    assert progress[-1].startswith("[tfcnn] predict onnx: 40/40 images (100%)")
    assert err.splitlines()[-1] == f"[tfcnn] predict: 40 images -> {target}"
    rows = json.loads(target.read_text())  # the kind follows the .json suffix
    assert len(rows) == 40 and list(target.parent.iterdir()) == [target]

    code, out, err = run_cli(capsys, "predict", version, many, "--csv", "--batch-size", "2")
    assert code == 0 and "\x1b[" not in out + err and "\r" not in out + err and "[tfcnn]" not in out
    assert len(list(csv.DictReader(io.StringIO(out)))) == 40
    assert any("predict savedmodel: 40/40" in line for line in err.splitlines())


def test_library_progress_lines_are_plain(capsys, tiny_run, image_dir):
    from tfcnn.prediction import predict_images
    from tfcnn.util import setup_logging

    setup_logging()
    rows = predict_images(tiny_run, image_files(image_dir), batch_size=1)
    out, err = capsys.readouterr()
    assert len(rows) == len(image_files(image_dir)) and out == ""
    assert [line for line in err.splitlines() if "predict keras:" in line]
    assert "\x1b[" not in err and "\r" not in err
    predict_images(tiny_run, image_files(image_dir), progress=False)
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("argv, message", [
    (["--top-k", "0"], "argument --top-k: must be at least 1, got 0"),
    (["--threads", "0"], "argument --threads: must be at least 1, got 0"),
    (["--batch-size", "x"], "argument --batch-size: expected a whole number, got 'x'"),
])
def test_count_options_are_one_usage_line(capsys, tiny_run, image_dir, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(tiny_run), str(image_files(image_dir)[0]), *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err


def test_top_k_above_the_class_count_is_refused(capsys, tiny_run, image_dir):
    code, out, err = run_cli(capsys, "predict", tiny_run, image_files(image_dir)[0], "--top-k", "4")
    assert code == 2 and out == "" and "--top-k 4 must be between 1 and the model's 3 classes" in err


def test_a_model_with_nan_weights_predicts_nothing(capsys, tiny_run, image_dir, tmp_path):
    """"nan%" rows would look like an answer: non-finite scores are one error line, exit 2."""
    import keras

    run = tmp_path / "nan_run"
    shutil.copytree(tiny_run, run)
    model = keras.models.load_model(run / "model.keras", compile=False)
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
    model.save(run / "model.keras")
    code, out, err = run_cli(capsys, "predict", run, image_files(image_dir)[0])
    assert code == 2 and out == ""
    assert "outputs are not finite (NaN or inf) for 1 of 1 images" in err
