"""Every figure of a run, drawn from the numbers earlier stages wrote (:func:`render_figures`).

The evaluate stage writes the Evaluation record, predictions and the embedding; the engines
write the history, the Diagnostics record and TensorBoard logs. This module turns those files
into the PNGs under the run's ``plots`` directory and says, for each figure it cannot draw,
why (the report shows the reason instead of a broken image). Drawing never re-runs the model;
only the two galleries need the test images, taken from the run's data bundle
(:func:`tfcnn.data.bundle_for`, decoded once per process).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from tfcnn.data import bundle_for
from tfcnn.evaluate.training import gradient_norms, read_history, read_record, read_weight_histograms, stop_epochs
from tfcnn.run import Diagnostics, Evaluation, Metrics, Run
from tfcnn.util import first_line, log
from tfcnn.vis import plots

# Figure key -> file name in the run's plots directory (the keys the report asks for).
PLOTS = {
    "confusion_matrix": "confusion_matrix.png",
    "misclassified": "misclassified.png",
    "confident_mistakes": "confident_mistakes.png",
    "reliability": "reliability.png",
    "reliability_scaled": "reliability_scaled.png",
    "embedding_pca": "embedding_pca.png",
    "embedding_tsne": "embedding_tsne.png",
    "learning_curves": "learning_curves.png",
    "gradient_norms": "gradient_norms.png",
    "weight_histograms": "weight_histograms.png",
}


class Unavailable(Exception):
    """A figure cannot be drawn; the message is the reason shown in its place."""


def _caption(names: list[str], true: int, pred: int, prob: float) -> str:
    return f"{names[true]} / {names[pred]}\np={prob:.2f}"


def split_images(run: Run, labels: np.ndarray | None = None) -> np.ndarray:
    """The test images in the order evaluate saw them, from the run's data bundle (or Unavailable).

    With ``labels`` (the evaluated ones), a reloaded split that differs is refused rather than
    captioned wrongly.
    """
    try:
        x, y = bundle_for(run).arrays["test"]
    except Exception as exc:  # noqa: BLE001 - any failure here costs the image figures, not the report
        raise Unavailable(
            f"could not reload the test split from {run.path('config').name} ({type(exc).__name__}: {first_line(exc)})"
        ) from None
    if labels is not None and (len(y) != len(labels) or not np.array_equal(np.asarray(y), labels)):
        raise Unavailable(f"the reloaded test split differs from the one evaluated; re-run `tfcnn evaluate {run.root}`")
    return x


def load_npz(run: Run, ev: Evaluation, kind: str) -> dict[str, np.ndarray]:
    """One of the evaluation's arrays files, as listed in its record (or Unavailable)."""
    rel = ev.files.get(kind)
    if rel is None:
        raise Unavailable(ev.unavailable.get(kind, f"the evaluation wrote no {kind} file"))
    path = run.root / rel
    if not path.is_file():
        raise Unavailable(f"{rel} was deleted; re-run `tfcnn evaluate {run.root}`")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


