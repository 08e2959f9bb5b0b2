"""The reconstruction task's figures and report sections: reconstructions next to their inputs,
VAE prior samples and latent interpolation strips, and the anomaly-score histogram with the
threshold. Drawn from the arrays :mod:`tfcnn.evaluate.reconstruction` saved (never re-running
the model), so a report can be rebuilt cheaply.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from tfcnn.run import Evaluation, Run
from tfcnn.vis import plots


class NotDrawn(Exception):
    """A figure cannot be drawn; the message says why (the report shows it instead)."""


def _gray(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    a = np.clip(np.asarray(img, np.float32), 0.0, 1.0)
    if a.ndim == 3 and a.shape[-1] == 1:
        return a[..., 0], "gray"
    return a, None


def rows_figure(rows: Sequence[tuple[str, np.ndarray]], titles: Sequence[str] | None, suptitle: str) -> Figure:
    """Image rows of equal length ([0, 1] images), each labelled at its left."""
    n_rows = len(rows)
    cols = max(len(r[1]) for r in rows)
    fig = Figure(figsize=(1.1 * cols + 1.2, 1.2 * n_rows + 0.6))
    axes = fig.subplots(n_rows, cols, squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c < len(images):
                shown, cmap = _gray(images[c])
                ax.imshow(shown, cmap=cmap, vmin=0, vmax=1)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0 and titles is not None and c < len(titles):
                ax.set_title(titles[c], fontsize=7)
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def reconstruction_figure(arrays: dict[str, np.ndarray], class_names: Sequence[str], n: int, noisy: bool) -> Figure:
    """Test images (one class after another), the model's input when noisy, and the reconstruction."""
    shown = arrays["gallery"][:n]
    k = len(shown)
    labels = arrays["labels"][shown]
    rows = [("original", arrays["gallery_clean"][:k])]
    if noisy:
        rows.append(("noisy input", arrays["gallery_input"][:k]))
    rows.append(("reconstruction", arrays["gallery_recon"][:k]))
    titles = [class_names[int(c)][:10] if int(c) < len(class_names) else str(c) for c in labels]
    return rows_figure(rows, titles, "Test images and their reconstructions")


def samples_figure(samples: np.ndarray, cols: int) -> Figure:
    """Decoded draws from the VAE's prior N(0, I)."""
    cols = max(1, min(cols, len(samples)))
    rows = [(f"z ~ N(0, I)" if i == 0 else "", samples[i * cols : (i + 1) * cols]) for i in range(int(np.ceil(len(samples) / cols)))]
    return rows_figure(rows, None, f"{len(samples)} samples from the prior, decoded")


