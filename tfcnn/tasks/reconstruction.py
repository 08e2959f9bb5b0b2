"""Image reconstruction (autoencoders): the model maps an image to itself through a bottleneck.

What differs from classification, all behind the :class:`~tfcnn.tasks.base.Task` interface:

* **targets**: the engines are fed ``(input, clean image / 255)`` (:meth:`Reconstruction.feed`);
  with ``reconstruction.noise`` the input is corrupted in tf.data first (denoising), the target
  never is;
* **loss**: per-image mean over pixels of MSE, binary cross-entropy, or 1 - SSIM, on [0, 1]
  images (a VAE adds its KL term through ``model.losses``, which both engines include);
* **anomaly detection** (``reconstruction.anomaly_class``): the anomaly score is the image's
  reconstruction MSE; the threshold is chosen on validation data by
  :mod:`tfcnn.evaluate.reconstruction` and stored in the run's Evaluation record, from which
  :meth:`Reconstruction.configure` reads it, so every exported format computes
  ``anomaly_score`` and ``anomaly_flag = score > threshold`` in-graph;
* **verify**: max/mean |reconstruction - Keras'|, PSNR against Keras' reconstruction, flag
  agreement and ROC-AUC per format.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import numpy as np

from tfcnn.errors import ConfigError, ExportError
from tfcnn.tasks.base import TASKS, Task, latency_text

LOSSES = ("mse", "bce", "ssim")
OUTPUT = "reconstruction"
SCORE = "anomaly_score"
FLAG = "anomaly_flag"


# --------------------------------------------------------------------------- losses (tf)


def _ssim_window(height: int, width: int) -> int:
    """SSIM's Gaussian window: the usual 11, or the largest odd size the image allows."""
    side = min(11, height, width)
    return side if side % 2 else side - 1


def per_image_loss(kind: str):
    """``f(target, reconstruction) -> [B]``: the mean over pixels of the chosen loss on [0, 1]
    images (``ssim``: 1 - SSIM, which is already an average over the image)."""
    import tensorflow as tf

    if kind not in LOSSES:
        raise ConfigError(f"reconstruction.loss = {kind!r}; choose one of {', '.join(LOSSES)}")

    def loss(y, p):
        y = tf.cast(y, tf.float32)
        p = tf.cast(p, tf.float32)
        if kind == "mse":
            return tf.reduce_mean(tf.square(y - p), axis=[1, 2, 3])
        if kind == "bce":
            q = tf.clip_by_value(p, 1e-7, 1.0 - 1e-7)
            return -tf.reduce_mean(y * tf.math.log(q) + (1.0 - y) * tf.math.log(1.0 - q), axis=[1, 2, 3])
        size = _ssim_window(int(y.shape[1]), int(y.shape[2]))
        return 1.0 - tf.image.ssim(y, p, max_val=1.0, filter_size=size)

    return loss


def psnr(mse: np.ndarray, peak: float = 1.0) -> np.ndarray:
    """PSNR in dB from a mean squared error on [0, peak] images (inf for a perfect match)."""
    mse = np.asarray(mse, np.float64)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(peak**2 / mse)


def mean_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of the PSNR between two [0, 1] image batches, capped at 100 dB per image
    (identical images would otherwise make the mean infinite)."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2, axis=tuple(range(1, np.ndim(a))))
    return float(np.mean(np.minimum(psnr(np.maximum(mse, 1e-10)), 100.0))) if len(mse) else math.nan


# --------------------------------------------------------------------------- anomaly numbers


