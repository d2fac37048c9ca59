"""Whether a new version identifies the deployment's own enrolled people at least as well as
the version it would replace, measured on those people before it takes over.

Each kept entry of an identity with two or more entries is a query against every other kept
entry (leave-one-out), in each version's gallery: top-1 accuracy (the nearest entry is the
same person) and the rate of ``unknown`` (the best similarity under the version's own
threshold). Both versions are measured on the same entries: those both embedded. The new
version passes when it is at least as good on both, within ``MARGIN``. With fewer than
``MIN_IDENTITIES`` such identities the gate cannot judge, says so, and leaves the decision to
the registry's own comparison (the metric on which the alias moved). Beyond ``MAX_QUERIES``
queries a seeded sample of them is asked, the same entries of both versions.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MARGIN = 0.005
MIN_IDENTITIES = 5
#: the most queries each version answers: a sample, the same entries for both, beyond it
#: (leave-one-out over every entry is N x N: 275 s and 1.9 GB at 100k entries)
MAX_QUERIES = 10_000
#: the similarities one step of the gate holds (queries x entries, float32): 1,024 queries
#: against 100k entries at once held 400 MB, the migration's peak (bench/gallery_migration.py)
SIMILARITY_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Figures:
    """One version on the enrolled people: how many identities and queries, top-1 accuracy
    and the rate of ``unknown`` at its threshold."""

    identities: int
    queries: int
    top1: float
    unknown: float
    threshold: float | None


@dataclass(frozen=True)
class Verdict:
    """The gate's decision: ``passed``, and why, with both versions' figures."""

    passed: bool
    judged: bool  # False: too few people to judge; the registry's comparison decided
    reason: str
    old: Figures | None
    new: Figures

    def to_dict(self) -> dict[str, Any]:
        """As JSON may hold it: a figure nothing measured (no queries: NaN) is None, so
        ``GET /gallery/migration`` and the version's tag stay valid JSON."""
        return {"passed": self.passed, "judged": self.judged, "reason": self.reason,
                "old": _finite(self.old) if self.old else None, "new": _finite(self.new)}


def _finite(figures: Figures) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in asdict(figures).items()}


def leave_one_out(identities: list[str], vectors: np.ndarray,
                  threshold: float | None) -> Figures:
    """Top-1 accuracy and the unknown rate of every entry of an identity with two or more,
    against all the others (unit vectors: cosine is the dot product)."""
    names = np.asarray(identities, dtype=object)
    unique, counts = np.unique(names, return_counts=True) if len(names) else ([], [])
    repeated = set(np.asarray(unique)[np.asarray(counts) >= 2]) if len(names) else set()
    queries = np.flatnonzero([n in repeated for n in names])
    if len(queries) > MAX_QUERIES:  # seeded: both versions draw the same entries
        queries = np.sort(np.random.default_rng(0).choice(queries, MAX_QUERIES, replace=False))
    if not len(queries):
        return Figures(0, 0, float("nan"), float("nan"), threshold)
    correct = unknown = 0
    step = max(1, SIMILARITY_BYTES // (4 * len(vectors)))  # queries against all, in budget
    for start in range(0, len(queries), step):
        chunk = queries[start:start + step]
        sims = vectors[chunk] @ vectors.T
        sims[np.arange(len(chunk)), chunk] = -np.inf  # never itself
        best = sims.argmax(axis=1)
        correct += int((names[best] == names[chunk]).sum())
        if threshold is not None:
            unknown += int((sims[np.arange(len(chunk)), best] < threshold).sum())
    return Figures(len(repeated), len(queries), correct / len(queries),
                   unknown / len(queries) if threshold is not None else 0.0, threshold)


def judge(old: Figures | None, new: Figures, margin: float = MARGIN) -> Verdict:
    """Pass when ``new`` is at least as good as ``old`` on both figures, within ``margin``."""
    if old is None or new.identities < MIN_IDENTITIES:
        return Verdict(True, False, f"{new.identities} identities have two or more kept "
                       f"entries, fewer than the {MIN_IDENTITIES} the gate needs to judge: the "
                       "registry's own comparison (the metric on which the alias moved) decides",
                       old, new)
    worse = []
    if new.top1 < old.top1 - margin:
        worse.append(f"top-1 {new.top1:.4f} < {old.top1:.4f}")
    if new.unknown > old.unknown + margin:
        worse.append(f"unknown {new.unknown:.4f} > {old.unknown:.4f}")
    if worse:
        return Verdict(False, True, "the new version identifies the enrolled people worse ("
                       + "; ".join(worse) + f", beyond {margin})", old, new)
    return Verdict(True, True, f"top-1 {new.top1:.4f} (was {old.top1:.4f}), unknown "
                   f"{new.unknown:.4f} (was {old.unknown:.4f}) on {new.queries} entries of "
                   f"{new.identities} people", old, new)


def compare(old: tuple[np.ndarray, list[str], np.ndarray, float | None] | None,
            new: tuple[np.ndarray, list[str], np.ndarray, float | None]) -> Verdict:
    """Both versions' kept entries (kept ids, identities, vectors, threshold) judged on the
    entries both embedded."""
    if old is None:
        return judge(None, leave_one_out(new[1], new[2], new[3]))
    common = np.intersect1d(old[0], new[0])
    figures = []
    for ids, names, vectors, threshold in (old, new):
        at = np.searchsorted(ids, common)
        figures.append(leave_one_out([names[i] for i in at], vectors[at], threshold))
    return judge(*figures)