def interpolation_figure(strips: np.ndarray, pairs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> Figure:
    """One strip per pair of test images: decoded codes along the straight line between them."""
    rows = []
    for (a, b), strip in zip(pairs, strips):
        la, lb = (class_names[int(labels[i])] if int(labels[i]) < len(class_names) else str(labels[i]) for i in (a, b))
        rows.append((f"{la[:9]} → {lb[:9]}", strip))
    steps = strips.shape[1]
    titles = [f"t={t:.2f}" for t in np.linspace(0, 1, steps)]
    return rows_figure(rows, titles, "Latent interpolation between two test images (decoded)")


def histogram_figure(
    scores: np.ndarray, is_anomaly: np.ndarray, threshold: float, bins: int, title: str, held_out: str
) -> Figure:
    """Anomaly-score histograms of normal and held-out images with the threshold line."""
    fig = Figure(figsize=(7.5, 3.8))
    ax = fig.subplots()
    finite = np.asarray(scores)[np.isfinite(scores)]
    edges = np.histogram_bin_edges(finite, bins=bins) if len(finite) else bins
    ax.hist(scores[~is_anomaly], bins=edges, alpha=0.6, label="normal", color="#24508f", density=True)
    ax.hist(scores[is_anomaly], bins=edges, alpha=0.6, label=f"held out: {held_out}", color="#b3261e", density=True)
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set_xlabel("anomaly score (reconstruction MSE)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def figures(run: Run, ev: Evaluation) -> dict[str, "Figure | str"]:
    """Every reconstruction figure of the run, or for each one why it was not drawn."""
    out: dict[str, Figure | str] = {}
    rel = ev.files.get("predictions")
    if rel is None or not (run.root / rel).is_file():
        why = f"the evaluation's arrays are missing; re-run `tfcnn evaluate {run.root}`"
        return {k: why for k in ("reconstructions", "prior_samples", "interpolations", "anomaly_histogram")}
    with np.load(run.root / rel) as z:
        arrays = {k: z[k] for k in z.files}
    names = list(ev.details.get("class_names", []))
    grid = int(run.config().reconstruction.grid_size)
    out["reconstructions"] = reconstruction_figure(arrays, names, max(grid, 10), "noise" in ev.details)
    out["prior_samples"] = (
        samples_figure(arrays["prior_samples"], grid) if "prior_samples" in arrays else ev.unavailable.get("prior_samples", "no prior samples")
    )
    out["interpolations"] = (
        interpolation_figure(arrays["interpolations"], arrays["interpolation_pairs"], arrays["labels"], names)
        if "interpolations" in arrays
        else ev.unavailable.get("interpolations", "no interpolations")
    )
    anomaly = ev.details.get("anomaly")
    if anomaly and "mse" in arrays:
        k = int(anomaly["held_out_class"])
        is_anom = np.asarray(arrays["labels"]) == k
        auc = ev.headline.get("test_roc_auc")
        out["anomaly_histogram"] = histogram_figure(
            np.asarray(arrays["mse"], np.float64), is_anom, float(anomaly["threshold"]), int(anomaly.get("hist_bins", 50)),
            f"Test split: ROC-AUC {auc:.4f}" if auc is not None else "Test split", anomaly["held_out_label"],
        )
    else:
        out["anomaly_histogram"] = "not an anomaly-detection run (reconstruction.anomaly_class is not set)"
    return out


def section_body(run: Run, ev: dict[str, Any] | None, img_tag, note, table, kv_table) -> str:
    """The report's "Reconstruction" section (the report passes its HTML helpers)."""
    rec = run.read_optional(Evaluation)
    if rec is None:
        return note(f"{run.path('evaluation').name} is missing; run `tfcnn evaluate {run.root}`")
    h = rec.headline
    pairs = [
        ("loss", rec.details.get("loss")),
        ("test MSE", h.get("test_mse")),
        ("test PSNR (dB)", h.get("test_psnr")),
        ("noisy input PSNR (dB)", h.get("test_psnr_noisy")),
        ("test ELBO (nats / image)", h.get("test_elbo")),
        ("test KL (nats)", h.get("test_kl")),
    ]
    body = kv_table([(k, v) for k, v in pairs if v is not None])
    figs = figures(run, rec)
    for key, alt in (("reconstructions", "reconstruction grid"), ("prior_samples", "VAE prior samples"), ("interpolations", "latent interpolation strips")):
        f = figs[key]
        body += f"<h3>{alt[0].upper() + alt[1:]}</h3>" + (img_tag(plots.figure_png(f), alt) if isinstance(f, Figure) else note(f))
    per_class = rec.details.get("per_class") or []
    if per_class:
        body += "<h3>Per class</h3>" + table(["class", "MSE", "PSNR (dB)"], [[r["class"], r["mse"], r["psnr"]] for r in per_class], "num")
    body += "<h3>Anomaly detection</h3>"
    anomaly = rec.details.get("anomaly")
    f = figs["anomaly_histogram"]
    if not anomaly:
        return body + note(f if isinstance(f, str) else "not an anomaly-detection run")
    t, v = anomaly["test"], anomaly["val"]
    body += kv_table(
        [
            ("held-out class", f"{anomaly['held_out_class']} ({anomaly['held_out_label']})"),
            ("score", anomaly["score"]),
            ("threshold", f"{anomaly['threshold']:.6g}: {anomaly['threshold_how']}"),
            ("validation", f"{v['images']} images, {v['anomalies']} held-out; FPR at the threshold {v['fpr']:.4f}"),
            ("test ROC-AUC", h.get("test_roc_auc")),
            ("test PR-AUC", h.get("test_pr_auc")),
            ("test precision / recall / F1 at the threshold", f"{t['precision']:.4f} / {t['recall']:.4f} / {t['f1']:.4f}"),
            ("test false-positive rate", t["fpr"]),
        ]
    )
    body += img_tag(plots.figure_png(f), "anomaly score histogram") if isinstance(f, Figure) else note(f)
    means = anomaly.get("test_mean_score_per_class") or {}
    if means:
        body += table(["class", "mean test score"], sorted(means.items(), key=lambda kv: -kv[1]), "num")
    return body
