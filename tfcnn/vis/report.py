"""One self-contained HTML page per run: everything needed to judge the model without the run dir.

Images are embedded as base64 data URIs, the CSS is inline and there is no JavaScript, so the
file can be mailed, attached to a ticket or opened offline and still show everything. Any input
that is missing (no export yet, the fit engine recording no gradient norms) becomes a visible
"not available: why" note instead of a broken image. The figures come from
:func:`tfcnn.vis.figures.render_figures`, re-rendered on every build; only Grad-CAM needs the
model and the test images.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tfcnn.errors import TfcnnError
from tfcnn.evaluate.training import read_record
from tfcnn.export.card import CARD_FILE as _CARD_FILE  # an export version's files, for the Exports section
from tfcnn.export.card import VERIFICATION_FILE as _VERIFICATION_FILE
from tfcnn.models.saved import load_trained_model
from tfcnn.run import Diagnostics, Evaluation, Metrics, Record, Run
from tfcnn.util import format_bytes, log, read_json, write_text
from tfcnn.vis.figures import Unavailable, load_npz, render_figures, split_images

_CAM_ROWS = 6  # Grad-CAM rows per gallery: each row costs a backward pass and page height


# --------------------------------------------------------------------------- html helpers


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def img_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def note(reason: str) -> str:
    return f'<p class="na"><b>Not available:</b> {esc(reason)}</p>'


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else esc(fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class _Raw(str):
    """Table cell content that is already HTML."""


def kv_table(pairs: Sequence[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def size_text(n: Any) -> str:
    return format_bytes(n) if isinstance(n, (int, float)) else "–"


# --------------------------------------------------------------------------- run context


class RunContext:
    """What the report reads from a run, loaded once and lazily (model and data only if needed)."""

    def __init__(self, run: Run, figures: dict[str, dict[str, str]]):
        self.run = run
        self.figures = figures
        self._records: dict[str, dict[str, Any]] = {}  # per build: a later build must see re-written files
        self.problems: list[str] = []  # run files that exist but could not be read (the report says so)

    @property
    def root(self) -> Path:
        return self.run.root

    def json(self, path: Path) -> dict[str, Any]:
        """A JSON file as a dict for display ({} when missing, {"_error": why} when unreadable)."""
        if not path.is_file():
            return {}
        try:
            data = read_json(path)
        except TfcnnError as exc:
            self._problem(str(exc))
            return {"_error": str(exc)}
        return data if isinstance(data, (dict, list)) else {}

    def record(self, cls: type[Record]) -> dict[str, Any]:
        """A typed record in its file layout ({} when missing, {"_error": why} when unreadable)."""
        if cls.KIND not in self._records:
            try:
                rec = self.run.read_optional(cls)
                self._records[cls.KIND] = rec.to_dict() if rec is not None else {}
            except TfcnnError as exc:
                self._problem(str(exc))
                self._records[cls.KIND] = {"_error": str(exc)}
        return self._records[cls.KIND]

    def _problem(self, message: str) -> None:
        if message not in self.problems:
            self.problems.append(message)

    @property
    def config(self) -> dict[str, Any]:
        return self.json(self.run.path("config"))

    @property
    def data(self) -> dict[str, Any]:
        return self.json(self.run.path("data"))

    @property
    def evaluation(self) -> dict[str, Any]:
        return self.record(Evaluation)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record(Metrics)

    @property
    def diagnostics(self) -> dict[str, Any]:
        return self.record(Diagnostics)

    @property
    def class_names(self) -> list[str]:
        names = self.evaluation.get("class_names") or self.data.get("class_names")
        if not names:
            raise Unavailable(
                f"class names unknown: neither {self.run.path('evaluation').name} nor {self.run.path('data').name} lists them"
            )
        return list(names)

    @property
    def gallery_size(self) -> int:
        return int(self.config.get("evaluate", {}).get("gallery_size", 25))

    def plot(self, key: str, alt: str) -> str:
        """The rendered PNG for figure `key`, or why there is none."""
        rel = self.figures["files"].get(key)
        if rel is None:
            return note(self.figures["unavailable"].get(key, f"no {key} figure was drawn"))
        path = self.root / rel
        if not path.is_file():
            return note(f"{rel} was deleted while the report was built; run `tfcnn report {self.root}` again")
        return img_tag(path.read_bytes(), alt)

    def model(self):
        def load():
            try:
                return load_trained_model(self.run)
            except TfcnnError as exc:
                return Unavailable(str(exc))

        model = self.run.memo("model", load)
        if isinstance(model, Unavailable):
            raise model
        return model

    def test_split(self, labels: np.ndarray | None = None) -> np.ndarray:
        """The test images in the order evaluate saw them (see :func:`tfcnn.vis.figures.split_images`)."""
        return split_images(self.run, labels)


# --------------------------------------------------------------------------- sections


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{esc(title)}</h2>\n{body}\n</section>'


def section_summary(ctx: RunContext) -> str:
    m, ev, cfg = ctx.metrics, ctx.evaluation, ctx.config
    pairs = [
        ("model", m.get("model", cfg.get("model", {}).get("name"))),
        ("parameters", f"{m['params']:,}" if isinstance(m.get("params"), int) else None),
        ("engine / strategy", f"{m.get('engine', '–')} / {m.get('strategy', '–')} x{m.get('replicas', 1)}" if m else None),
        ("test accuracy", ev.get("test_accuracy", m.get("test_accuracy"))),
        ("test loss", ev.get("test_loss", m.get("test_loss"))),
        (f"top-{ev.get('top_k', m.get('top_k', 'k'))} accuracy", ev.get("top_k_accuracy", m.get("top_k_accuracy"))),
        ("expected calibration error", ev.get("ece", m.get("ece"))),
        ("macro F1", ev.get("averages", {}).get("macro", {}).get("f1", m.get("macro_f1"))),
        ("epochs run (best)", f"{m.get('epochs_run', '–')} ({m.get('best_epoch', '–')})" if m else None),
        ("stop reason", m.get("stop_reason")),
        ("train seconds", m.get("train_seconds")),
        ("images / second", m.get("images_per_second")),
    ]
    body = kv_table([(k, v) for k, v in pairs if v is not None])
    if not m:
        body += note(f"{ctx.run.path('metrics').name} is missing (training did not finish through `tfcnn run`/`tfcnn train`)")
    elif "_error" in m:
        body += note(m["_error"])
    if not ev:
        body += note(f"{ctx.run.path('evaluation').name} is missing; run `tfcnn evaluate {ctx.root}`")
    elif "_error" in ev:
        body += note(ev["_error"])
    extra = {k: v for k, v in m.items() if k not in {"model", "params", "_error"} and not isinstance(v, (dict, list))}
    if extra:
        body += "<details><summary>all of metrics.json</summary>" + kv_table(sorted(extra.items())) + "</details>"
    return _section("summary", "Summary", body)


def section_config(ctx: RunContext) -> str:
    cfg = ctx.config
    data = ctx.data
    body = ""
    if data:
        shape = data.get("input_shape")
        body += kv_table([
            ("source", data.get("source")),
            ("classes", f"{len(data.get('class_names', []))}: {', '.join(map(str, data.get('class_names', [])))}"),
            ("input (H x W x C)", " x ".join(map(str, shape)) if shape else None),
            ("train / val / test", f"{data.get('num_train')} / {data.get('num_val')} / {data.get('num_test')}"),
            ("per-channel mean / std", f"{[round(v, 2) for v in data.get('mean', [])]} / {[round(v, 2) for v in data.get('std', [])]}"),
            ("unreadable files skipped", len(data.get("skipped", []))),
        ])
        body += skipped_files(data.get("skipped"))
    else:
        body += note(f"{ctx.run.path('data').name} is missing")
    if cfg:
        body += f"<details><summary>resolved pipeline configuration ({esc(ctx.run.path('config').name)})</summary><pre>" + esc(
            json.dumps(cfg, indent=2, sort_keys=True)) + "</pre></details>"
        body += augmentation(ctx)
    else:
        body += note(f"{ctx.run.path('config').name} is missing")
    return _section("config", "Data and configuration", body)


def augmentation(ctx: RunContext) -> str:
    """The augment-preview grid (tfcnn.vis.augment_preview) when the run trained with
    augmentation; nothing when it did not."""
    from tfcnn.util import first_line
    from tfcnn.vis.augment_preview import run_preview

    try:
        path = run_preview(ctx.run)
    except Exception as exc:  # noqa: BLE001 - a failed preview costs this figure, not the report
        return "<h3>Training augmentation</h3>" + note(f"could not draw the augmentation preview ({type(exc).__name__}: {first_line(exc)})")
    if path is None:
        return ""
    return "<h3>Training augmentation</h3><p>Training images (left) and augmented draws of them, as the train split sees them.</p>" + img_tag(
        path.read_bytes(), "augmented training samples")


def skipped_files(skipped: Any) -> str:
    """The data files the loader skipped (DataInfo.skipped), each with its reason, in a collapsible list."""
    entries = list(skipped or []) if isinstance(skipped, (list, tuple)) else []
    if not entries:
        return '<p class="skipped">Skipped data files: no files skipped.</p>'
    rows = []
    for e in entries:
        if isinstance(e, dict):
            rows.append([e.get("file", "?"), e.get("reason", "")])
        else:
            rows.append([e, ""])
    return (f'<details class="skipped"><summary>skipped data files ({len(rows)}), with the reason for each</summary>'
            + table(["file", "reason"], rows) + "</details>")


def section_training(ctx: RunContext) -> str:
    ev = ctx.evaluation
    tr = ev.get("training", {})
    m = ctx.metrics
    diag = ctx.diagnostics
    pairs = [
        ("engine", tr.get("engine") or diag.get("engine") or m.get("engine")),
        ("best epoch", tr.get("best_epoch", diag.get("best_epoch"))),
        ("stopped at epoch", tr.get("stopped_epoch", diag.get("stopped_epoch"))),
        ("stop reason", tr.get("stop_reason") or diag.get("stop_reason") or m.get("stop_reason")),
    ]
    body = kv_table([(k, v) for k, v in pairs if v is not None])
    body += "<h3>Learning curves</h3>" + ctx.plot("learning_curves", "train and validation loss and accuracy per epoch")
    body += "<h3>Gradient norms per layer</h3>" + ctx.plot("gradient_norms", "per-layer gradient norm per epoch")
    body += "<h3>Weight distributions</h3>" + ctx.plot("weight_histograms", "weight distributions per layer over epochs")
    hist = ctx.run.read_history()
    if hist:
        cols = list(hist)
        rows = [[hist[c][i] for c in cols] for i in range(len(hist[cols[0]]))]
        body += f"<details><summary>{esc(ctx.run.path('history').name)}</summary>" + table(cols, rows, "num") + "</details>"
    body += _lr_find(ctx)
    return _section("training", "Training", body)


def _lr_find(ctx: RunContext) -> str:
    """The LR range test's curve and suggestion, when `tfcnn lr-find` ran for this run directory."""
    from tfcnn.run import LRFind
    from tfcnn.vis.lr_find import plot_lr_find

    rec = ctx.record(LRFind)
    if not rec:
        return ""
    if "_error" in rec:
        return "<h3>LR range test</h3>" + note(rec["_error"])
    png = plot_lr_find(ctx.run, LRFind.from_dict(rec))
    lr = rec.get("suggested_lr")
    text = (f"suggested learning rate <b>{lr:.2e}</b> (steepest descent of the smoothed loss); "
            if lr is not None else "no clear descent between the start and end rates; ")
    text += f"the loss was lowest at {rec.get('min_loss_lr') or 0:.2e}; {esc(rec.get('stopped', ''))} after {len(rec.get('lr', []))} steps"
    return f"<h3>LR range test (tfcnn lr-find)</h3><p>{text}</p>" + img_tag(png.read_bytes(), "loss against learning rate")


