"""A diverse ranking: every prefix of ``result.tsv`` both informative and varied.

YMIR takes the first K lines of ``result.tsv`` and never tells the executor K, so the
whole order must be good at every K: a cluster of near-duplicates that all score high
should not fill the top. Greedy, as in maximal marginal relevance: the next image is the
one of highest

    key_i = s_i * (1 - w * max(0, max_{j ranked} cos(f_i, f_j)))

where ``s_i >= 0`` is the image's mining score, ``f`` its feature in the model's own
feature space (the deepest neck level of the same forward pass, averaged over space,
centred on the candidates' mean), and ``w`` the ``diversity`` hyperparameter (0: plain
score order; 1: an exact duplicate of a ranked image scores 0). ``key`` only falls as
images are ranked, so the keys come out non-increasing and are written as the scores:
the file stays sorted by score, as the protocol requires.

Scaling: the similarity is taken only to ranked images of the same k-means cluster
(near-duplicates fall in the same cluster), so each cluster's greedy order is independent
and the whole ranking is the clusters' orders merged by key. With clusters of at most
``CLUSTER_SIZE`` images and features projected to ``DIM`` dimensions the work is about
``N * CLUSTER_SIZE * DIM`` multiply-adds: 100,000 candidates in a few seconds on the
driver (``bench/diversity_bench.py``; figure in docs/mining.md).
"""

from __future__ import annotations

import numpy as np

#: images per cluster at most, for the greedy's O(m^2) work per cluster
CLUSTER_SIZE = 2000
#: features are projected (a fixed Gaussian, Johnson-Lindenstrauss) to this many dimensions
DIM = 64
#: k-means iterations; the clusters only bound whom an image is compared with
KMEANS_ITERATIONS = 8


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embed(features: np.ndarray, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """Centred, projected to ``dim`` dimensions when larger, unit length: cosine = dot."""
    x = np.asarray(features, dtype=np.float32)
    x = x - x.mean(axis=0, keepdims=True)  # pooled activations share a large positive mean
    if x.shape[1] > dim:
        projection = np.random.default_rng(seed).standard_normal((x.shape[1], dim)).astype(np.float32)
        x = x @ projection
    return _unit(x)


def clusters(x: np.ndarray, size: int = CLUSTER_SIZE, seed: int = 0) -> np.ndarray:
    """A cluster id per row: spherical k-means with ``ceil(N / size)`` centres (one cluster
    when ``N <= size``); a cluster may come out larger than ``size``."""
    n = len(x)
    k = -(-n // size)
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    centres = x[rng.choice(n, k, replace=False)]
    for _ in range(KMEANS_ITERATIONS):
        labels = (x @ centres.T).argmax(axis=1)
        for c in range(k):
            members = x[labels == c]
            centres[c] = members.mean(axis=0) if len(members) else x[rng.integers(n)]
        centres = _unit(centres)
    return (x @ centres.T).argmax(axis=1)


def _greedy(scores: np.ndarray, x: np.ndarray, weight: float) -> np.ndarray:
    """The key each image of one cluster is ranked at, by the greedy of the module docstring."""
    m = len(scores)
    keys = np.empty(m)
    max_sim = np.zeros(m)
    open_ = np.ones(m, dtype=bool)
    for _ in range(m):
        current = np.where(open_, scores * (1 - weight * max_sim), -np.inf)
        pick = int(current.argmax())
        keys[pick] = current[pick]
        open_[pick] = False
        np.maximum(max_sim, x @ x[pick], out=max_sim)
    return keys


def diverse_scores(scores: np.ndarray, features: np.ndarray, weight: float,
                   cluster_size: int = CLUSTER_SIZE) -> np.ndarray:
    """The score to write for each image: its key in the diverse order (sorting by it
    descending gives that order). Negative scores (images that could not be read) stay as
    they are, after every other; ``weight`` 0 returns ``scores``."""
    scores = np.asarray(scores, dtype=np.float64)
    if weight <= 0 or len(scores) < 2:
        return scores
    out = scores.copy()
    good = np.flatnonzero(scores >= 0)
    if len(good) < 2:
        return out
    x = embed(features[good])
    labels = clusters(x, cluster_size)
    for c in np.unique(labels):
        members = good[labels == c]
        out[members] = _greedy(scores[members], x[labels == c], weight)
    return out
