"""A worker's search index over its gallery table: exact below a size, approximate above it.

``ZOO_GALLERY_INDEX`` picks the faiss index (cosine similarity: inner product of unit vectors):

- ``flat``: exact search, every entry compared (``IndexFlatIP``);
- ``ivf``: an inverted file (``IndexIVFFlat``) of 4·√N cells rounded to a power of two, as
  faiss's guidelines say, but at most 1,024 (the guidelines' 4,096 for 1M entries cost 270 s
  of k-means and assignment at every start on a 2-core CPU, against 28 s, for the same search
  time at recall@5 0.99); trained by spherical k-means on at most 64 vectors per cell (at
  least 39, faiss's minimum); ``nprobe`` is chosen at build time;
- ``hnsw``: a graph (``IndexHNSWFlat``, 32 links per node), ``efSearch`` chosen at build time;
- ``auto`` (the default): ``flat`` below 50,000 entries (a query then costs at most ~3 ms on
  one core), ``ivf`` from there.

An approximate index is tuned when it is built: it measures recall@5 against exact search
for 256 stored entries as queries, each left out of its own answers (as a new photo of a
known face would be compared with the others), and raises ``nprobe`` (or ``efSearch``) until
recall@5 reaches 0.99, or its largest value.
The measured recall is logged and shown by ``/model``.

Entries carry their table row ids, so new rows are added and removed identities are taken
out incrementally: by ``remove_ids`` for flat and IVF indexes, by a tombstone that searches
skip for HNSW (which cannot remove; :attr:`stale` says when a rebuild pays).
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import faiss
import numpy as np

from serving.gallery.table import Rows
from zoo.gallery import normalised

log = logging.getLogger(__name__)

KINDS = ("auto", "flat", "ivf", "hnsw")
FLAT_MAX = 50_000  # auto: exact search below this many entries
IVF_MAX_CELLS = 1024  # start-up time on CPUs: see the module docstring
TARGET_RECALL = 0.99
RECALL_K = 5
RECALL_QUERIES = 256
HNSW_LINKS = 32


@dataclass(frozen=True)
class Match:
    """One identity near a query: its name and its best entry's cosine similarity."""

    label: str
    similarity: float


@dataclass
class IndexInfo:
    """What ``/model`` shows of the index."""

    kind: str
    params: dict[str, int] = field(default_factory=dict)
    recall_at_5: float | None = None  # against exact search, measured at build (None: exact)
    built_entries: int = 0
    build_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_kind(kind: str, size: int) -> str:
    if kind not in KINDS:
        raise ValueError(f"ZOO_GALLERY_INDEX={kind!r}: choose one of {', '.join(KINDS)}")
    if kind == "auto":
        return "flat" if size < FLAT_MAX else "ivf"
    return kind


class _Growing:
    """A numpy array that grows by doubling (ids and identity codes of a million entries)."""

    def __init__(self, dtype: Any) -> None:
        self.data, self.size = np.zeros(1024, dtype), 0

    def extend(self, values: np.ndarray) -> None:
        need = self.size + len(values)
        if need > len(self.data):
            grown = np.zeros(max(need, 2 * len(self.data)), self.data.dtype)
            grown[:self.size] = self.data[:self.size]
            self.data = grown
        self.data[self.size:need] = values
        self.size = need

    @property
    def view(self) -> np.ndarray:
        return self.data[:self.size]