def section_confusion(ctx: RunContext) -> str:
    ev = ctx.evaluation
    body = ctx.plot("confusion_matrix", "confusion matrix of the test split")
    if ev.get("per_class"):
        def auc(d: dict, key: str) -> Any:
            return "n/a" if d.get(key) is None else d[key]  # older evaluations, or a class absent from the test split

        rows = [[r["name"], r["precision"], r["recall"], r["f1"], auc(r, "roc_auc"), auc(r, "pr_auc"), r["support"]] for r in ev["per_class"]]
        for name, avg in ev.get("averages", {}).items():
            rows.append([_Raw(f"<i>{esc(name)} average</i>"), avg["precision"], avg["recall"], avg["f1"],
                         auc(avg, "roc_auc"), auc(avg, "pr_auc"), ev.get("num_test")])
        body += "<h3>Per-class precision, recall, F1, ROC-AUC and PR-AUC (one class vs the rest)</h3>" + table(
            ["class", "precision", "recall", "F1", "ROC-AUC", "PR-AUC", "support"], rows, "num")
    return _section("confusion", "Confusion matrix and per-class metrics", body)


def section_errors(ctx: RunContext) -> str:
    ev = ctx.evaluation
    body = ""
    if ev:
        body += f"<p>{ev.get('num_errors', '?')} of {ev.get('num_test', '?')} test images are misclassified; " \
                f"{ev.get('num_confident_mistakes', '?')} of them with probability above {ev.get('confident_threshold', '?')}.</p>"
    body += "<h3>Misclassified (true / predicted)</h3>" + ctx.plot("misclassified", "misclassified test images")
    body += "<h3>Most confident mistakes (likely mislabeled)</h3>" + ctx.plot("confident_mistakes", "confident mistakes")
    return _section("errors", "Errors", body)