def roc_auc(scores: np.ndarray, is_anomaly: np.ndarray) -> float:
    """Area under the ROC curve of anomaly scores (NaN when one class is missing or a score is not finite)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(is_anomaly, bool)
    s = np.asarray(scores, np.float64)
    if y.all() or not y.any() or not np.all(np.isfinite(s)):
        return math.nan
    return float(roc_auc_score(y, s))


def pr_auc(scores: np.ndarray, is_anomaly: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve) with anomalies as positives."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(is_anomaly, bool)
    s = np.asarray(scores, np.float64)
    if not y.any() or not np.all(np.isfinite(s)):
        return math.nan
    return float(average_precision_score(y, s))


def threshold_for_fpr(normal_scores: np.ndarray, fpr: float) -> float:
    """The smallest observed normal score t with at most ``fpr`` of the normal scores above it
    (the flag is ``score > t``): on these images the false-positive rate is floor(n * fpr) / n
    when the scores are distinct."""
    s = np.sort(np.asarray(normal_scores, np.float64))
    if not len(s):
        raise ConfigError("no normal validation images to choose the anomaly threshold on")
    k = int(math.ceil(len(s) * (1.0 - fpr))) - 1  # index of the threshold: n - 1 - k scores lie above
    return float(s[min(max(k, 0), len(s) - 1)])


def threshold_best_f1(scores: np.ndarray, is_anomaly: np.ndarray) -> float:
    """The cut between two neighbouring scores that maximises F1 (anomalies positive, flag
    ``score > t``); halfway between them, so a slightly different runtime keeps the same side."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(is_anomaly, bool)
    if not y.any():
        raise ConfigError(
            "the validation split holds no images of the held-out class; set reconstruction.anomaly_val_fraction > 0 "
            'or reconstruction.threshold = "fpr"'
        )
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    valid = np.r_[s[:-1] > s[1:], True]  # flagging the top i+1 is a threshold only between distinct scores
    i = int(np.argmax(np.where(valid, f1, -1.0)))
    return float((s[i] + s[i + 1]) / 2) if i + 1 < len(s) else float(s[i] - abs(s[i]) * 1e-6 - 1e-12)


