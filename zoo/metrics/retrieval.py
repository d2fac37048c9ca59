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

Memory: queries are searched in chunks sized so that one chunk's neighbour lists stay near
``CHUNK_BYTES``; the metrics are sums over queries, so chunking changes no value. Few classes
with many samples each (emitters: thousands of pulses per emitter) make R, and so the search
depth, large: 100k samples in 10 classes search ~10k neighbours per query, which in one go
would take ~12 GB. Sets with more than ``max_queries`` samples (default 20k) are scored on
that many queries drawn with a fixed seed, each still ranked against the whole set, so the
numbers are reproducible estimates and a log line says so: every query costs a pass over the
whole set, so exact scores of 100k samples in 10 classes take ~5 minutes on two cores and of
1M samples hours (``bench/eval_scale.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
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
    "MAX_QUERIES",
]

log = logging.getLogger(__name__)

#: Above this many samples, retrieval is scored on this many seeded random queries.
MAX_QUERIES = 20_000
#: Working memory one chunk of queries may take (neighbour ids, scores and the flags).
CHUNK_BYTES = 256 << 20
#: Bytes per (query, neighbour) cell at the peak of scoring a chunk, as measured: faiss's ids
#: and scores, the self mask and the ids without self, the flags, the running count, the
#: precision at each rank and its product with the flags.
_CELL_BYTES = 96


def _chunk_rows(depth: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    return max(1, chunk_bytes // (_CELL_BYTES * (depth + 1)))


def _knn_chunks(
    x: np.ndarray, queries: np.ndarray, k: int, rows: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(query ids, [q, k] neighbour ids)`` chunk by chunk, each query's own index removed.

    pml's rule: search k+1 and drop the query's own index; a row without it (a duplicate won
    the tie) drops its last neighbour instead.
    """
    for lo in range(0, len(queries), rows):
        q = queries[lo : lo + rows]
        _, idx = faiss.knn(x[q], x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
        is_self = idx == q[:, None]
        is_self[~is_self.any(axis=1), -1] = True
        yield q, idx[~is_self].reshape(len(q), k)


def leave_one_out_knn(embeddings: Any, k: int) -> np.ndarray:
    """Indices ``[N, k]`` of each sample's k most cosine-similar *other* samples, best first.

    ``k`` is clipped to ``N - 1``. Exact faiss search, chunked over queries.
    """
    x = l2_normalize(embeddings)
    n = len(x)
    k = max(0, min(int(k), n - 1))
    if k == 0:
        return np.zeros((n, 0), dtype=np.int64)
    out = np.empty((n, k), dtype=np.int64)
    for q, nn in _knn_chunks(x, np.arange(n), k, _chunk_rows(k)):
        out[q] = nn
    return out


def _query_ids(n: int, keep: np.ndarray, max_queries: int, seed: int) -> np.ndarray:
    """The queries scored: every one that has a same-class sample, or a seeded sample of them."""
    ids = np.flatnonzero(keep)
    if len(ids) > max_queries:
        log.info("retrieval: %d queries; scoring %d drawn with seed %d against all %d samples",
                 len(ids), max_queries, seed, n)
        ids = np.sort(np.random.default_rng(seed).choice(ids, size=max_queries, replace=False))
    return ids


def retrieval_metrics(
    embeddings: Any,
    labels: Any,
    ks: Iterable[int] = (1, 5, 10),
    max_queries: int = MAX_QUERIES,
    seed: int = 0,
) -> dict[str, float]:
    """All retrieval metrics from one chunked faiss search.

    Returns ``precision_at_1``, ``r_precision``, ``map_at_r`` and ``recall_at_{k}`` for each k
    in ``ks``. The search depth is ``max(max R, max ks)`` (clipped to N-1), so MAP@R is exact.
    """
    ks = tuple(int(k) for k in ks)
    x = l2_normalize(embeddings)
    n = len(x)
    y = check_labels(labels, n)
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    r_all = counts[inverse] - 1  # R per query: other samples of its class
    keep = r_all > 0
    names = ["precision_at_1", "r_precision", "map_at_r"] + [f"recall_at_{k}" for k in ks]
    if not keep.any():
        log.warning("retrieval metrics undefined: no class has two samples (%d samples)", n)
        return {name: float("nan") for name in names}
    if (~keep).any():
        log.debug("skipping %d queries whose class has no other sample", int((~keep).sum()))

    queries = _query_ids(n, keep, int(max_queries), seed)
    depth = min(max([int(r_all[queries].max()), *ks]), n - 1)
    pos = np.arange(1, depth + 1)
    sums = dict.fromkeys(names, 0.0)
    for q, nn in _knn_chunks(x, queries, depth, _chunk_rows(depth)):
        hits = inverse[nn] == inverse[q][:, None]  # [q, depth] same-class flags, best first
        r = r_all[q]
        rel = hits & (pos[None, :] <= r[:, None])
        # R-precision: same-class among the first R.   MAP@R: mean over the first R of
        # precision@i at relevant positions i, divided by R (pml's definition).
        sums["precision_at_1"] += float(hits[:, 0].sum())
        sums["r_precision"] += float((rel.sum(axis=1) / r).sum())
        prec_at_i = np.cumsum(rel, axis=1) / pos[None, :]
        sums["map_at_r"] += float(((prec_at_i * rel).sum(axis=1) / r).sum())
        for k in ks:
            kk = max(1, min(k, depth))
            sums[f"recall_at_{k}"] += float(hits[:, :kk].any(axis=1).sum())
    return {name: total / len(queries) for name, total in sums.items()}


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