def section_embedding(ctx: RunContext) -> str:
    emb = ctx.evaluation.get("embedding", {})
    body = ""
    if emb:
        body += f"<p>{emb.get('samples')} test images, {emb.get('feature_dim')}-dimensional input of the <code>logits</code> layer; misclassified points are ringed.</p>"
    body += '<div class="row">' + ctx.plot("embedding_pca", "PCA of penultimate features") + ctx.plot(
        "embedding_tsne", "t-SNE of penultimate features") + "</div>"
    return _section("embedding", "Feature embeddings", body)


def section_calibration(ctx: RunContext) -> str:
    ev = ctx.evaluation
    body = ""
    if "ece" in ev:
        body += f"<p>Expected calibration error: <b>{fmt(ev['ece'])}</b> ({ev.get('calibration', {}).get('bins', '?')} equal-width confidence bins). 0 means the top-1 probability is, on average, the accuracy.</p>"
    cal = ev.get("calibration", {})
    if "temperature" in cal:
        body += (f"<p>Temperature scaling (fitted on the validation split): T = <b>{cal['temperature']:.4f}</b>; test ECE "
                 f"{fmt(ev.get('ece'))} before, <b>{fmt(cal.get('ece_scaled'))}</b> after. The exported models return "
                 "softmax(logits / T) (contract.json <code>output.temperature</code>); accuracy is unchanged.</p>")
        body += '<div class="row">' + ctx.plot("reliability", "reliability diagram") + ctx.plot(
            "reliability_scaled", "reliability diagram after temperature scaling") + "</div>"
    else:
        body += ctx.plot("reliability", "reliability diagram")
    return _section("calibration", "Calibration", body)


