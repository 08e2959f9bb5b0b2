"""2-D maps of the features the classifier head sees (the input of the "logits" layer).

If classes form separate clusters here, the head's job is easy and errors sit where clusters
touch; a class smeared across others points at the features, not the head. PCA is the
linear, faithful-distances view; t-SNE keeps neighbourhoods but distorts distances, so the
report shows both. Both run on a capped, stratified sample because t-SNE is O(n^2)-ish.
"""

from __future__ import annotations

import keras
import numpy as np


def penultimate_model(model: keras.Model) -> keras.Model:
    """A model from the image input to the tensor the "logits" Dense layer consumes."""
    try:
        head = model.get_layer("logits")
    except ValueError:
        raise ValueError(f"model {model.name!r} has no layer named 'logits'; tfcnn models end in a Dense 'logits'") from None
    return keras.Model(model.inputs, head.input, name=f"{model.name}_features")


def penultimate_features(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    feats = penultimate_model(model).predict(images.astype(np.float32), batch_size=batch_size, verbose=0)
    feats = np.asarray(feats, dtype=np.float32)
    return feats.reshape(len(feats), -1)


def sample_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """At most n indices, spread evenly over classes (sorted, so they map back to the test order)."""
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    picked = []
    per = max(1, n // len(classes))
    for c in classes:
        idx = np.flatnonzero(labels == c)
        picked.append(rng.choice(idx, size=min(per, len(idx)), replace=False))
    out = np.concatenate(picked)
    if len(out) < n:  # fill from what is left, uniformly
        rest = np.setdiff1d(np.arange(len(labels)), out)
        out = np.concatenate([out, rng.choice(rest, size=min(n - len(out), len(rest)), replace=False)])
    return np.sort(out[:n])


def project(features: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """PCA and t-SNE coordinates ([n, 2] each). t-SNE starts from PCA for stable, seeded layouts."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = len(features)
    out: dict[str, np.ndarray] = {}
    if n < 3:
        return out
    x = features - features.mean(axis=0, keepdims=True)
    dims = min(2, x.shape[1])
    pca = PCA(n_components=dims, random_state=seed).fit(x)
    pts = pca.transform(x)
    if dims == 1:
        pts = np.concatenate([pts, np.zeros_like(pts)], axis=1)
    out["pca"] = pts.astype(np.float32)
    out["pca_explained"] = pca.explained_variance_ratio_.astype(np.float32)
    if n >= 5 and dims == 2:
        perplexity = float(min(30.0, (n - 1) / 3.0))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=500)
        # One OpenMP thread: beside TensorFlow's thread pools, sklearn's Barnes-Hut loop
        # oversubscribes the cores and runs 5-30x slower than single-threaded.
        with threadpool_limits(limits=1):
            out["tsne"] = tsne.fit_transform(x).astype(np.float32)
    return out
