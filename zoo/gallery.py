"""The identification gallery as files: L2-normalised embeddings with their identity labels.

Export writes the training split's embeddings as a model's default gallery, together with
the verification threshold the evaluation chose (the threshold at a false accept rate of
1e-3 on the test split). The gallery is two files that hold only numbers and text:
``gallery.npy`` (the float32 vectors, read with ``allow_pickle=False``) and ``gallery.json``
(labels, count, threshold, the model whose embeddings these are, and for each entry when it
was enrolled and the sha256 of the image it came from; images themselves are never kept).
A gallery can come from a tracking server's artifacts, and a file format that holds more than
numbers is a way in, so no faiss index is ever read from a file: a server copies the vectors
into its gallery table once and indexes them itself (``serving.gallery_store``). Saving writes
the vectors first and the JSON last, each to a temporary file that replaces the old one in one
``os.replace``; the JSON's ``count`` is the commit: a crash between the two leaves vectors with
extra rows that loading ignores, so a reader always sees the old gallery or the new one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

VECTORS_FILE = "gallery.npy"
META_FILE = "gallery.json"
LEGACY_INDEX_FILE = "gallery.faiss"  # written by model-zoo before the gallery held numbers only


def _thresholds(meta: dict[str, Any]) -> dict[str, float]:
    """A gallery file's thresholds by false-accept rate (``{}`` for one saved before they
    were kept)."""
    return {str(far): float(value) for far, value in (meta.get("thresholds") or {}).items()}


def _damaged(path: Path, exc: Exception) -> ValueError:
    return ValueError(f"gallery file {path} is damaged ({type(exc).__name__}: {exc}); restore "
                      "it or export the model again")


def saved_thresholds(folder: Path) -> dict[str, float]:
    """The thresholds by false-accept rate a saved gallery holds (``{}`` for a gallery saved
    before they were kept, or none), without reading its vectors."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        return {}
    try:
        return _thresholds(json.loads(path.read_text()))
    except (ValueError, TypeError, AttributeError) as exc:
        raise _damaged(path, exc) from None


class Gallery:
    """Enrolled embeddings with their identity labels."""

    def __init__(self, dim: int, threshold: float | None = None, far: float | None = None,
                 thresholds: dict[str, float] | None = None) -> None:
        """``threshold`` at ``far`` is the one a server applies unless asked otherwise;
        ``thresholds`` are the run's at every false-accept rate it measured, keyed by the
        rate as its metric names spell it (``{"1e-4": 0.71, ...}``)."""
        if dim < 1:
            raise ValueError(f"gallery dimension must be positive, got {dim}")
        self.dim, self.threshold, self.far = dim, threshold, far
        self.thresholds = dict(thresholds or {})
        self._vectors = np.zeros((0, dim), np.float32)
        self.labels: list[str] = []
        self.entries: list[dict[str, Any]] = []  # per label: enrolled_at, sha256 (or {})
        self.model: dict[str, Any] | None = None  # whose embeddings (serving.gallery_store)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def identities(self) -> list[str]:
        return sorted(set(self.labels))

    def add(self, embeddings: Any, labels: list[str],
            entries: list[dict[str, Any]] | None = None) -> None:
        """Enroll ``embeddings`` (``[N, dim]``, normalised here) under ``labels``, with what
        to remember of each (``entries``: when, the source's sha256)."""
        vectors = normalised(embeddings, self.dim)
        if len(vectors) != len(labels):
            raise ValueError(f"{len(vectors)} embeddings but {len(labels)} labels")
        if entries is not None and len(entries) != len(labels):
            raise ValueError(f"{len(entries)} entries for {len(labels)} labels")
        if any(not str(label).strip() for label in labels):
            raise ValueError("identity names must not be empty")
        self._vectors = np.concatenate([self._vectors, vectors])
        self.labels.extend(str(label).strip() for label in labels)
        self.entries.extend(dict(e) for e in (entries or [{}] * len(labels)))

    def vectors(self) -> np.ndarray:
        """The enrolled vectors, ``[N, dim]`` float32, L2-normalised."""
        return self._vectors

    def save(self, folder: Path) -> None:
        """Write both files atomically (see the module docstring)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        vectors = self.vectors()

        def write_vectors(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, vectors, allow_pickle=False)

        _replace(folder / VECTORS_FILE, write_vectors)
        meta = {"dim": self.dim, "count": len(self), "labels": self.labels,
                "entries": self.entries, "threshold": self.threshold, "far": self.far,
                "thresholds": self.thresholds, "model": self.model}
        _replace(folder / META_FILE, lambda tmp: tmp.write_text(json.dumps(meta)))

    @classmethod
    def load(cls, folder: Path) -> "Gallery":
        folder = Path(folder)
        if not (folder / VECTORS_FILE).is_file() and (folder / LEGACY_INDEX_FILE).is_file():
            raise ValueError(f"gallery in {folder} is a faiss index file ({LEGACY_INDEX_FILE}), "
                             "written by an older model-zoo; it is not read, since such a file "
                             "can hold more than numbers: export the model again, and enroll "
                             "again (python -m serving.enroll)")
        missing = [n for n in (VECTORS_FILE, META_FILE) if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"gallery in {folder} lacks {', '.join(missing)}")
        try:
            meta = json.loads((folder / META_FILE).read_text())
            count, dim, labels = int(meta["count"]), int(meta["dim"]), meta["labels"]
            if not isinstance(labels, list) or len(labels) < count or count < 0:
                raise ValueError(f"{count} entries but {len(labels)} labels")
            thresholds = _thresholds(meta)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _damaged(folder / META_FILE, exc) from None
        try:
            vectors = np.load(folder / VECTORS_FILE, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"gallery file {folder / VECTORS_FILE} is not a readable array "
                             f"({str(exc)[:200]}); restore it or export the model again") from None
        if (vectors.ndim != 2 or vectors.shape[1] != dim or len(vectors) < count
                or vectors.dtype.kind != "f"):
            raise ValueError(f"gallery in {folder}: {VECTORS_FILE} holds {vectors.dtype} "
                             f"{list(vectors.shape)}, {META_FILE} expects {count} float vectors "
                             f"of dim {dim}")
        vectors = vectors[:count]  # extra rows: a save that stopped before its commit
        if not np.isfinite(vectors).all():
            raise ValueError(f"gallery file {folder / VECTORS_FILE} holds values that are not "
                             "finite; restore it or export the model again")
        gallery = cls(dim, meta.get("threshold"), meta.get("far"), thresholds)
        gallery._vectors = normalised(vectors, dim)
        gallery.labels = [str(x) for x in labels[:count]]
        entries = meta.get("entries") or []
        gallery.entries = [dict(e) if isinstance(e, dict) else {} for e in entries[:count]]
        gallery.entries += [{}] * (count - len(gallery.entries))  # galleries saved before
        model = meta.get("model")
        gallery.model = dict(model) if isinstance(model, dict) else None
        return gallery


def normalised(embeddings: Any, dim: int) -> np.ndarray:
    """``[N, dim]`` float32 rows scaled to unit length (checked: shape, finite values)."""
    vectors = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"embeddings must have shape [N, {dim}], got {list(vectors.shape)}")
    if not np.isfinite(vectors).all():
        raise ValueError("embeddings must be finite")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _replace(target: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, then ``os.replace`` it in."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