def _guard(fn: Callable[[], str]) -> str:
    try:
        return fn()
    except Unavailable as exc:
        return note(str(exc))


def section_gradcam(ctx: RunContext) -> str:
    from tfcnn.vis import campanels

    def build() -> str:
        ok, why = campanels.gradcam_available()
        if not ok:
            raise Unavailable(why)
        ev = read_record(ctx.run, Evaluation)
        if ev is None:
            raise Unavailable(f"{ctx.run.path('evaluation').name} is missing; run `tfcnn evaluate {ctx.root}`")
        z = load_npz(ctx.run, ev, "predictions")
        probs, labels, predicted = z["probs"], z["labels"], z["predicted"]
        x = ctx.test_split(labels)
        model, names = ctx.model(), ctx.class_names
        conf = probs.max(axis=1)
        right = np.flatnonzero(predicted == labels)
        wrong = np.flatnonzero(predicted != labels)
        n = min(_CAM_ROWS, ctx.gallery_size)
        out = (f"<p>Grad-CAM on layer <code>{esc(campanels.cam_layer(model))}</code>, the last feature map larger "
               "than 1x1: red = evidence for the named class.</p>")
        out += "<h3>Right predictions</h3>"
        if len(right):
            pick = _one_per_class(right, labels, n)
            out += _cam_figure(model, campanels.prediction_rows(model, x, labels, predicted, probs, pick, names),
                               "Correct: Grad-CAM of the predicted class", "Grad-CAM of correct predictions")
        else:
            out += note("the model got no test image right")
        out += "<h3>Wrong predictions</h3>"
        if len(wrong):
            pick = wrong[np.argsort(-conf[wrong], kind="stable")][:n]
            out += _cam_figure(model, campanels.prediction_rows(model, x, labels, predicted, probs, pick, names),
                               "Wrong: Grad-CAM of the predicted and of the true class", "Grad-CAM of wrong predictions")
        else:
            out += note("the model made no mistakes on the test split")
        return out

    return _section("gradcam", "Grad-CAM", _guard(build))


def _cam_figure(model: Any, rows: list[dict], title: str, alt: str) -> str:
    """A Grad-CAM gallery, or "not available: ... constant ..." when no map in it has anything to show."""
    from tfcnn.vis import campanels

    flat, total = campanels.flat_count(rows)
    if total and flat == total:
        return note(campanels.constant_note(model))
    out = img_tag(campanels.rows_png(rows, title), alt)
    if flat:
        out += note(f"{flat} of {total} maps: {campanels.constant_note(model)} (their panels say so)")
    return out


def _one_per_class(candidates: np.ndarray, labels: np.ndarray, n: int) -> list[int]:
    """Up to n indices cycling through classes, so the gallery is not all one easy class."""
    by_class: dict[int, list[int]] = {}
    for i in candidates:
        by_class.setdefault(int(labels[i]), []).append(int(i))
    picked: list[int] = []
    depth = 0
    while len(picked) < n and any(len(v) > depth for v in by_class.values()):
        for c in sorted(by_class):
            if len(by_class[c]) > depth and len(picked) < n:
                picked.append(by_class[c][depth])
        depth += 1
    return picked


def export_dirs(ctx: RunContext) -> list[Path]:
    """Version directories listed in exports.json (strings or {"version_dir": ...} entries)."""
    raw = ctx.json(ctx.run.path("exports"))
    if isinstance(raw, dict):
        raw = raw.get("exports", raw.get("versions", []))
    out = []
    for entry in raw or []:
        p = entry if isinstance(entry, str) else (entry.get("version_dir") or entry.get("path") if isinstance(entry, dict) else None)
        if not p:
            continue
        path = Path(p)
        if not path.is_absolute() and not path.exists() and (ctx.root / path).exists():
            path = ctx.root / path
        out.append(path)
    return out


