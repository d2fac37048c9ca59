"""The served gallery on disk: seeded from the model's exported gallery, grown by ``/enroll``.

The exported gallery inside a model (or a Bento) is never written; the first start copies it
to a state folder of its own, and enrollments go there. Every enrollment takes a file lock,
re-reads the folder, adds and saves (``zoo.gallery`` saves atomically), so server workers
never lose each other's identities; searches re-read the folder when another worker changed
it, so every worker answers with every enrolled identity.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

from zoo.file_lock import file_lock
from zoo.gallery import META_FILE, Gallery, Match

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class GalleryStore:
    """A ``Gallery`` kept in step with its folder."""

    def __init__(self, folder: Path, seed: Path | None, dim: int) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if not (self.folder / META_FILE).exists():
                gallery = self._seed(seed, dim)
                gallery.save(self.folder)
                log.info("gallery %s created with %d embeddings of %d identities", self.folder,
                         len(gallery), len(gallery.identities))
        self._stamp = -1
        self._gallery = self._load()
        if self._gallery.dim != dim:
            raise ValueError(f"gallery {self.folder} holds {self._gallery.dim}-d embeddings but "
                             f"the model makes {dim}-d ones: point ZOO_GALLERY_DIR elsewhere")

    @staticmethod
    def _seed(seed: Path | None, dim: int) -> Gallery:
        if seed is not None and (seed / META_FILE).exists():
            return Gallery.load(seed)
        return Gallery(dim)

    def _mtime(self) -> int:
        try:
            return (self.folder / META_FILE).stat().st_mtime_ns
        except FileNotFoundError:
            return -1

    def _load(self) -> Gallery:
        stamp = self._mtime()
        try:
            gallery = Gallery.load(self.folder)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise RuntimeError(f"gallery {self.folder} cannot be read ({exc}); restore it or "
                               "delete the folder to start from the model's gallery") from None
        self._stamp = stamp
        return gallery

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This process's threads and other processes, one at a time."""
        with self._lock, file_lock(self.folder / LOCK_FILE):
            yield

    @property
    def gallery(self) -> Gallery:
        """The gallery as it is on disk now (re-read when another process changed it)."""
        if self._mtime() != self._stamp:
            with self._lock:
                if self._mtime() != self._stamp:
                    self._gallery = self._load()
        return self._gallery

    def search(self, embeddings: np.ndarray, k: int) -> list[list[Match]]:
        """The ``k`` most similar identities (best entry of each), most similar first.

        Identities have many entries each, so the search widens until ``k`` distinct ones
        are found or the whole gallery has been ranked.
        """
        gallery = self.gallery
        results: list[list[Match]] = []
        for query in np.asarray(embeddings, dtype=np.float32).reshape(len(embeddings), -1):
            wide = min(len(gallery), max(k * 20, 64))
            while True:
                seen: dict[str, Match] = {}
                for match in gallery.search(query[None], wide)[0]:
                    seen.setdefault(match.label, match)
                if len(seen) >= k or wide >= len(gallery):
                    break
                wide = min(len(gallery), wide * 4)
            results.append(list(seen.values())[:k])
        return results

    def enroll(self, embeddings: np.ndarray, name: str,
               digests: list[str] | None = None) -> int:
        """Add ``embeddings`` under ``name`` (``digests``: each source's sha256) and save;
        returns that identity's entry count."""
        when = datetime.now(timezone.utc).isoformat(timespec="seconds")
        entries = [{"enrolled_at": when, "sha256": d} for d in (digests or
                                                                 [None] * len(embeddings))]
        with self._locked():
            gallery = self._load()
            gallery.add(embeddings, [name] * len(embeddings), entries)
            gallery.save(self.folder)
            self._gallery, self._stamp = gallery, self._mtime()
        return sum(label == name for label in gallery.labels)

    def remove(self, name: str) -> int:
        """Remove every entry of ``name`` and save; returns how many there were (0: none,
        and nothing is written)."""
        with self._locked():
            gallery = self._load()
            removed = gallery.remove(name)
            if removed:
                gallery.save(self.folder)
                self._gallery, self._stamp = gallery, self._mtime()
        return removed
