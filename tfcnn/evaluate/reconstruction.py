"""The reconstruction task's evaluation: reconstruction error and PSNR on the test split, noisy
vs denoised PSNR (denoising), the ELBO and decoded prior samples / latent interpolations
(VAE), and the anomaly threshold with ROC-AUC, PR-AUC and precision/recall at it (anomaly
detection). Numbers and arrays only; :mod:`tfcnn.vis.reconstruction` draws them.

The threshold chosen here is stored in the Evaluation record (``details["anomaly"]``): the
exporter reads it back (:meth:`tfcnn.tasks.reconstruction.Reconstruction.configure`) so every
artifact flags with the same number.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tfcnn.data.bundle import DataBundle
from tfcnn.data.noise import noisy_array
from tfcnn.evaluate.base import EVALUATIONS, as_run, save_npz
from tfcnn.evaluate.training import training_summary
from tfcnn.models.autoencoder_layers import kl_divergence
from tfcnn.run import Evaluation, Run
from tfcnn.tasks.reconstruction import (
    at_threshold,
    mean_psnr,
    per_image_loss,
    pr_auc,
    roc_auc,
    threshold_best_f1,
    threshold_for_fpr,
)
from tfcnn.util import log

TEST_NOISE_SEED_OFFSET = 2  # train noise uses data.seed, validation data.seed + 1, test data.seed + 2
INTERPOLATION_STEPS = 10
HIST_BINS = 50


def per_image(kind: str, target: np.ndarray, recon: np.ndarray, batch: int = 512) -> np.ndarray:
    """The task's per-image loss over a whole split, in batches."""
    import tensorflow as tf

    fn = per_image_loss(kind)
    out = [fn(tf.constant(target[i : i + batch]), tf.constant(recon[i : i + batch])).numpy() for i in range(0, len(target), batch)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def latent_parts(model: keras.Model) -> tuple[keras.Model | None, keras.Model | None, bool]:
    """(encoder to the latent code, decoder, is_vae) as far as the model has them."""
    names = {layer.name for layer in model.layers}
    decoder = model.get_layer("decoder") if "decoder" in names else None
    if "z_mean" in names and "z_log_var" in names:
        enc = keras.Model(model.inputs, [model.get_layer("z_mean").output, model.get_layer("z_log_var").output])
        return enc, decoder, True
    if "latent" in names:
        return keras.Model(model.inputs, model.get_layer("latent").output), decoder, False
    return None, decoder, False


def gallery_indices(labels: np.ndarray, n: int) -> np.ndarray:
    """Up to n test indices, taking classes in turn (the first image of each, then the second...)."""
    labels = np.asarray(labels)
    per_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    out: list[int] = []
    for rank in range(max((len(p) for p in per_class), default=0)):
        for p in per_class:
            if rank < len(p) and len(out) < n:
                out.append(int(p[rank]))
    return np.asarray(out, np.int64)


def evaluate_reconstruction(
    model: keras.Model,
    bundle: DataBundle,
    run: "Run | Path",
    task: Any,
    *,
    gallery_size: int = 25,
    **_classifier_options: Any,
) -> dict[str, Any]:
    """Evaluate an autoencoder on the test split; write the Evaluation record and its arrays."""
    run = as_run(run)
    run.memo("data_bundle", lambda: bundle)
    cfg = run.config()
    rc = cfg.reconstruction
    x_test, y_test = bundle.arrays["test"]
    batch = cfg.data.batch_size
    clean = x_test.astype(np.float32) / 255.0
    denoising = rc.noise != "none" and rc.noise_amount > 0
    inputs = (
        noisy_array(x_test, rc.noise, rc.noise_amount, cfg.data.seed + TEST_NOISE_SEED_OFFSET, batch)
        if denoising
        else x_test.astype(np.float32)
    )
    recon = np.asarray(model.predict(inputs, batch_size=256, verbose=0), np.float32)
    mse = np.mean((clean - recon) ** 2, axis=(1, 2, 3))
    loss = per_image(rc.loss, clean, recon)
    headline: dict[str, Any] = {
        "test_loss": float(np.mean(loss)) if len(loss) else math.nan,
        "test_mse": float(np.mean(mse)) if len(mse) else math.nan,
        "test_psnr": mean_psnr(recon, clean),
    }
    details: dict[str, Any] = {"loss": rc.loss, "class_names": list(bundle.info.class_names)}
    unavailable: dict[str, str] = {}
    arrays: dict[str, np.ndarray] = {"labels": np.asarray(y_test), "mse": mse.astype(np.float32)}

    if denoising:
        headline["test_psnr_noisy"] = mean_psnr(inputs / 255.0, clean)
        headline["test_psnr_denoised"] = headline["test_psnr"]
        details["noise"] = {"kind": rc.noise, "amount": rc.noise_amount, "seed": cfg.data.seed + TEST_NOISE_SEED_OFFSET}
        log.info(
            f"evaluate: PSNR noisy {headline['test_psnr_noisy']:.2f} dB -> denoised {headline['test_psnr']:.2f} dB ({rc.noise} {rc.noise_amount:g})"
        )
    else:
        unavailable["noisy"] = "no input noise (reconstruction.noise = none)"

    encoder, decoder, is_vae = latent_parts(model)
    pixels = int(np.prod(x_test.shape[1:]))
    if is_vae and encoder is not None:
        mean, log_var = (np.asarray(a, np.float32) for a in encoder.predict(inputs, batch_size=256, verbose=0))
        kl = np.asarray(kl_divergence(mean, log_var), np.float64)
        beta = float(model.get_layer("sampling").beta)
        q = np.clip(recon.astype(np.float64), 1e-7, 1 - 1e-7)
        bce_sum = -np.sum(clean * np.log(q) + (1 - clean) * np.log(1 - q), axis=(1, 2, 3))
        headline["test_loss"] = float(np.mean(loss) + beta * np.mean(kl) / pixels)
        headline["test_kl"] = float(np.mean(kl))
        headline["test_elbo"] = float(-np.mean(bce_sum + kl))  # nats per image, Bernoulli decoder, beta = 1
        details["vae"] = {
            "beta": beta,
            "latent": int(mean.shape[1]),
            "elbo_note": "ELBO = -(sum over pixels of BCE + KL), nats per image, as for a Bernoulli decoder; "
            "training minimises (per-pixel loss + beta * KL / pixels)",
            "bce_nats": float(np.mean(bce_sum)),
        }
        log.info(f"evaluate: ELBO {headline['test_elbo']:.1f} nats/image (KL {headline['test_kl']:.2f}, beta {beta:g})")
    if decoder is not None and encoder is not None:
        rng = np.random.default_rng(cfg.data.seed)
        latent_dim = int(decoder.inputs[0].shape[-1])
        if is_vae:
            z = rng.standard_normal((rc.grid_size**2, latent_dim)).astype(np.float32)
            arrays["prior_samples"] = np.asarray(decoder.predict(z, verbose=0), np.float16)
        else:
            unavailable["prior_samples"] = "not a VAE: a plain autoencoder's latent space has no prior to sample"
        codes = encoder.predict(inputs[: min(len(inputs), 2000)], batch_size=256, verbose=0)
        codes = np.asarray(codes[0] if is_vae else codes, np.float32)
        pairs = _interpolation_pairs(np.asarray(y_test[: len(codes)]), rc.grid_size // 2 or 1, rng)
        if pairs:
            t = np.linspace(0.0, 1.0, INTERPOLATION_STEPS, dtype=np.float32)[None, :, None]
            a, b = codes[[p[0] for p in pairs]][:, None], codes[[p[1] for p in pairs]][:, None]
            strips = decoder.predict(((1 - t) * a + t * b).reshape(-1, latent_dim), verbose=0)
            arrays["interpolations"] = np.asarray(strips, np.float16).reshape(len(pairs), INTERPOLATION_STEPS, *x_test.shape[1:])
            arrays["interpolation_pairs"] = np.asarray(pairs, np.int64)
        else:
            unavailable["interpolations"] = "fewer than two test classes to interpolate between"
    else:
        unavailable["prior_samples"] = unavailable["interpolations"] = "the model has no latent layer + decoder"

    if task.anomaly:
        details["anomaly"] = _anomaly(model, bundle, task, rc, mse, np.asarray(y_test), headline, arrays)

    shown = gallery_indices(np.asarray(y_test), max(gallery_size, rc.grid_size))
    arrays["gallery"] = shown
    arrays["gallery_clean"] = clean[shown].astype(np.float16)
    arrays["gallery_input"] = (inputs[shown] / 255.0).astype(np.float16)
    arrays["gallery_recon"] = recon[shown].astype(np.float16)
    names = list(bundle.info.class_names)
    y = np.asarray(y_test)
    details["per_class"] = [
        {"class": names[c] if c < len(names) else str(c), "mse": float(np.mean(mse[y == c])), "psnr": mean_psnr(recon[y == c], clean[y == c])}
        for c in np.unique(y)
    ]
    files = {"predictions": save_npz(run, "predictions", **arrays)}

    details["training"] = training_summary(run)
    details["layer_names"] = [layer.name for layer in model.layers]
    for key in ("confusion", "calibration", "misclassified", "confident_mistakes", "embedding_pca", "embedding_tsne", "gradcam"):
        unavailable.setdefault(key, "not a classifier: the reconstruction task has no classes to predict")
    log.info(f"evaluate: reconstruction MSE {headline['test_mse']:.5f}, PSNR {headline['test_psnr']:.2f} dB, loss {headline['test_loss']:.5f}")
    run.write(Evaluation(task=task.name, num_test=int(len(y)), headline=headline, details=details, files=files, unavailable=unavailable))
    return {**headline, "num_test": int(len(y))}


def _interpolation_pairs(labels: np.ndarray, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """n pairs of test images from two different classes each (seeded)."""
    classes = np.unique(labels)
    if len(classes) < 2:
        return []
    pairs = []
    for _ in range(n):
        a, b = rng.choice(classes, size=2, replace=False)
        pairs.append((int(rng.choice(np.flatnonzero(labels == a))), int(rng.choice(np.flatnonzero(labels == b)))))
    return pairs


def _anomaly(
    model: keras.Model,
    bundle: DataBundle,
    task: Any,
    rc: Any,
    test_scores: np.ndarray,
    y_test: np.ndarray,
    headline: dict[str, Any],
    arrays: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Score validation and test by reconstruction MSE, pick the threshold on validation, report test."""
    k = int(rc.anomaly_class)
    x_val, y_val = bundle.arrays["val"]
    val_recon = np.asarray(model.predict(x_val.astype(np.float32), batch_size=256, verbose=0), np.float32)
    val_scores = task.scores_of(x_val, val_recon)
    val_anom = np.asarray(y_val) == k
    if rc.threshold == "f1":
        threshold = threshold_best_f1(val_scores, val_anom)
        how = "best F1 on the validation split (known share of the held-out class)"
    else:
        threshold = threshold_for_fpr(val_scores[~val_anom], rc.target_fpr)
        how = f"false-positive rate {rc.target_fpr:g} on the normal validation images"
    # The exported graph computes the score in float32 from uint8 pixels, as scores_of does.
    test_anom = y_test == k
    at_test = at_threshold(test_scores, test_anom, threshold)
    at_val = at_threshold(val_scores, val_anom, threshold)
    headline.update(
        test_roc_auc=roc_auc(test_scores, test_anom),
        test_pr_auc=pr_auc(test_scores, test_anom),
        anomaly_threshold=threshold,
        test_precision=at_test["precision"],
        test_recall=at_test["recall"],
        test_f1=at_test["f1"],
        test_fpr=at_test["fpr"],
        val_fpr=at_val["fpr"],
    )
    arrays["val_scores"] = val_scores.astype(np.float32)
    arrays["val_labels"] = np.asarray(y_val)
    names = bundle.info.class_names
    per_class = {
        names[c]: float(np.mean(test_scores[y_test == c])) for c in np.unique(y_test) if c < len(names)
    }
    log.info(
        f"evaluate: anomaly class {k} ({names[k]}): ROC-AUC {headline['test_roc_auc']:.4f}, PR-AUC {headline['test_pr_auc']:.4f}, "
        f"threshold {threshold:.5f} -> precision {at_test['precision']:.3f}, recall {at_test['recall']:.3f}"
    )
    return {
        "held_out_class": k,
        "held_out_label": names[k],
        "threshold": threshold,
        "threshold_rule": rc.threshold,
        "threshold_how": how,
        "target_fpr": rc.target_fpr if rc.threshold == "fpr" else None,
        "score": "mean over pixels of (image / 255 - reconstruction)^2",
        "val": {"images": int(len(y_val)), "anomalies": int(val_anom.sum()), **at_val},
        "test": {"images": int(len(y_test)), "anomalies": int(test_anom.sum()), **at_test},
        "test_mean_score_per_class": per_class,
        "hist_bins": HIST_BINS,
    }


EVALUATIONS.register("reconstruction", evaluate_reconstruction)
