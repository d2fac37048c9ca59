"""Clustering metrics: how well k-means on the embeddings recovers the classes.

One k-means run (scikit-learn, k = number of classes, ``n_init=10``, fixed seed, on
L2-normalised embeddings, since every other metric here is cosine) feeds both:

- NMI: scikit-learn's ``normalized_mutual_info_score`` (arithmetic mean, as in pml).
- Cluster accuracy: the best one-to-one matching of clusters to classes (Hungarian algorithm,
  ``scipy.optimize.linear_sum_assignment``), i.e. accuracy up to a relabelling of clusters.

Sets larger than ``max_fit`` (default 20,000) fit k-means on that many samples drawn with a
fixed seed and then assign every sample to its nearest centre, so memory and time stay
bounded (1M samples in 1,000 classes would otherwise run 10 full k-means); a log line says so.
Smaller sets are clustered exactly as before.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ._utils import check_labels, l2_normalize, to_numpy

__all__ = ["clustering_metrics", "nmi", "cluster_accuracy", "hungarian_accuracy", "kmeans_assign"]

log = logging.getLogger(__name__)

#: Above this many samples, k-means is fitted on a seeded sample of this size.
MAX_FIT = 20_000


def kmeans_assign(
    embeddings: Any, n_clusters: int, seed: int = 0, n_init: int = 10, max_fit: int = MAX_FIT
) -> np.ndarray:
    """Cluster ids ``[N]`` from k-means on L2-normalised embeddings (deterministic per seed)."""
    # scikit-learn and SciPy are imported here, not with zoo.metrics (1.2 s), which the
    # server imports for softmax alone.
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    x = l2_normalize(embeddings)
    n_clusters = max(1, min(int(n_clusters), len(x)))
    km = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed)
    # One BLAS/OpenMP thread: on a small, busy machine k-means with two threads ran ~35x
    # slower (thread contention), and these sets are small enough for one core.
    with threadpool_limits(1):
        if len(x) <= max_fit:
            return km.fit_predict(x)
        log.info("clustering: fitting k-means on %d of %d samples (seed %d)", max_fit, len(x), seed)
        sample = np.random.default_rng(seed).choice(len(x), size=max_fit, replace=False)
        km.fit(x[np.sort(sample)])
    return km.predict(x)


def hungarian_accuracy(labels: Any, cluster_ids: Any) -> float:
    """Accuracy of ``cluster_ids`` against ``labels`` under the best cluster-to-class matching.

    Works for any label values and any number of clusters (unmatched clusters count as wrong).
    """
    from scipy.optimize import linear_sum_assignment

    y = to_numpy(labels).reshape(-1)
    c = to_numpy(cluster_ids).reshape(-1)
    if len(y) != len(c):
        raise ValueError(f"{len(y)} labels but {len(c)} cluster ids")
    if len(y) == 0:
        return float("nan")
    _, yi = np.unique(y, return_inverse=True)
    _, ci = np.unique(c, return_inverse=True)
    table = np.zeros((ci.max() + 1, yi.max() + 1), dtype=np.int64)
    np.add.at(table, (ci, yi), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / len(y))


def clustering_metrics(
    embeddings: Any, labels: Any, seed: int = 0, n_init: int = 10, max_fit: int = MAX_FIT
) -> dict[str, float]:
    """``{"nmi", "cluster_accuracy"}`` from a single k-means run with k = number of classes."""
    x = l2_normalize(embeddings)
    y = check_labels(labels, len(x))
    if len(y) == 0:
        return {"nmi": float("nan"), "cluster_accuracy": float("nan")}
    from sklearn.metrics import normalized_mutual_info_score

    n_classes = len(np.unique(y))
    clusters = kmeans_assign(x, n_classes, seed=seed, n_init=n_init, max_fit=max_fit)
    return {
        "nmi": float(normalized_mutual_info_score(y, clusters)),
        "cluster_accuracy": hungarian_accuracy(y, clusters),
    }


def nmi(embeddings: Any, labels: Any, seed: int = 0, n_init: int = 10) -> float:
    """Normalised mutual information between k-means clusters and labels."""
    return clustering_metrics(embeddings, labels, seed=seed, n_init=n_init)["nmi"]


def cluster_accuracy(embeddings: Any, labels: Any, seed: int = 0, n_init: int = 10) -> float:
    """Accuracy of k-means clusters after Hungarian matching to the labels."""
    return clustering_metrics(embeddings, labels, seed=seed, n_init=n_init)["cluster_accuracy"]
