"""Verification metrics: is this pair the same identity? Scored on pairs of one set.

Pairs are all ``i < j`` of the evaluation set, scored by cosine similarity of L2-normalised
embeddings; a pair is *genuine* when both labels agree and an *impostor* pair otherwise.

- ROC AUC over all pairs (same value as scikit-learn's ``roc_auc_score``, computed faster).
- For each false-accept rate ``far``: the similarity ``threshold`` a server should use, and the
  true-accept rate it buys. The decision rule is **accept (same identity / known) when
  similarity > threshold**, otherwise "unknown". The threshold is the ``(m+1)``-th highest
  impostor similarity with ``m = floor(far * n_impostor)``, so at most ``m`` impostor pairs
  (a fraction <= ``far``) are accepted; ``tar`` is the fraction of genuine pairs accepted.

Memory: up to ``max_pairs`` pairs (default 12.5M, i.e. every pair of 5,000 samples) are scored
exactly with float32 similarities. Larger sets use ``max_pairs`` pairs drawn uniformly at
random (with replacement, i != j) with a fixed seed, so the numbers are estimates but
reproducible; a log line says so. Either way no ``N x N`` matrix is formed: exact pairs are
scored a block of rows at a time and sampled pairs in chunks of ``PAIR_CHUNK``, so 100k or 1M
samples take ~0.5 GB beyond the embeddings.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from ._utils import check_labels, far_key, l2_normalize

__all__ = ["verification_metrics", "pair_scores", "roc_auc", "tar_at_far"]

log = logging.getLogger(__name__)

MAX_PAIRS = 12_500_000
PAIR_CHUNK = 65_536


def pair_scores(
    embeddings: Any, labels: Any, max_pairs: int = MAX_PAIRS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities (float32) and genuine flags (bool) of the pairs of one set.

    All ``i < j`` pairs when there are at most ``max_pairs`` of them, otherwise ``max_pairs``
    random pairs drawn with a fixed seed.
    """
    x = l2_normalize(embeddings)
    n = len(x)
    _, y = np.unique(check_labels(labels, n), return_inverse=True)
    n_pairs = n * (n - 1) // 2
    if n_pairs <= max_pairs:
        sims = np.empty(n_pairs, dtype=np.float32)
        same = np.empty(n_pairs, dtype=bool)
        start = 0
        block = max(1, 2_000_000 // max(n, 1))  # rows per block: keeps the block matrix small
        for lo in range(0, n - 1, block):
            hi = min(lo + block, n - 1)
            s = x[lo:hi] @ x.T  # [b, n]
            for r, i in enumerate(range(lo, hi)):
                m = n - i - 1
                sims[start : start + m] = s[r, i + 1 :]
                same[start : start + m] = y[i + 1 :] == y[i]
                start += m
        return sims, same

    log.info("verification: %d samples give %d pairs; scoring %d random pairs (seed %d)",
             n, n_pairs, max_pairs, seed)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=max_pairs)
    j = rng.integers(0, n - 1, size=max_pairs)
    j = j + (j >= i)  # uniform over j != i
    sims = np.empty(max_pairs, dtype=np.float32)
    for lo in range(0, max_pairs, PAIR_CHUNK):
        hi = lo + PAIR_CHUNK
        sims[lo:hi] = np.einsum("ij,ij->i", x[i[lo:hi]], x[j[lo:hi]])
    return sims, y[i] == y[j]


def roc_auc(sims: np.ndarray, same: np.ndarray) -> float:
    """ROC AUC of pair scores, equal to scikit-learn's ``roc_auc_score(same, sims)``.

    Computed as the Mann-Whitney statistic P(genuine > impostor) + P(tie) / 2 with one sort of
    the impostor scores and integer counts: ``roc_auc_score`` takes ~9 s on the 12.5M pairs of
    5,000 samples, this ~1 s.
    """
    impostor = np.sort(sims[~same])
    genuine = sims[same]
    if len(impostor) == 0 or len(genuine) == 0:
        return float("nan")
    below = np.searchsorted(impostor, genuine, side="left").sum(dtype=np.int64)
    below_or_tied = np.searchsorted(impostor, genuine, side="right").sum(dtype=np.int64)
    return float((int(below) + int(below_or_tied)) / (2 * len(genuine) * len(impostor)))


def tar_at_far(sims: np.ndarray, same: np.ndarray, far: float) -> tuple[float, float]:
    """``(tar, threshold)`` for pair scores: accept when similarity > threshold (see module doc)."""
    impostor = sims[~same]
    genuine = sims[same]
    if len(impostor) == 0 or len(genuine) == 0:
        return float("nan"), float("nan")
    m = int(np.floor(far * len(impostor)))
    if m >= len(impostor):  # far >= 1: accept everything
        return 1.0, float("-inf")
    # (m+1)-th largest impostor score = element len-1-m in ascending order.
    threshold = float(np.partition(impostor, len(impostor) - 1 - m)[len(impostor) - 1 - m])
    return float(np.mean(genuine > threshold)), threshold


def verification_metrics(
    embeddings: Any,
    labels: Any,
    fars: Iterable[float] = (1e-3, 1e-2),
    max_pairs: int = MAX_PAIRS,
    seed: int = 0,
) -> dict[str, float]:
    """``roc_auc`` and, per far, ``tar_at_far_{far}`` and ``threshold_at_far_{far}``.

    Far is spelled compactly in the key (1e-3 -> ``tar_at_far_1e-3``). Values are NaN when
    the set has no genuine or no impostor pair.
    """
    sims, same = pair_scores(embeddings, labels, max_pairs=max_pairs, seed=seed)
    n_gen = int(same.sum())
    if n_gen == 0 or n_gen == len(same):
        log.warning("verification metrics undefined: %d genuine of %d pairs", n_gen, len(same))
    out: dict[str, float] = {"roc_auc": roc_auc(sims, same)}
    for far in fars:
        tar, thr = tar_at_far(sims, same, far)
        out[f"tar_at_far_{far_key(far)}"] = tar
        out[f"threshold_at_far_{far_key(far)}"] = thr
    return out
