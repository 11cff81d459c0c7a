"""Features learned without labels, on every photo: a single layer of k-means on small patches
(Coates, Lee and Ng, "An analysis of single-layer networks in unsupervised feature learning",
AISTATS 2011), on 02's stored pixels of train and test photos alike.

    learn:   PATCH x PATCH patches sampled from every photo, each brightness- and contrast-
             normalised, ZCA-whitened; K centroids by k-means (scikit-learn, seeded).
    encode:  every patch of a photo (stride 1), its "triangle" activation per centroid,
             max(0, mean distance - distance to the centroid), averaged over each quadrant of the
             photo (4 x K); photo_features averages the quadrants: K columns, which 06 gives the
             statistics' booster (meta_only) beside 02's statistics.

bench/kmeans_study.py measured them on the real data (docs/kmeans.md): the booster's pooled CV
0.7612 with the K whole-photo columns against 0.7688 without; 0.7636 with the 4 x K quadrant
columns; a ridge on the quadrant columns alone 0.836.

Nothing here sees a label; the same photos, the same seed, the same features.
"""
import json

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.cluster import KMeans

import common
import pixels

# -----------------------------------------------------------------------------
PATCH = 6             # pixels on a side: Coates et al.'s best at small sizes
K = 256               # centroids: their accuracy rises with K; 4 x 256 columns for ~2k rows
SAMPLES = 100_000     # patches the centroids learn from at most (about 10 per photo), 20 per photo on fewer
NORM_EPS = 10.0       # added to each patch's variance (0-255 pixels): flat patches stay flat
ZCA_EPS = 0.1         # the whitening's regulariser (on normalised patches), as theirs
CHUNK = 64            # photos per encoding step: 64 x 1849 patches x K distances in float32


def patches(images, stride=1):
    """The PATCH x PATCH patches of (n, S, S, 3) uint8 images, every `stride` pixels:
    (n, h, w, P*P*3) float32."""
    windows = sliding_window_view(images, (PATCH, PATCH), axis=(1, 2))[:, ::stride, ::stride]   # n, h, w, 3, P, P
    n, h, w = windows.shape[:3]
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(n, h, w, -1).astype(np.float32)


def normalise(x):
    """Each patch (last axis) less its mean, over its spread."""
    x = x - x.mean(-1, keepdims=True)
    return x / np.sqrt(x.var(-1, keepdims=True) + NORM_EPS)


def learn(images, seed=0, k=K, samples=SAMPLES):
    """(mean, whitening matrix, centroids) learned from random patches of every photo."""
    rng = np.random.default_rng(seed)
    n, size = images.shape[:2]
    samples = min(samples, 20 * n)
    k = min(k, samples // 10)      # a few photos (the tests'): fewer centroids, each learned from 10 patches
    side = size - PATCH + 1
    which = rng.integers(0, n, samples)
    rows, cols = rng.integers(0, side, samples), rng.integers(0, side, samples)
    chosen = np.stack([images[i, r:r + PATCH, c:c + PATCH] for i, r, c in zip(which, rows, cols)])
    x = normalise(chosen.reshape(samples, -1).astype(np.float32))
    mean = x.mean(0)
    values, vectors = np.linalg.eigh(np.cov(x - mean, rowvar=False))
    whiten = (vectors / np.sqrt(values + ZCA_EPS)) @ vectors.T
    centroids = KMeans(n_clusters=k, n_init=1, max_iter=50, random_state=seed).fit(
        (x - mean) @ whiten).cluster_centers_
    return mean.astype(np.float32), whiten.astype(np.float32), centroids.astype(np.float32)


def encode(images, model, stride=1):
    """(n, 4 * K) float32: each centroid's mean triangle activation over each quadrant of the
    photo (top-left, top-right, bottom-left, bottom-right)."""
    mean, whiten, centroids = model
    c2 = (centroids ** 2).sum(1)
    out = []
    for start in range(0, len(images), CHUNK):
        x = patches(np.asarray(images[start:start + CHUNK]), stride)
        n, h, w, d = x.shape
        x = (normalise(x.reshape(-1, d)) - mean) @ whiten
        dist = np.sqrt(np.maximum((x ** 2).sum(1, keepdims=True) - 2 * x @ centroids.T + c2, 0))
        act = np.maximum(dist.mean(1, keepdims=True) - dist, 0).reshape(n, h, w, -1)
        top, left = h // 2, w // 2
        quads = [act[:, :top, :left], act[:, :top, left:], act[:, top:, :left], act[:, top:, left:]]
        out.append(np.concatenate([q.mean((1, 2)) for q in quads], axis=1))
    return np.concatenate(out).astype(np.float32)


def columns(k=K, quadrants=True):
    return [f"km_q{q}_{c}" for q in range(4) for c in range(k)] if quadrants else [f"km_{c}" for c in range(k)]


def photo_features(images, seed=0):
    """(n, K) float32: each centroid's activation over the whole photo (its quadrants' mean),
    the centroids learned from these photos (train and test alike)."""
    quadrants = encode(images, learn(images, seed))
    return quadrants.reshape(len(quadrants), 4, -1).mean(1)


def stored_photo_features(hvr, cache):
    """The k-means features of 02's store (its directory `hvr`), a table by object_id. Kept in
    `cache` (06: WORK/06_stack/kmeans.npz) with the store's record (meta.json: its size and
    sample hash), so a restack (another STACK_ARGS, SUBMIT) reads them instead of learning them
    again (about a minute on the real data)."""
    images, ids, store = pixels.load_store(hvr)
    key, features = json.dumps(store, sort_keys=True) + " ".join(ids), None
    if "sample_sha256" in store and cache.exists():          # a store of before the record: no cache
        with np.load(cache) as kept:
            features = kept["features"] if str(kept["key"]) == key else None
    if features is None:
        features = photo_features(images)
        with common.atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, features=features, key=np.array(key))
    return pd.DataFrame(features, index=ids, columns=columns(features.shape[1], quadrants=False))