def at_threshold(scores: np.ndarray, is_anomaly: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 and false-positive rate of ``score > threshold``."""
    flag = np.asarray(scores) > threshold
    y = np.asarray(is_anomaly, bool)
    tp, fp = int(np.sum(flag & y)), int(np.sum(flag & ~y))
    fn = int(np.sum(~flag & y))
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "fpr": fp / max(int(np.sum(~y)), 1),
        "flagged": int(flag.sum()),
    }


# --------------------------------------------------------------------------- the task


class Reconstruction(Task):
    name = "reconstruction"
    metric_names = ("mse",)
    metric_names = ("mse",)
    reference_name = "roc_auc"  # anomaly models; NaN (recorded as null) for plain autoencoders
    limit_keys = ("max_abs_diff", "min_psnr", "flag_agreement", "max_auc_drop")

    def __init__(self) -> None:
        self.loss = "mse"
        self.noise = "none"
        self.noise_amount = 0.0
        self.seed = 0
        self.anomaly_class: int | None = None
        self.threshold: float | None = None

    # ------------------------------------------------------------- configuration
    def configure(self, cfg: Any, run: Any = None) -> "Reconstruction":
        """A copy with the run's loss, noise and anomaly class; with ``run``, the anomaly
        threshold its evaluation stored (export and verify need it in-graph)."""
        task = copy.copy(self)
        rc = cfg.reconstruction
        task.loss, task.noise, task.noise_amount = rc.loss, rc.noise, float(rc.noise_amount)
        task.seed = int(cfg.data.seed)
        task.anomaly_class = rc.anomaly_class
        if run is not None and rc.anomaly_class is not None:
            from tfcnn.run import Evaluation

            ev = run.read_optional(Evaluation)
            thr = ((ev.details.get("anomaly") or {}).get("threshold") if ev is not None else None)
            if thr is None:
                raise ExportError(
                    f"{run.path('evaluation')} holds no anomaly threshold; run `tfcnn evaluate {run.root}` before exporting"
                )
            task.threshold = float(thr)
        return task

    @property
    def anomaly(self) -> bool:
        return self.anomaly_class is not None

    # ------------------------------------------------------------- train
    def loss_fn(self, num_outputs: int, label_smoothing: float = 0.0, *, from_logits: bool = True, **_label_options: Any):
        return per_image_loss(self.loss)

    def keras_loss(self, label_smoothing: float = 0.0, **_label_options: Any):
        return _KerasLoss(self.loss)

    def keras_metrics(self, label_smoothing: float = 0.0, **_label_options: Any) -> list:
        import keras

        return [keras.metrics.MeanSquaredError(name="mse")]

    def feed(self, ds, cfg: Any, *, training: bool):
        """``(images, labels)`` -> ``(input, target)``: the input noisy when denoising, the target
        the clean image in [0, 1]; validation noise is fixed (seeded by batch position)."""
        from tfcnn.data.noise import noisy_pairs

        seed = self.seed if training else self.seed + 1
        return noisy_pairs(ds, self.noise, self.noise_amount, seed, training=training)

    def check_model(self, model, info: Any) -> None:
        want = tuple(info.input_shape)
        got = tuple(int(d) for d in model.outputs[0].shape[1:]) if len(model.outputs[0].shape) == 4 else None
        if got != want:
            raise ConfigError(
                f"a reconstruction model must output an image of its input's shape {want}, but it outputs "
                f"{tuple(model.outputs[0].shape[1:])}; use an autoencoder (dense_autoencoder, conv_autoencoder, conv_vae)"
            )

    def check_export(self, model, labels: Sequence[str]) -> None:
        if tuple(model.outputs[0].shape[1:]) != tuple(model.inputs[0].shape[1:]):
            raise ExportError(
                f"model outputs {tuple(model.outputs[0].shape[1:])}, not an image of its input's shape {tuple(model.inputs[0].shape[1:])}"
            )

    def output_text(self, labels: Sequence[str]) -> str:
        text = "Reconstruction: float32 image in [0, 1] (pixel / 255) at the model's size and channels"
        if self.anomaly:
            text += f"; anomaly_score: mean squared reconstruction error; anomaly_flag: 1.0 when the score > {self.threshold:.6g}"
        return text

    def card_limitations(self) -> list[str]:
        lines = ["Images unlike the training data reconstruct poorly (what an anomaly score builds on); nothing here is a class label."]
        if self.anomaly:
            lines += [
                f"anomaly_score is a reconstruction error, not a probability; the flag's threshold ({self.threshold:.6g}) was "
                "chosen on the validation split and trades false alarms against misses there only.",
                "Quantized variants change the reconstruction slightly and can flip anomaly_flag near the threshold; "
                "verification.json reports flag agreement and ROC-AUC per format.",
            ]
        else:
            lines.append("Quantized variants change the reconstruction slightly; verification.json reports PSNR against Keras per format.")
        return lines

    def describe(self, labels: Sequence[str], model_name: str) -> str:
        what = "anomaly detector" if self.anomaly else ("denoising autoencoder" if self.noise != "none" else "autoencoder")
        return f"image {what} ({model_name})"

    # ------------------------------------------------------------- evaluate
    def outputs_to_scores(self, outputs: np.ndarray) -> np.ndarray:
        return np.asarray(outputs, np.float32)

    def headline(self, scores: np.ndarray, labels: np.ndarray, **options: Any) -> dict[str, Any]:
        """Only what verify needs of the Keras model (the evaluation writes the full set)."""
        out = {"psnr_vs_keras": 100.0}
        if isinstance(scores, dict) and SCORE in scores and self.anomaly:
            out["roc_auc"] = roc_auc(scores[SCORE], np.asarray(labels) == self.anomaly_class)
        return out

    def scores_of(self, images: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
        """Per-image anomaly score: the mean squared error between image / 255 and its reconstruction."""
        x = np.asarray(images, np.float32) / 255.0
        return np.mean((x - np.asarray(reconstruction, np.float32)) ** 2, axis=(1, 2, 3))

    def reference(self, model, images: np.ndarray) -> dict[str, np.ndarray]:
        recon = np.asarray(model.predict(images.astype(np.float32), batch_size=256, verbose=0), np.float32)
        out = {OUTPUT: recon}
        if self.anomaly and self.threshold is not None:
            score = self.scores_of(images, recon)
            out[SCORE] = score.astype(np.float32)
            out[FLAG] = (score > self.threshold).astype(np.float32)
        return out

    def reference_score(self, reference: Any, labels: np.ndarray) -> float:
        if self.anomaly and SCORE in reference:
            return roc_auc(reference[SCORE], np.asarray(labels) == self.anomaly_class)
        return math.nan

    # ------------------------------------------------------------- export / verify
    def output_contract(self, labels: Sequence[str]) -> dict[str, Any]:
        tensors = [OUTPUT] + ([SCORE, FLAG] if self.anomaly else [])
        out: dict[str, Any] = {
            "kind": "reconstruction",
            "tensors": tensors,
            OUTPUT: "float32 [N, H, W, model_channels] in [0, 1]: the reconstructed image (pixel / 255)",
        }
        if self.anomaly:
            out["anomaly"] = {
                SCORE: "float32 [N]: mean over pixels of (image / 255 - reconstruction)^2",
                FLAG: "float32 [N]: 1.0 when anomaly_score > threshold, else 0.0",
                "threshold": self.threshold,
                "held_out_class": self.anomaly_class,
                "held_out_label": labels[self.anomaly_class] if self.anomaly_class is not None and self.anomaly_class < len(labels) else None,
            }
        return out

    def _outputs(self, outputs, inputs) -> dict:
        import tensorflow as tf

        recon = tf.cast(outputs, tf.float32)
        out = {OUTPUT: recon}
        if self.anomaly:
            if inputs is None or self.threshold is None:
                raise ExportError("the anomaly outputs need the model's input and the stored threshold")
            score = tf.reduce_mean(tf.square(tf.cast(inputs, tf.float32) / 255.0 - recon), axis=[1, 2, 3])
            out[SCORE] = score
            out[FLAG] = tf.cast(score > tf.constant(self.threshold, tf.float32), tf.float32)
        return out

    def mobile_outputs(self, outputs, inputs=None) -> dict:
        return self._outputs(outputs, inputs)

    def serving_outputs(self, outputs, label_lookup, inputs=None) -> dict:
        return self._outputs(outputs, inputs)

    def compare(self, outputs: Any, reference: Any, labels: np.ndarray) -> dict[str, float]:
        """max/mean |r - r_keras|, PSNR against Keras' reconstruction, anomaly-flag agreement and ROC-AUC."""
        if not isinstance(outputs, dict) or OUTPUT not in outputs:
            raise ValueError(f"artifact returned {sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__}, expected a {OUTPUT!r} output")
        r = np.asarray(outputs[OUTPUT], np.float64)
        ref = np.asarray(reference[OUTPUT], np.float64)
        if r.shape != ref.shape:
            r = r.reshape(ref.shape) if r.size == ref.size else r
        if r.shape != ref.shape:
            raise ValueError(f"artifact returned a reconstruction of shape {r.shape}, the Keras model {ref.shape}")
        nan = math.nan
        if not np.all(np.isfinite(r)):
            row = {"max_abs_diff": nan, "mean_abs_diff": nan, "psnr_vs_keras": nan, "non_finite": True}
            if self.anomaly:
                row.update(flag_agreement=nan, roc_auc=nan)
            return row
        diff = np.abs(r - ref)
        row = {
            "max_abs_diff": float(diff.max()) if diff.size else 0.0,
            "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
            "psnr_vs_keras": round(mean_psnr(r, ref), 3),
        }
        if self.anomaly and SCORE in reference:
            if SCORE not in outputs or FLAG not in outputs:
                raise ValueError(f"artifact lacks the {SCORE!r} / {FLAG!r} outputs of an anomaly model")
            score = np.asarray(outputs[SCORE], np.float64).reshape(-1)
            flag = np.asarray(outputs[FLAG], np.float64).reshape(-1) > 0.5
            row["flag_agreement"] = round(float(np.mean(flag == (np.asarray(reference[FLAG]) > 0.5))), 6)
            row["roc_auc"] = round(roc_auc(score, np.asarray(labels) == self.anomaly_class), 6)
            row["max_score_diff"] = float(np.max(np.abs(score - np.asarray(reference[SCORE], np.float64)))) if len(score) else 0.0
        return row

    def format_limits(self, classifier_limits: dict[str, float]) -> dict[str, float]:
        """A format's reconstruction limits, from how strict the format is for classifiers: the
        exact ones (a max |dp| limit: SavedModel, ONNX, TFLite float32), int8 (an accuracy-drop
        limit) and the other quantized ones (float16, dynamic range, CoreML)."""
        if "max_abs_diff" in classifier_limits:
            limits = {"max_abs_diff": 1e-4, "min_psnr": 60.0}
        elif "max_accuracy_drop" in classifier_limits:
            limits = {"min_psnr": 25.0}
        else:
            limits = {"min_psnr": 35.0}
        if self.anomaly:
            limits["flag_agreement"] = 0.97 if "max_accuracy_drop" in classifier_limits else 0.99
            limits["max_auc_drop"] = 0.02 if "max_accuracy_drop" in classifier_limits else 0.005
        return limits

    def failures(self, row: dict[str, Any], limits: dict[str, float], reference_score: float) -> list[str]:
        """Written so that NaN fails: each check asks 'is it provably within the limit?'."""
        fails = []
        if row.get("non_finite"):
            fails.append("the artifact returned non-finite values (NaN or infinity)")
        v = row.get("max_abs_diff")
        if "max_abs_diff" in limits and (v is None or not v <= limits["max_abs_diff"]):
            fails.append(f"max |r - r_keras| = {_num(v)} > {limits['max_abs_diff']:.3g}")
        v = row.get("psnr_vs_keras")
        if "min_psnr" in limits and (v is None or not v >= limits["min_psnr"]):
            fails.append(f"PSNR against Keras' reconstruction {_num(v)} dB < {limits['min_psnr']:.3g} dB")
        v = row.get("flag_agreement")
        if "flag_agreement" in limits and (v is None or not v >= limits["flag_agreement"]):
            fails.append(f"anomaly-flag agreement with Keras {_num(None if v is None else 100 * v)}% < {100 * limits['flag_agreement']:.2f}%")
        if "max_auc_drop" in limits and math.isfinite(reference_score):
            v = row.get("roc_auc")
            drop = reference_score - v if v is not None else math.nan
            if not drop <= limits["max_auc_drop"] + 1e-12:
                fails.append(f"ROC-AUC drop {_num(drop)} > {limits['max_auc_drop']:.3g}")
        return fails

    def verify_columns(self) -> list[tuple[str, str, str, float]]:
        return [("max abs diff", "max_abs_diff", ".2e", 1), ("mean abs diff", "mean_abs_diff", ".2e", 1),
                ("PSNR vs Keras (dB)", "psnr_vs_keras", ".1f", 1), ("flag agreement", "flag_agreement", ".2f", 100),
                ("ROC-AUC", "roc_auc", ".4f", 1)]

    def verify_line(self, row: dict[str, Any]) -> str:
        line = (
            f"max|dr| {row['max_abs_diff']:.2e}, mean|dr| {row['mean_abs_diff']:.2e}, "
            f"PSNR vs keras {row['psnr_vs_keras']:.1f} dB"
        )
        if "flag_agreement" in row:
            line += f", flag agreement {100 * row['flag_agreement']:.2f}%, ROC-AUC {row['roc_auc']:.4f}"
        return line + f", {latency_text(row)}"


def _num(v: Any) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:.3g}"


def _keras_loss_class():
    import keras

    @keras.saving.register_keras_serializable(package="tfcnn")
    class ReconstructionLoss(keras.losses.Loss):
        """The task's per-image loss as a Keras loss (fit engine, model.keras' compile config)."""

        def __init__(self, kind: str = "mse", name: str = "reconstruction_loss", **kwargs):
            super().__init__(name=name, **kwargs)
            self.kind = kind
            self._fn = per_image_loss(kind)

        def call(self, y_true, y_pred):
            return self._fn(y_true, y_pred)

        def get_config(self) -> dict:
            return {**super().get_config(), "kind": self.kind}

    return ReconstructionLoss


_LOSS_CLASS = None


def _KerasLoss(kind: str):
    """One ReconstructionLoss class per process (Keras refuses a second registration of a name)."""
    global _LOSS_CLASS
    if _LOSS_CLASS is None:
        _LOSS_CLASS = _keras_loss_class()
    return _LOSS_CLASS(kind)


TASKS.register("reconstruction", Reconstruction())
