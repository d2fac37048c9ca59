"""The served gallery on disk: seeded from the model's exported gallery, grown by ``/enroll``.

The exported gallery inside a model (or a Bento) is never written; the first start copies it
to a state folder of its own, and enrollments go there. A gallery belongs to one model: its
folder is named after the model's run as well as its name and version (a store made afresh
numbers its versions from 1 again), and it records the model's embedding contract (name,
version, run, weights digest, width, preprocessing digest). Opened by any other model it is
refused with a line that names its model: embeddings of two models are not comparable, even
at the same width. Every enrollment takes a file lock,
re-reads the folder, adds and saves (``zoo.gallery`` saves atomically), so server workers
never lose each other's identities; searches re-read the folder when another worker changed
it, so every worker answers with every enrolled identity.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
from filelock import FileLock

from zoo.gallery import META_FILE, Gallery, Match

if TYPE_CHECKING:
    from serving.bundle import Bundle

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
_SAME_SPACE = ("run_id", "dim", "preprocessing_sha256")  # what makes embeddings comparable


@dataclass(frozen=True)
class EmbeddingContract:
    """Which model's embeddings a gallery holds."""

    name: str
    version: str | None
    run_id: str
    weights_sha256: str
    dim: int
    preprocessing_sha256: str

    def describe(self) -> str:
        return _describe(asdict(self))

    def matches(self, recorded: dict[str, Any]) -> bool:
        mine = asdict(self)
        return all(str(recorded.get(k)) == str(mine[k]) for k in _SAME_SPACE)


def embedding_contract(bundle: "Bundle", dim: int) -> EmbeddingContract:
    """The contract of a served bundle: its ONNX file's sha256 stands for the weights."""
    digest = hashlib.sha256()
    with open(bundle.onnx_path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    pre = json.dumps(bundle.info.preprocessing, sort_keys=True, default=str).encode()
    info = bundle.info
    return EmbeddingContract(info.name, info.version, info.run_id, digest.hexdigest(), dim,
                             hashlib.sha256(pre).hexdigest())


def _describe(recorded: dict[str, Any]) -> str:
    """A contract as one phrase (a recorded one may lack fields: shown as ``?``)."""
    version = f" v{recorded.get('version')}" if recorded.get("version") else ""
    return (f"{recorded.get('name', '?')}{version} (run {str(recorded.get('run_id', '?'))[:12]}, "
            f"weights {str(recorded.get('weights_sha256', '?'))[:12]}, {recorded.get('dim')}-d)")


class GalleryStore:
    """A ``Gallery`` kept in step with its folder, for one model only."""

    def __init__(self, folder: Path, seed: Path | None, contract: EmbeddingContract) -> None:
        self.folder, self.contract = Path(folder), contract
        self._lock = threading.Lock()
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if not (self.folder / META_FILE).exists():
                gallery = self._seed(seed, contract)
                gallery.save(self.folder)
                log.info("gallery %s created with %d embeddings of %d identities", self.folder,
                         len(gallery), len(gallery.identities))
        self._stamp = -1
        self._gallery = self._load()

    @staticmethod
    def _seed(seed: Path | None, contract: EmbeddingContract) -> Gallery:
        """The model's exported gallery (made by this very model at export), or an empty one,
        stamped with the model's contract."""
        if seed is not None and (seed / META_FILE).exists():
            gallery = Gallery.load(seed)
            if gallery.dim != contract.dim:
                raise ValueError(f"the exported gallery in {seed} holds {gallery.dim}-d "
                                 f"embeddings but the model makes {contract.dim}-d ones: "
                                 "export the model again")
        else:
            gallery = Gallery(contract.dim)
        gallery.model = asdict(contract)
        return gallery

    def _check_owner(self, gallery: Gallery) -> None:
        recorded = gallery.model
        if recorded is None:
            raise ValueError(f"gallery {self.folder} does not say which model made its "
                             f"embeddings (written by an older model-zoo), so it is not used with "
                             f"{self.contract.describe()}: point ZOO_GALLERY_DIR elsewhere, and "
                             "enroll again with python -m serving.enroll")
        if not self.contract.matches(recorded) or gallery.dim != self.contract.dim:
            raise ValueError(f"gallery {self.folder} belongs to {_describe(recorded)}, not to "
                             f"{self.contract.describe()}: embeddings of two models do not "
                             "compare. Point ZOO_GALLERY_DIR elsewhere (or unset it), and carry "
                             "identities over by enrolling their images again: "
                             "python -m serving.enroll --images DIR")

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
        self._check_owner(gallery)
        self._stamp = stamp
        return gallery

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This process's threads and other processes, one at a time."""
        with self._lock, FileLock(self.folder / LOCK_FILE):
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