def section_export(ctx: RunContext) -> str:
    if not ctx.run.has("exports"):
        return _section("export", "Exports", note(f"this run has not been exported yet (`tfcnn export {ctx.root} --verify`)"))
    dirs = export_dirs(ctx)
    if not dirs:
        return _section("export", "Exports", note(f"{ctx.run.path('exports').name} lists no version directories"))
    return _section("export", "Exports", "\n".join(_export_version(ctx, d) for d in dirs))


def _export_version(ctx: RunContext, vdir: Path) -> str:
    out = f"<h3>{esc(vdir)}</h3>"
    if not vdir.is_dir():
        return out + note(f"{vdir} no longer exists (moved or deleted)")
    card = ctx.json(vdir / _CARD_FILE)
    if card.get("artifacts"):
        rows = [[a.get("path"), a.get("format"), size_text(a.get("bytes")), str(a.get("sha256", ""))[:12]] for a in card["artifacts"]]
        out += f"<details><summary>artifacts ({_CARD_FILE})</summary>" + table(["file", "format", "size", "sha256"], rows) + "</details>"
    ver = ctx.json(vdir / _VERIFICATION_FILE)
    if not ver:
        return out + note(f"not verified yet: run `tfcnn verify {vdir}`")
    keras_acc = ver.get("keras", {}).get("accuracy")
    verdict = '<span class="ok">passed</span>' if ver.get("passed") else '<span class="bad">FAILED</span>'
    out += (f"<p>{verdict} on {esc(ver.get('samples', '?'))} test images, {esc(ver.get('threads', '?'))} thread(s); "
            f"Keras accuracy {esc(fmt(keras_acc))}.</p>")
    rows = []
    for name, r in ver.get("formats", {}).items():
        notes = "; ".join(map(str, r.get("failures") or []))
        if isinstance(r.get("predictions"), str):
            notes = (notes + "; " if notes else "") + r["predictions"]
        status = _Raw(_verdict(r.get("passed")))
        rows.append([name, status, r.get("accuracy"), r.get("agreement"), r.get("max_abs_diff"), r.get("mean_abs_diff"),
                     size_text(r.get("bytes")), r.get("latency_ms_median"), r.get("latency_ms_p95"), notes])
    out += table(["format", "passed", "accuracy", "agreement", "max |Δp|", "mean |Δp|", "size", "p50 ms", "p95 ms", "notes"], rows, "num")
    mp = ver.get("mediapipe") or {}
    if mp:
        mrows = [[v, _Raw(_verdict(m.get("passed"))), m.get("checked"), m.get("top1_agreement_with_litert"),
                  m.get("labels_from_metadata"), "; ".join(map(str, m.get("failures") or [])) or m.get("skipped") or ""]
                 for v, m in mp.items()]
        out += "<h4>MediaPipe Tasks (labels from the TFLite metadata)</h4>" + table(
            ["variant", "passed", "images", "top-1 agreement with LiteRT", "labels from metadata", "notes"], mrows, "num")
    out += _quantization(card, ver)
    out += _cross_checks(card, ver)
    if ver.get("failures"):
        out += '<h4>Failures</h4><ul class="bad">' + "".join(f"<li>{esc(f)}</li>" for f in ver["failures"]) + "</ul>"
    out += "<h4>Test images whose prediction changed under int8 quantization</h4>"
    out += _guard(lambda: _int8_changed(ctx, ver))
    return out


def _quantization(card: dict[str, Any], ver: dict[str, Any]) -> str:
    """Each TFLite file's recipe as read back at export (contract.json), and the worst layers of
    the per-layer quantization analysis verify checked (tfcnn.export.quant_debug)."""
    artifacts = (card.get("contract") or {}).get("artifacts") or {}
    rows = [[fmt_name, r.get("kind"), ", ".join(r.get("weight_dtypes") or []), r.get("weight_granularity") or "–",
             ", ".join(r.get("activation_dtypes") or []), f"{', '.join(r.get('input_dtypes') or [])} → {', '.join(r.get('output_dtypes') or [])}"]
            for fmt_name, e in artifacts.items() if isinstance(e, dict) and (r := e.get("recipe"))]
    out = ""
    if rows:
        out += "<h4>Quantization recipe, read back from each TFLite file</h4>" + table(
            ["format", "recipe", "weights", "granularity", "activations", "input → output"], rows)
    for fmt_name, r in (ver.get("formats") or {}).items():
        qd = r.get("quant_debug")
        if not qd:
            continue
        out += f"<h4>Per-layer quantization error of {esc(fmt_name)} (lowest SNR first)</h4>"
        if not qd.get("worst"):
            out += note(f"not available: {qd.get('error') or 'the analysis file is missing or unreadable'}")
            continue
        match = qd.get("matches_published") or {}
        out += (f"<p>{esc(qd.get('method'))}; measured on {esc(qd.get('measured_on'))}; {esc(qd.get('layers'))} quantized layers, "
                f"{esc(match.get('same_scale', '?'))} with the published file's exact scale.</p>")
        wrows = [[w["index"], w["op"], w["tensor"].split(";")[0], "exact" if w["snr_db"] is None else w["snr_db"], w["cosine"],
                  w.get("rmse_over_scale")] for w in qd["worst"]]
        out += table(["layer", "op", "tensor", "SNR dB", "cosine", "RMSE / scale"], wrows, "num")
    return out


