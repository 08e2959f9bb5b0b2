"""The run report: one self-contained HTML file that a real browser renders without a broken image or error."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SECTIONS = ("summary", "config", "training", "confusion", "errors", "embedding", "calibration", "gradcam", "export")


def _fake_export(run_dir: Path, root: Path) -> Path:
    """A version dir as `tfcnn export` + `tfcnn verify` leave it, int8_changed entries included."""
    labels = np.load(run_dir / "predictions.npz")["labels"]
    vdir = root / "export" / "tiny" / "1"
    vdir.mkdir(parents=True)
    row = {"accuracy": 0.97, "agreement": 1.0, "max_abs_diff": 2e-7, "mean_abs_diff": 1e-8, "bytes": 52_000,
           "latency_ms_median": 0.21, "latency_ms_p95": 0.3, "passed": True, "thresholds": {}, "failures": []}
    changed = [
        {"index": 3, "label": int(labels[3]), "keras_class": int(labels[3]), "int8_class": (int(labels[3]) + 1) % 3,
         "keras_prob": 0.51, "int8_prob": 0.49},
        {"index": 17, "label": int(labels[17]), "keras_class": (int(labels[17]) + 2) % 3, "int8_class": int(labels[17]),
         "keras_prob": 0.44, "int8_prob": 0.47},
    ]
    verification = {
        "version_dir": str(vdir), "samples": len(labels), "threads": 1, "keras": {"accuracy": 0.97},
        "formats": {
            "savedmodel": row,
            "tflite_float32": row,
            "tflite_int8": {**row, "agreement": 0.98, "max_abs_diff": 0.05, "passed": False,
                            "failures": ["agreement 0.978 < 0.985"]},
            "coreml": {"spec_checked": True, "passed": True,
                       "predictions": "skipped: coremltools cannot run predictions off macOS"},
        },
        "mediapipe": {"tflite_int8": {"passed": True, "checked": 90, "top1_agreement_with_litert": 1.0, "labels_from_metadata": True}},
        "passed": False, "failures": ["tflite_int8: agreement 0.978 < 0.985"],
        "int8_changed": changed, "test_indices_source": "bundle.arrays['test'] order",
    }
    (vdir / "verification.json").write_text(json.dumps(verification))
    (vdir / "model_card.json").write_text(json.dumps({"artifacts": [
        {"path": "tflite/model_int8.tflite", "format": "tflite", "sha256": "ab" * 32, "bytes": 14_000}]}))
    (run_dir / "exports.json").write_text(json.dumps([str(vdir), str(root / "export" / "tiny" / "2")]))
    return vdir


@pytest.fixture(scope="module")
def report_run(tiny_run, tmp_path_factory) -> Path:
    from tfcnn.vis.report import build_report

    root = tmp_path_factory.mktemp("report")
    run_dir = root / "tiny"
    shutil.copytree(tiny_run, run_dir)
    _fake_export(run_dir, root)
    shutil.rmtree(run_dir / "plots", ignore_errors=True)  # evaluate writes numbers; the report draws the figures
    path = build_report(run_dir)
    assert path == run_dir / "report.html"
    assert (run_dir / "plots" / "confusion_matrix.png").is_file() and (run_dir / "plots" / "learning_curves.png").is_file()
    return run_dir


def test_report_is_self_contained(report_run):
    text = (report_run / "report.html").read_text()
    assert not list(report_run.glob(".report.html.*"))  # atomic write left no temp file
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in text, sid
    # No external reference: every src/href is a data URI or an in-page anchor, and no URL anywhere.
    refs = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', text)
    assert refs and all(r.startswith(("data:image/png;base64,", "#")) for r in refs), [r[:40] for r in refs if not r.startswith(("data:", "#"))]
    without_data = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert not re.search(r"(https?:|ftp:)?//[a-z0-9.-]+\.[a-z]{2,}", without_data, re.I)
    assert "<script" not in text.lower() and "<link" not in text.lower() and "@import" not in text
    # Export section: verification table rows, failures, and the int8 changes with their Grad-CAM figure.
    assert "tflite_int8" in text and "agreement 0.978 &lt; 0.985" in text
    assert "coremltools cannot run predictions off macOS" in text
    assert "Grad-CAM of the float model for the float and the int8 class" in text
    assert "no longer exists" in text  # the listed version 2 is gone: explained, not fatal
    # The fit engine records no gradient norms: said so, not a broken image.
    assert "fit engine does not record per-layer gradient norms" in text
    assert "Grad-CAM of correct predictions" in text


@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="chromium/chromedriver not installed (apt-get install chromium chromium-driver)")
def test_report_renders_in_chromium(report_run):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        opts.add_argument(arg)
    profile = tempfile.mkdtemp(prefix="tfcnn-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        driver.get((report_run / "report.html").resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
        ids = driver.execute_script("return Array.from(document.querySelectorAll('section')).map(s => s.id)")
        resources = driver.execute_script("return performance.getEntriesByType('resource').map(r => r.name)")
        int8_imgs = driver.execute_script(
            "return Array.from(document.querySelectorAll('#export img')).map(i => i.naturalWidth)")
        severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    alts = {alt for alt, *_ in images}
    expected = {"train and validation loss and accuracy per epoch", "confusion matrix of the test split",
                "PCA of penultimate features", "t-SNE of penultimate features", "reliability diagram",
                "Grad-CAM of correct predictions", "Grad-CAM of the float model for the float and the int8 class"}
    assert expected <= alts, expected - alts
    broken = [alt for alt, complete, w, h in images if not (complete and w > 0 and h > 0)]
    assert not broken, broken
    assert list(ids) == list(SECTIONS)
    assert all(r.startswith("data:") for r in resources), resources
    assert int8_imgs and all(w > 0 for w in int8_imgs)
    assert not severe, severe


def test_report_of_a_bare_run_explains_what_is_missing(tmp_path):
    """Only config.json: every section still renders, each missing input as a note."""
    from tfcnn.config import from_dict, save
    from tfcnn.vis.report import build_report

    save(from_dict({"name": "bare", "data": {"source": "numpy:/nonexistent.npz"}}), tmp_path / "config.json")
    text = build_report(tmp_path).read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in text, sid
    assert "<img" not in text
    assert "evaluation.json is missing" in text and "has not been exported yet" in text
    assert text.count('class="na"') >= 8


def test_report_missing_run_dir_is_one_clear_error(tmp_path):
    from tfcnn.errors import TfcnnError
    from tfcnn.vis.report import build_report

    with pytest.raises(TfcnnError, match="does not exist"):
        build_report(tmp_path / "nope")


def test_report_with_an_unreadable_record_says_so_and_exits_1(report_run, tmp_path, capsys):
    """The report is still written (with the reason where the section goes), but not called complete."""
    import shutil

    from tfcnn.cli import main

    run = tmp_path / "run"
    shutil.copytree(report_run, run)
    (run / "metrics.json").write_text("{broken")
    assert main(["report", str(run)]) == 1
    err = capsys.readouterr().err
    assert "1 run file(s) could not be read" in err and "metrics.json is not valid JSON" in err
    assert "metrics.json is not valid JSON" in (run / "report.html").read_text()


def test_report_lists_every_skipped_data_file_with_its_reason(report_run, tmp_path):
    """data.json's `skipped` list is in the report, collapsible, each file with its reason (escaped)."""
    from tfcnn.config import from_dict, save
    from tfcnn.data.info import DataInfo
    from tfcnn.run import Run
    from tfcnn.vis.report import build_report

    text = (report_run / "report.html").read_text()
    config = text.split('<section id="config">', 1)[1].split("</section>", 1)[0]
    assert "no files skipped" in config and "<details class=\"skipped\">" not in config

    save(from_dict({"name": "skipper", "data": {"source": "folder:/nonexistent"}}), tmp_path / "config.json")
    skipped = [
        {"file": "/data/cat/broken.jpg", "reason": "truncated JPEG"},
        {"file": "/data/dog/<notes>.txt", "reason": "not a JPEG/PNG/BMP/GIF file (extension '.txt')"},
        {"file": "/data/dog/a&b.png", "reason": "cannot identify image file"},
    ]
    Run.open(tmp_path, need=()).write(
        DataInfo(["cat", "dog"], (8, 8, 1), [0.0], [1.0], 10, 0, 2, "folder:/data", skipped=skipped))
    text = build_report(tmp_path).read_text()
    config = text.split('<section id="config">', 1)[1].split("</section>", 1)[0]
    assert "no files skipped" not in config
    details = config.split('<details class="skipped">', 1)[1].split("</details>", 1)[0]
    assert "skipped data files (3)" in details
    for entry in ("/data/cat/broken.jpg", "truncated JPEG", "/data/dog/&lt;notes&gt;.txt",
                  "not a JPEG/PNG/BMP/GIF file (extension &#x27;.txt&#x27;)", "/data/dog/a&amp;b.png",
                  "cannot identify image file"):
        assert entry in details, entry
    assert "<notes>" not in text
    assert details.count("<tr>") == 1 + len(skipped)  # header row + one row per file
