"""Leave-one-out retrieval metrics on one evaluation set.

Every sample is a query against all the others (query = reference = the set, the query itself
excluded), ranked by cosine similarity of L2-normalised embeddings with an exact faiss
``IndexFlatIP`` search. Precision@1, R-precision and MAP@R follow pytorch-metric-learning's
``AccuracyCalculator`` exactly (``ref_includes_query=True``, ``k="max_bin_count"``, mean over
queries, ``avg_of_avgs=False``), so numbers compare with published pml results:

- R for a query = number of *other* samples with its label.
- Queries whose class has no other sample (R = 0) are skipped: nothing can be retrieved for
  them. If every query is skipped the metrics are NaN.
- The self-match is removed the way pml removes it: search k+1 neighbours and drop the query's
  own index; if it is not among them (duplicates tied with it), drop the last neighbour.

Recall@k has no pml definition; it is the usual one in metric learning (Song et al., 2016):
the fraction of queries with at least one same-class sample among their k nearest neighbours.
Recall@1 therefore equals precision@1.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import faiss
import numpy as np

from ._utils import check_labels, l2_normalize

__all__ = [
    "retrieval_metrics",
    "precision_at_1",
    "r_precision",
    "map_at_r",
    "recall_at_k",
    "leave_one_out_knn",
]

log = logging.getLogger(__name__)


def leave_one_out_knn(embeddings: Any, k: int) -> np.ndarray:
    """Indices ``[N, k]`` of each sample's k most cosine-similar *other* samples, best first.

    ``k`` is clipped to ``N - 1``. One exact faiss search for the whole set.
    """
    x = l2_normalize(embeddings)
    n = len(x)
    k = max(0, min(int(k), n - 1))
    if k == 0:
        return np.zeros((n, 0), dtype=np.int64)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, idx = index.search(x, k + 1)
    is_self = idx == np.arange(n)[:, None]
    # pml's rule: a row without its own index (a duplicate won the tie) loses its last column.
    is_self[~is_self.any(axis=1), -1] = True
    return idx[~is_self].reshape(n, k)


def retrieval_metrics(embeddings: Any, labels: Any, ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """All retrieval metrics from one faiss search.

    Returns ``precision_at_1``, ``r_precision``, ``map_at_r`` and ``recall_at_{k}`` for each k
    in ``ks``. The search depth is ``max(max R, max ks)`` (clipped to N-1), so MAP@R is exact.
    """
    ks = tuple(int(k) for k in ks)
    x = l2_normalize(embeddings)
    n = len(x)
    y = check_labels(labels, n)
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    r = counts[inverse] - 1  # R per query: other samples of its class
    keep = r > 0
    names = ["precision_at_1", "r_precision", "map_at_r"] + [f"recall_at_{k}" for k in ks]
    if not keep.any():
        log.warning("retrieval metrics undefined: no class has two samples (%d samples)", n)
        return {name: float("nan") for name in names}
    if (~keep).any():
        log.debug("skipping %d queries whose class has no other sample", int((~keep).sum()))

    depth = max([int(r.max()), *ks])
    nn = leave_one_out_knn(x, depth)
    depth = nn.shape[1]
    hits = (inverse[nn] == inverse[:, None])[keep]  # [Q, depth] same-class flags, best first
    r = r[keep]

    pos = np.arange(1, depth + 1)
    within_r = pos[None, :] <= r[:, None]
    rel = hits & within_r
    # R-precision: same-class among the first R.   MAP@R: mean over the first R of
    # precision@i at relevant positions i, divided by R (pml's definition).
    r_prec = rel.sum(axis=1) / r
    prec_at_i = np.cumsum(rel, axis=1) / pos[None, :]
    map_r = (prec_at_i * rel).sum(axis=1) / r

    out = {
        "precision_at_1": float(hits[:, 0].mean()),
        "r_precision": float(r_prec.mean()),
        "map_at_r": float(map_r.mean()),
    }
    for k in ks:
        kk = max(1, min(k, depth))
        out[f"recall_at_{k}"] = float(hits[:, :kk].any(axis=1).mean())
    return out


def precision_at_1(embeddings: Any, labels: Any) -> float:
    """Fraction of queries whose nearest other sample has the same label."""
    return retrieval_metrics(embeddings, labels, ks=())["precision_at_1"]


def r_precision(embeddings: Any, labels: Any) -> float:
    """Mean over queries of (same-class among the R nearest) / R."""
    return retrieval_metrics(embeddings, labels, ks=())["r_precision"]


def map_at_r(embeddings: Any, labels: Any) -> float:
    """Mean average precision at R (Musgrave et al., 2020), pml's definition."""
    return retrieval_metrics(embeddings, labels, ks=())["map_at_r"]


def recall_at_k(embeddings: Any, labels: Any, k: int) -> float:
    """Fraction of queries with a same-class sample among their k nearest (k clipped to N-1)."""
    return retrieval_metrics(embeddings, labels, ks=(k,))[f"recall_at_{k}"]
