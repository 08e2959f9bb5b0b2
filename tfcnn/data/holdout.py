"""Leave one class out of training: the data side of anomaly detection with an autoencoder.

An autoencoder trained only on "normal" images reconstructs an unseen class badly, so its
reconstruction error scores anomalies. The held-out class is removed from the training split;
the validation split keeps its normal images plus a *known* share of held-out ones (so a
threshold can be chosen on labelled data, see :mod:`tfcnn.evaluate.reconstruction`); the test
split is left whole, so its held-out images are the anomalies the test scores are about.
Labels keep their class ids: which images are anomalies is ``label == anomaly_class``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfcnn.config import DataConfig, PipelineConfig
from tfcnn.data.augment import build_augmenter
from tfcnn.data.bundle import DataBundle, _pipeline, channel_stats
from tfcnn.errors import ConfigError


def val_indices(labels: np.ndarray, anomaly_class: int, fraction: float, seed: int) -> np.ndarray:
    """Validation indices: every normal image, plus held-out ones making up ``fraction`` of the
    result (as close as the held-out images available allow), drawn with ``seed``, sorted."""
    normal = np.flatnonzero(labels != anomaly_class)
    held = np.flatnonzero(labels == anomaly_class)
    want = int(round(fraction / (1.0 - fraction) * len(normal))) if fraction > 0 else 0
    rng = np.random.default_rng(seed)
    chosen = rng.choice(held, size=min(want, len(held)), replace=False) if want else held[:0]
    return np.sort(np.concatenate([normal, chosen]))


def hold_out_class(bundle: DataBundle, cfg: PipelineConfig) -> DataBundle:
    """``bundle`` with ``cfg.reconstruction.anomaly_class`` out of training (see the module
    docstring); unchanged when no class is held out."""
    rc = cfg.reconstruction
    if rc.anomaly_class is None:
        return bundle
    info = bundle.info
    k = int(rc.anomaly_class)
    if k >= info.num_classes:
        raise ConfigError(
            f"reconstruction.anomaly_class = {k} is not a class of {info.source}; it has {info.num_classes} "
            f"(0..{info.num_classes - 1}: {', '.join(info.class_names)})"
        )
    x_tr, y_tr = bundle.arrays["train"]
    x_va, y_va = bundle.arrays["val"]
    keep = np.flatnonzero(y_tr != k)
    x_tr, y_tr = x_tr[keep], y_tr[keep]
    if not len(y_tr):
        raise ConfigError(f"reconstruction.anomaly_class = {k} leaves no training images")
    vidx = val_indices(y_va, k, rc.anomaly_val_fraction, cfg.data.seed)
    x_va, y_va = x_va[vidx], y_va[vidx]
    mean, std = channel_stats(x_tr)
    share = float(np.mean(y_va == k)) if len(y_va) else 0.0
    note = (
        f"anomaly detection: class {k} ({info.class_names[k]}) held out of training; "
        f"validation holds {int(np.sum(y_va == k))} of it ({100 * share:.1f}%), the test split is whole"
    )
    new_info = dataclasses.replace(
        info, mean=mean, std=std, num_train=int(len(y_tr)), num_val=int(len(y_va)), notes=[*info.notes, note]
    )
    dc: DataConfig = cfg.data
    augment = build_augmenter(dc.augment, fill=mean, channels=new_info.input_shape[-1])
    arrays = {**bundle.arrays, "train": (x_tr, y_tr), "val": (x_va, y_va)}
    return dataclasses.replace(
        bundle,
        info=new_info,
        train=_pipeline(x_tr, y_tr, dc, training=True, augment=augment),
        val=_pipeline(x_va, y_va, dc, training=False),
        arrays=arrays,
    )
