"""Open-set identification: of people searched against a gallery, how many are found as
themselves above the threshold that lets only ``far`` of never-enrolled people through.

This is the detection and identification rate (DIR) at a false-alarm rate, the figure a
watch list or a door camera is judged by (NIST FRVT's "FNIR at FPIR", read the other way):
unlike verification's pairs, a probe competes against the whole gallery, and the impostors
are people the gallery has never seen.

One evaluation set is cut into a deployment: its identities, in sorted order, alternately
*enrolled* and *never enrolled*. Each enrolled identity's first sample is its gallery entry
and its other samples are genuine probes; every sample of a never-enrolled identity is an
impostor probe. With ``s`` a probe's best gallery similarity, the threshold is the
``(m+1)``-th highest impostor ``s``, ``m = floor(far * impostors)`` (accept when
``s > threshold``, as verification does), and DIR is the fraction of genuine probes whose
best entry is their own identity with ``s`` above it. NaN when the set has fewer than two
identities, no genuine probe or no impostor.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ._utils import check_labels, far_key, l2_normalize

__all__ = ["open_set_identification"]

CHUNK = 4096  # probes scored at once (a chunk x gallery similarity matrix)


def _best(probes: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each probe's best gallery index and similarity."""
    index = np.empty(len(probes), np.int64)
    score = np.empty(len(probes), np.float32)
    for lo in range(0, len(probes), CHUNK):
        sims = probes[lo:lo + CHUNK] @ gallery.T
        index[lo:lo + CHUNK] = sims.argmax(axis=1)
        score[lo:lo + CHUNK] = sims[np.arange(len(sims)), index[lo:lo + CHUNK]]
    return index, score


def open_set_identification(embeddings: Any, labels: Any,
                            fars: Iterable[float] = (1e-2,)) -> dict[str, float]:
    """``dir_at_far_{far}`` for each ``far`` (see the module's docstring)."""
    x = l2_normalize(embeddings)
    y = check_labels(labels, len(x))
    nan = {f"dir_at_far_{far_key(far)}": float("nan") for far in fars}
    identities = np.unique(y)
    if len(identities) < 2:
        return nan
    enrolled = np.isin(y, identities[0::2])
    members = np.flatnonzero(enrolled)
    _, first = np.unique(y[members], return_index=True)  # each one's first sample: its entry
    entries = np.sort(members[first])
    genuine = np.setdiff1d(np.flatnonzero(enrolled), entries)
    impostor = np.flatnonzero(~enrolled)
    if not len(genuine) or not len(impostor):
        return nan
    gallery, names = x[entries], y[entries]
    found, genuine_score = _best(x[genuine], gallery)
    _, impostor_score = _best(x[impostor], gallery)
    correct = names[found] == y[genuine]
    out = {}
    for far in fars:
        m = int(np.floor(far * len(impostor_score)))
        if m >= len(impostor_score):
            threshold = -np.inf
        else:
            at = len(impostor_score) - 1 - m
            threshold = float(np.partition(impostor_score, at)[at])
        out[f"dir_at_far_{far_key(far)}"] = float(np.mean(correct & (genuine_score > threshold)))
    return out