def _cross_checks(card: dict[str, Any], ver: dict[str, Any]) -> str:
    """The second runtimes verify ran on each file (OpenVINO: agrees / disagrees / not compared, and
    why), the warnings they reported without failing, and each TFLite file's GPU-delegate record."""
    from tfcnn.export.gpu_delegate import describe

    out = ""
    for client in ver.get("cross_checks") or []:
        rows = [[fmt_name, _Raw(_verdict(m.get("passed"))), m.get("checked"), m.get("compared_with"), m.get("max_abs_diff"),
                 m.get("top1_agreement"), m.get("unsupported") or m.get("skipped") or "; ".join(m.get("warnings") or m.get("failures") or [])]
                for fmt_name, m in (ver.get(client) or {}).items()]
        out += f"<h4>Cross-check: the same files in {esc(client)}</h4>" + table(
            ["format", "agrees", "images", "compared with", "max |Δ|", "top-1 agreement", "notes"], rows, "num")
    if ver.get("warnings"):
        out += "<h4>Cross-check warnings (reported, not failing verification)</h4><ul>" + "".join(
            f"<li>{esc(w)}</li>" for w in ver["warnings"]) + "</ul>"
    artifacts = (card.get("contract") or {}).get("artifacts") or {}
    gpu = [[e.get("file", f), describe(e["gpu_delegate"])] for f, e in artifacts.items() if isinstance(e, dict) and "gpu_delegate" in e]
    if gpu:
        out += "<h4>GPU delegate (tf.lite.experimental.Analyzer)</h4>" + table(["file", "GPU delegate"], gpu)
    return out


def _verdict(passed: Any) -> str:
    return '<span class="ok">yes</span>' if passed else ('<span class="bad">NO</span>' if passed is False else "–")


def _int8_changed(ctx: RunContext, ver: dict[str, Any]) -> str:
    from tfcnn.vis import campanels

    changed = ver.get("int8_changed")
    if changed is None or "tflite_int8" not in ver.get("formats", {}):
        raise Unavailable("the tflite_int8 variant was not exported or not verified in this version")
    if not changed:
        return "<p>None: the int8 model agrees with the float model on every verified test image.</p>"
    names = ctx.class_names
    n = min(len(changed), ctx.gallery_size)
    rows = [[c.get("index"), names[c["label"]] if c.get("label") is not None else "–", names[c["keras_class"]],
             c.get("keras_prob"), names[c["int8_class"]], c.get("int8_prob")] for c in changed]
    out = f"<p>{len(changed)} image(s) changed class.</p>"
    out += table(["test index", "true", "float class", "float p", "int8 class", "int8 p"], rows, "num")
    ok, why = campanels.gradcam_available()
    if not ok:
        raise Unavailable(why)
    x = ctx.test_split()
    bad = [c["index"] for c in changed[:n] if not 0 <= int(c["index"]) < len(x)]
    if bad:
        raise Unavailable(f"int8_changed indices {bad} are outside the reloaded test split ({len(x)} images)")
    model = ctx.model()
    rows_ = campanels.int8_rows(model, x, changed[:n], names)
    out += _cam_figure(model, rows_, "Float model Grad-CAM: float class vs int8 class",
                       "Grad-CAM of the float model for the float and the int8 class")
    if n < len(changed):
        out += f"<p>Showing the first {n} of {len(changed)}.</p>"
    return out