class _Figures:
    """One rendering pass: the records read once, each figure drawn or explained."""

    def __init__(self, run: Run):
        self.run = run
        self.ev: Evaluation | None = read_record(run, Evaluation)
        self.diag: Diagnostics | None = read_record(run, Diagnostics)
        self.metrics: Metrics | None = read_record(run, Metrics)
        self._predictions: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------- inputs
    def evaluation(self) -> Evaluation:
        if self.ev is None:
            path = self.run.path("evaluation")
            why = "is missing" if not path.is_file() else "could not be read"
            raise Unavailable(f"{path.name} {why}; run `tfcnn evaluate {self.run.root}`")
        return self.ev

    def detail(self, key: str) -> Any:
        ev = self.evaluation()
        if key not in ev.details:
            raise Unavailable(f"{self.run.path('evaluation').name} has no {key!r}; re-run `tfcnn evaluate {self.run.root}`")
        return ev.details[key]

    def predictions(self) -> dict[str, np.ndarray]:
        if self._predictions is None:
            self._predictions = load_npz(self.run, self.evaluation(), "predictions")
        return self._predictions

    def layer_order(self) -> list[str]:
        return list(self.ev.details.get("layer_names", [])) if self.ev is not None else []

    # ------------------------------------------------------------- figures
    def confusion_matrix(self):
        return plots.confusion_matrix_figure(np.asarray(self.detail("confusion_matrix")), self.detail("class_names"))

    def reliability(self):
        ev = self.evaluation()
        return plots.reliability_figure(self.detail("calibration"), float(ev.headline.get("ece", float("nan"))))

    def reliability_scaled(self):
        cal = self.detail("calibration")
        if "scaled" not in cal:
            raise Unavailable("temperature scaling is off (evaluate.temperature_scaling = false)")
        return plots.reliability_figure(cal["scaled"], float(cal["ece_scaled"]), f"After temperature scaling, T = {cal['temperature']:.3f}")

    def misclassified(self):
        ev = self.evaluation()
        shown = [int(i) for i in self.detail("misclassified_shown")]
        if not shown:
            raise Unavailable(ev.unavailable.get("misclassified", "the model made no mistakes on the test split"))
        p = self.predictions()
        x = split_images(self.run, p["labels"])
        names, conf = list(self.detail("class_names")), p["probs"].max(axis=1)
        captions = [_caption(names, p["labels"][i], p["predicted"][i], conf[i]) for i in shown]
        title = f"Misclassified test images (true / predicted), {len(shown)} of {self.detail('num_errors')}"
        return plots.image_grid_figure(x[shown], captions, title)

    def confident_mistakes(self):
        ev = self.evaluation()
        mistakes = self.detail("confident_mistakes")
        if not mistakes:
            raise Unavailable(ev.unavailable.get("confident_mistakes", "no confident mistakes"))
        x = split_images(self.run, self.predictions()["labels"])
        names = list(self.detail("class_names"))
        idx = [int(m["index"]) for m in mistakes]
        captions = [_caption(names, m["label"], m["predicted"], m["prob"]) for m in mistakes]
        title = f"Most confident mistakes (p > {self.detail('confident_threshold'):g}): check these labels"
        return plots.image_grid_figure(x[idx], captions, title)

    def _embedding(self, key: str, title: Callable[[dict[str, np.ndarray]], str]):
        ev = self.evaluation()
        if key in ev.unavailable:
            raise Unavailable(ev.unavailable[key])
        z = load_npz(self.run, ev, "embedding")
        coords = key.removeprefix("embedding_")
        if coords not in z:
            raise Unavailable(f"the embedding file holds no {coords} coordinates")
        wrong = z["predicted"] != z["labels"]
        return plots.embedding_figure(z[coords], z["labels"], list(self.detail("class_names")), title(z), wrong)

    def embedding_pca(self):
        return self._embedding(
            "embedding_pca",
            lambda z: f"PCA of penultimate features ({100 * float(np.sum(z['pca_explained'])):.1f}% variance)",
        )

    def embedding_tsne(self):
        return self._embedding("embedding_tsne", lambda z: "t-SNE of penultimate features")

    def learning_curves(self):
        history = read_history(self.run)
        if not history:
            raise Unavailable(
                f"{self.run.path('history').name} is missing or empty (the model was not trained by a tfcnn engine)"
            )
        best, stopped = stop_epochs(self.diag, self.metrics)
        return plots.learning_curves_figure(history, best, stopped)

    def gradient_norms(self):
        norms = gradient_norms(self.diag, self.layer_order())
        if norms:
            return plots.gradient_norms_figure(*norms)
        engine = (self.diag.engine if self.diag else "") or (self.metrics.engine if self.metrics else "")
        if self.diag is None:
            raise Unavailable(f"{self.run.path('diagnostics').name} is missing")
        if engine == "fit":
            raise Unavailable("the fit engine does not record per-layer gradient norms; train with train.engine = 'tape'")
        raise Unavailable("no gradient norms were recorded (train.gradient_norms = false?)")

    def weight_histograms(self):
        tb = self.run.path("tensorboard")
        weights = read_weight_histograms(tb, self.layer_order())
        if weights:
            return plots.weight_distribution_figure(weights)
        if not tb.is_dir():
            raise Unavailable(f"no {tb.name}/ folder in the run (train.tensorboard = false)")
        raise Unavailable("TensorBoard logs hold no weight histograms (train.histogram_freq = 0)")


def render_figures(run: "Run | Path | str") -> dict[str, dict[str, str]]:
    """Draw every figure the run's files allow into its plots directory.

    Returns ``{"files": {key: path relative to the run}, "unavailable": {key: why}}`` with every
    key of :data:`PLOTS` in exactly one of the two. A figure that cannot be drawn any more has
    its old PNG removed, so the directory never shows a stale picture.
    """
    run = run if isinstance(run, Run) else Run.open(run, need=())
    figs = _Figures(run)
    files: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    for key, name in PLOTS.items():
        path = run.path("plots") / name
        try:
            fig = getattr(figs, key)()
        except Unavailable as exc:
            unavailable[key] = str(exc)
            path.unlink(missing_ok=True)
            continue
        plots.save_figure(fig, run.dir("plots") / name)
        files[key] = str(path.relative_to(run.root))
    log.info(f"figures: {len(files)} drawn into {run.path('plots')}" + (f", {len(unavailable)} not available" if unavailable else ""))
    return {"files": files, "unavailable": unavailable}