class GalleryIndex:
    """Row ids, identities and a faiss index over their vectors, for one worker."""

    def __init__(self, dim: int, kind: str = "auto") -> None:
        self.dim, self.requested = dim, kind
        choose_kind(kind, 0)  # check the name early
        self.info = IndexInfo("flat")
        self.index: faiss.Index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._reset()

    def _reset(self) -> None:
        self._ids, self._codes = _Growing(np.int64), _Growing(np.int32)  # ascending ids
        self._names: list[str] = []
        self._code: dict[str, int] = {}
        self._entries: list[int] = []  # live entries per identity code
        self._live = self._tombstones = 0

    def __len__(self) -> int:
        return self._live

    @property
    def identities(self) -> int:
        """How many identities have at least one entry."""
        return sum(1 for n in self._entries if n)

    def entries_of(self, identity: str) -> int:
        code = self._code.get(identity)
        return 0 if code is None else self._entries[code]

    @property
    def last_id(self) -> int:
        return int(self._ids.view[-1]) if self._ids.size else 0

    @property
    def stale(self) -> bool:
        """Rebuilding pays: an HNSW index whose removed entries are a quarter of it, or an
        exact index that ``auto`` chose and enrollments have grown to twice ``FLAT_MAX``."""
        grown = (self.requested == "auto" and self.info.kind == "flat"
                 and self._live >= 2 * FLAT_MAX)
        return grown or self._tombstones > max(1000, self.index.ntotal // 4)

    # -- building ----------------------------------------------------------------------------

    def build(self, rows: Rows) -> IndexInfo:
        """Index ``rows`` (the whole table, whose vectors are unit length) afresh, tuned as the
        module docstring says."""
        start = time.perf_counter()
        faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))  # training: every core
        n = len(rows)
        kind = choose_kind(self.requested, n)
        vectors = rows.vectors
        if kind == "ivf" and n:
            nlist = _ivf_cells(n)
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist,
                                       faiss.METRIC_INNER_PRODUCT)
            index.cp.spherical = True
            sample = np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)
            index.train(vectors[np.sort(sample)])
            params = {"nlist": nlist}
        elif kind == "hnsw":
            index = faiss.IndexIDMap2(faiss.IndexHNSWFlat(self.dim, HNSW_LINKS,
                                                          faiss.METRIC_INNER_PRODUCT))
            params = {"M": HNSW_LINKS}
        else:
            kind, index, params = "flat", faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim)), {}
        self.index = index
        self._reset()
        self._append(rows.ids, rows.identities, vectors)
        recall = None
        if kind != "flat" and n:
            recall, tuned = self._tune(vectors)
            params.update(tuned)
        self.info = IndexInfo(kind, params, recall, n, round(time.perf_counter() - start, 3))
        if kind != "flat":
            log.info("gallery index: %s %s over %d entries, recall@%d %.4f against exact "
                     "search, built in %.1f s", kind, params, n, RECALL_K, recall or 0.0,
                     self.info.build_seconds)
        return self.info

    def _tune(self, vectors: np.ndarray) -> tuple[float, dict[str, int]]:
        """The smallest search breadth whose recall@5 against exact search reaches the target.

        The queries are stored entries, each left out of its own answers: the 5 nearest other
        entries are what a new photo of that person would be compared with.
        """
        picks = np.random.default_rng(0).choice(len(vectors), min(RECALL_QUERIES, len(vectors)),
                                                replace=False)
        queries, ids = vectors[picks], self._ids.view
        k = min(RECALL_K, len(vectors) - 1)
        if k < 1:
            return 1.0, {}
        _, exact = faiss.knn(queries, vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)

        def others(rows: np.ndarray, own: int) -> set[int]:
            return set([r for r in rows.tolist() if r != own][:k])

        truth = [others(ids[row], ids[pick]) for row, pick in zip(exact, picks)]
        if isinstance(self.index, faiss.IndexIVF):
            name, values = "nprobe", [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
                                      if v <= self.index.nlist] or [1]
        else:
            name, values = "efSearch", [16, 32, 64, 128, 256, 512, 1024]
        recall = 0.0
        for value in values:
            self._set_breadth(name, value)
            _, found = self.index.search(queries, k + 1)
            recall = float(np.mean([len(t & others(f, ids[pick])) / k
                                    for t, f, pick in zip(truth, found, picks)]))
            if recall >= TARGET_RECALL:
                break
        return recall, {name: value}

    def _set_breadth(self, name: str, value: int) -> None:
        if name == "nprobe":
            self.index.nprobe = value
        else:
            faiss.downcast_index(self.index.index).hnsw.efSearch = value

    # -- keeping up with the table -----------------------------------------------------------

    def add(self, rows: Rows) -> None:
        """New rows (ids above every id held), in id order."""
        if len(rows):
            if rows.ids[0] <= self.last_id:
                raise ValueError(f"gallery rows out of order: {rows.ids[0]} after {self.last_id}")
            self._append(rows.ids, rows.identities, normalised(rows.vectors, self.dim))

    def _append(self, ids: np.ndarray, identities: list[str], vectors: np.ndarray) -> None:
        codes = np.fromiter((self._code_of(name) for name in identities), np.int32, len(ids))
        for code, count in zip(*np.unique(codes, return_counts=True)):
            self._entries[code] += int(count)
        for start in range(0, len(ids), 100_000):
            self.index.add_with_ids(vectors[start:start + 100_000], ids[start:start + 100_000])
        self._ids.extend(ids)
        self._codes.extend(codes)
        self._live += len(ids)

    def _code_of(self, name: str) -> int:
        code = self._code.get(name)
        if code is None:
            code = self._code[name] = len(self._names)
            self._names.append(name)
            self._entries.append(0)
        return code

    def remove(self, identity: str, up_to_id: int) -> int:
        """Take out the entries of ``identity`` with ids up to ``up_to_id``; how many."""
        code = self._code.get(identity)
        if code is None:
            return 0
        ids, codes = self._ids.view, self._codes.view
        hit = np.flatnonzero((codes == code) & (ids <= up_to_id))
        if not len(hit):
            return 0
        if self.info.kind == "hnsw":
            self._tombstones += len(hit)  # HNSW cannot remove: searches skip code -1
        else:
            self.index.remove_ids(faiss.IDSelectorBatch(ids[hit]))
        codes[hit] = -1
        self._live -= len(hit)
        self._entries[code] -= len(hit)
        return len(hit)

    # -- searching ---------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> list[list[Match]]:
        """The ``k`` most similar identities of each query (each by its best entry).

        Identities have many entries each, so the search widens until ``k`` distinct ones are
        found or the whole gallery has been ranked.
        """
        # one thread: a query is small, and OpenMP threads of several server workers fight
        # over the cores (7 ms instead of 0.6 ms for 10k entries on a loaded 2-core machine)
        faiss.omp_set_num_threads(1)
        queries = normalised(np.asarray(queries, dtype=np.float32).reshape(len(queries), -1),
                             self.dim)
        total = self.index.ntotal
        results: list[list[Match]] = []
        for query in queries:
            wide = min(total, max(k * 20, 64))
            seen: dict[int, float] = {}
            while wide:
                sims, found = self.index.search(query[None], wide)
                seen = {}
                for sim, code in zip(sims[0], self._codes_of(found[0])):
                    if code >= 0 and code not in seen:
                        seen[int(code)] = float(sim)
                if len(seen) >= k or wide >= total:
                    break
                wide = min(total, wide * 4)
            results.append([Match(self._names[c], s) for c, s in list(seen.items())[:k]])
        return results

    def _codes_of(self, ids: np.ndarray) -> np.ndarray:
        """Identity codes of row ids (-1: none, removed, or padding)."""
        held, codes = self._ids.view, self._codes.view
        pos = np.clip(np.searchsorted(held, ids), 0, max(len(held) - 1, 0))
        if not len(held):
            return np.full(len(ids), -1, np.int32)
        return np.where((ids >= 0) & (held[pos] == ids), codes[pos], -1)


def _ivf_cells(n: int) -> int:
    """4·√N cells rounded to a power of two (at most ``IVF_MAX_CELLS``), with at least 39
    training vectors per cell."""
    cells = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    return int(max(1, min(cells, IVF_MAX_CELLS, n // 39)))