SECTIONS: list[tuple[str, str, Callable[[RunContext], str]]] = [
    ("summary", "Summary", section_summary),
    ("config", "Data and configuration", section_config),
    ("training", "Training", section_training),
    ("confusion", "Confusion matrix", section_confusion),
    ("errors", "Errors", section_errors),
    ("embedding", "Embeddings", section_embedding),
    ("calibration", "Calibration", section_calibration),
    ("gradcam", "Grad-CAM", section_gradcam),
    ("export", "Exports", section_export),
]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:14px 28px}header h1{margin:0;font-size:1.5em}header p{margin:4px 0 0;color:#c8cfdb}
nav{padding:8px 28px;background:#e8ebf0;position:sticky;top:0}nav a{margin-right:14px;color:#24508f;text-decoration:none}
main{padding:0 28px 40px;max-width:1280px}section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:6px 20px 16px;margin-top:18px}
h2{border-bottom:1px solid #dde1e7;padding-bottom:4px}img{max-width:min(100%,1100px);height:auto;display:block;margin:8px 0}
.row{display:flex;flex-wrap:wrap;gap:12px}.row img{max-width:48%}
table{border-collapse:collapse;margin:8px 0;font-size:.92em}th,td{border:1px solid #dde1e7;padding:3px 8px;text-align:left}
thead th{background:#eef1f5}table.num td{font-variant-numeric:tabular-nums}table.kv th{background:#f3f5f8;font-weight:600}
.na{background:#fff7e0;border-left:4px solid #e0a800;padding:6px 10px}.ok{color:#13793b;font-weight:600}.bad{color:#b3261e;font-weight:700}
pre{background:#f3f5f8;padding:10px;overflow:auto;font-size:.85em}details{margin:8px 0}summary{cursor:pointer;color:#24508f}
"""


def section_reconstruction(ctx: RunContext) -> str:
    """Reconstructions, VAE samples and interpolations, the anomaly histogram (tfcnn.vis.reconstruction)."""
    from tfcnn.vis import reconstruction as recon_vis

    return _section("reconstruction", "Reconstruction", _guard(lambda: recon_vis.section_body(ctx.run, None, img_tag, note, table, kv_table)))


def section_reconstruction_export(ctx: RunContext) -> str:
    """Each export version's verification in the reconstruction task's terms."""
    dirs = export_dirs(ctx)
    if not dirs:
        return _section("export", "Exports", note(f"not exported yet: run `tfcnn export {ctx.root}`"))
    out = ""
    for vdir in dirs:
        ver = ctx.json(vdir / _VERIFICATION_FILE)
        out += f"<h3>{esc(vdir)}</h3>"
        if not ver:
            out += note(f"not verified yet: run `tfcnn verify {vdir}`")
            continue
        verdict = '<span class="ok">passed</span>' if ver.get("passed") else '<span class="bad">FAILED</span>'
        out += f"<p>{verdict} on {esc(ver.get('samples', '?'))} test images; Keras ROC-AUC {esc(fmt(ver.get('keras', {}).get('roc_auc')))}.</p>"
        rows = [
            [name, _Raw(_verdict(r.get("passed"))), r.get("max_abs_diff"), r.get("mean_abs_diff"), r.get("psnr_vs_keras"),
             r.get("flag_agreement"), r.get("roc_auc"), size_text(r.get("bytes")), r.get("latency_ms_median"),
             "; ".join(map(str, r.get("failures") or [])) or r.get("predictions", "")]
            for name, r in ver.get("formats", {}).items()
        ]
        out += table(["format", "passed", "max |Δr|", "mean |Δr|", "PSNR vs Keras (dB)", "flag agreement", "ROC-AUC", "size",
                      "p50 ms", "notes"], rows, "num")
    return _section("export", "Exports", out)


def section_detection(ctx: RunContext) -> str:
    """COCO metrics, per-class AP, PR curves and the gallery scenes with boxes (tfcnn.vis.detection)."""
    from tfcnn.vis import detection as det_vis

    return _section("detection", "Detection", _guard(lambda: det_vis.section_body(ctx.run, img_tag, note, table, kv_table)))


def section_detection_export(ctx: RunContext) -> str:
    """Each export version's verification in the detection task's terms (mAP, box agreement)."""
    from tfcnn.vis import detection as det_vis

    dirs = export_dirs(ctx)
    if not dirs:
        return _section("export", "Exports", note(f"not exported yet: run `tfcnn export {ctx.root} --verify`"))
    out = ""
    for vdir in dirs:
        out += f"<h3>{esc(vdir)}</h3>"
        if not vdir.is_dir():
            out += note(f"{vdir} no longer exists (moved or deleted)")
            continue
        ver = ctx.json(vdir / _VERIFICATION_FILE)
        if not ver or "_error" in ver:
            out += note(ver.get("_error") if ver else f"not verified yet: run `tfcnn verify {vdir}`")
            continue
        verdict = '<span class="ok">passed</span>' if ver.get("passed") else '<span class="bad">FAILED</span>'
        out += (f"<p>{verdict} on {esc(ver.get('samples', '?'))} test scenes; Keras mAP@0.5 "
                f"{esc(fmt(ver.get('keras', {}).get('map_50')))}.</p>")
        rows = det_vis.export_rows(ver, size_text, lambda passed: _Raw(_verdict(passed)))
        out += table(det_vis.EXPORT_HEADERS, rows, "num")
        out += _quantization(ctx.json(vdir / _CARD_FILE), ver)
        out += _cross_checks(ctx.json(vdir / _CARD_FILE), ver)
        if ver.get("failures"):
            out += '<h4>Failures</h4><ul class="bad">' + "".join(f"<li>{esc(f)}</li>" for f in ver["failures"]) + "</ul>"
    return _section("export", "Exports", out)


def section_segmentation(ctx: RunContext) -> str:
    """Scores, per-class IoU / Dice, confusion matrix and mask overlays (tfcnn.vis.segmentation)."""
    from tfcnn.vis import segmentation as seg_vis

    return _section("segmentation", "Segmentation", _guard(lambda: seg_vis.section_body(ctx.run, img_tag, note, table, kv_table)))


def section_task_export(ctx: RunContext) -> str:
    """Each export version's verification rows in the run's task's own verify columns."""
    from tfcnn.tasks import get_task

    dirs = export_dirs(ctx)
    if not dirs:
        return _section("export", "Exports", note(f"not exported yet: run `tfcnn export {ctx.root} --verify`"))
    columns = get_task(ctx.config.get("task", "classification")).verify_columns()
    out = ""
    for vdir in dirs:
        ver = ctx.json(vdir / _VERIFICATION_FILE)
        out += f"<h3>{esc(vdir)}</h3>"
        if not ver:
            out += note(f"not verified yet: run `tfcnn verify {vdir}`")
            continue
        verdict = '<span class="ok">passed</span>' if ver.get("passed") else '<span class="bad">FAILED</span>'
        keras = ", ".join(f"{k} {fmt(v)}" for k, v in (ver.get("keras") or {}).items())
        out += f"<p>{verdict} on {esc(ver.get('samples', '?'))} test images; Keras {esc(keras)}.</p>"
        rows = [
            [name, _Raw(_verdict(r.get("passed"))), *[r.get(key) for _, key, _, _ in columns], size_text(r.get("bytes")),
             r.get("latency_ms_median"), "; ".join(map(str, r.get("failures") or [])) or r.get("predictions", "")]
            for name, r in ver.get("formats", {}).items()
        ]
        out += table(["format", "passed", *[head for head, *_ in columns], "size", "p50 ms", "notes"], rows, "num")
        out += _quantization(ctx.json(vdir / _CARD_FILE), ver)
        out += _cross_checks(ctx.json(vdir / _CARD_FILE), ver)
    return _section("export", "Exports", out)


def _sections(ctx: RunContext) -> list[tuple[str, str, Callable[[RunContext], str]]]:
    """The sections of this run's task: a classifier's SECTIONS, or another task's own list."""
    return TASK_SECTIONS.get(ctx.config.get("task", "classification"), SECTIONS)


# Tasks other than classification: the generic sections plus their own (no confusion matrix,
# calibration or Grad-CAM for a model without classes).
TASK_SECTIONS: dict[str, list[tuple[str, str, Callable[[RunContext], str]]]] = {
    "reconstruction": [s for s in SECTIONS if s[0] in ("summary", "config", "training")]
    + [("reconstruction", "Reconstruction", section_reconstruction), ("export", "Exports", section_reconstruction_export)],
    "detection": [s for s in SECTIONS if s[0] in ("summary", "config", "training")]
    + [("detection", "Detection", section_detection), ("export", "Exports", section_detection_export)],
    "segmentation": [s for s in SECTIONS if s[0] in ("summary", "config", "training")]
    + [("segmentation", "Segmentation", section_segmentation), ("export", "Exports", section_task_export)],
}


def render(ctx: RunContext) -> str:
    name = ctx.config.get("name") or ctx.root.name
    built = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    sections = _sections(ctx)
    nav = "".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title, _ in sections)
    body = "\n".join(fn(ctx) for _, _, fn in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>tfcnn report: {esc(name)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>tfcnn run report: {esc(name)}</h1><p>{esc(ctx.root)} · built {esc(built)}</p></header>"
        f"<nav>{nav}</nav><main>\n{body}\n</main></body></html>\n"
    )


def build_report(run: "Run | Path | str", problems: list[str] | None = None) -> Path:
    """Render the run's figures, then write its report.html atomically and return the path.

    A run file that exists but cannot be read (corrupt JSON, another schema) is shown in the
    report where its section would be, and appended to ``problems`` when a list is given, so
    ``tfcnn report`` can exit non-zero instead of presenting an incomplete report as complete.
    """
    run = run if isinstance(run, Run) else Run.open(run, need=())
    figures = render_figures(run)
    path = run.path("report")
    ctx = RunContext(run, figures)
    write_text(path, render(ctx))
    for message in ctx.problems:
        log.warning("report: %s", message)
    if problems is not None:
        problems.extend(ctx.problems)
    return path
