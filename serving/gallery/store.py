"""The served gallery: a database table (``serving.gallery.table``) and this worker's index of it.

The exported gallery inside a model (or a Bento) is never written; it seeds the model's
gallery in the database once, and enrollments are rows added there, with what each keeps
for the model's later versions (``serving/gallery/kept.py``). A gallery belongs to one model
version: it is keyed by the model's name, version and run (a store made afresh numbers its
versions from 1 again), and it records the model's embedding contract (name, version, run,
weights digest, width, preprocessing digest); embeddings of two models are not comparable,
even at the same width. The galleries of a registered model's versions share one database
(a SQLite file in the gallery's state folder by default, or PostgreSQL with
``ZOO_GALLERY_URI``), and with it what was kept, from which a new version's gallery is
filled (``serving/gallery/carry.py``). A version's gallery in the folder an older model-zoo
gave it alone is carried into the shared database the first time that version opens it.

Each worker builds its faiss index from the table once, at start, then applies what other
workers (and servers) commit, by row id and a change counter, before every search: an
identity acknowledged by one worker is found by all of them.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from serving.gallery.database import DB_FILE, database_uri, open_engine
from serving.gallery.index import GalleryIndex, Match, choose_kind
from serving.gallery.kept import Sealer
from serving.gallery.table import GalleryTable, Header, Kept, Rows
from zoo.gallery import META_FILE, Gallery, normalised

if TYPE_CHECKING:
    from zoo.export.bundle import Bundle

log = logging.getLogger(__name__)

_SAME_SPACE = ("run_id", "dim", "preprocessing_sha256")  # what makes embeddings comparable
PROGRESS_FROM = 50_000  # entries: a gallery this large shows a progress bar while indexed


@dataclass(frozen=True)
class EmbeddingContract:
    """Which model's embeddings a gallery holds."""

    name: str
    version: str | None
    run_id: str
    weights_sha256: str
    dim: int
    preprocessing_sha256: str

    @property
    def key(self) -> str:
        """The gallery's key in the database: model, version and run."""
        version = f"v{self.version}" if self.version else "run"
        return f"{self.name}-{version}-{self.run_id[:12]}"

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
    info = bundle.info
    return EmbeddingContract(info.name, info.version, info.run_id, digest.hexdigest(), dim,
                             info.record.preprocessing_digest())


def _describe(recorded: dict[str, Any]) -> str:
    """A contract as one phrase (a recorded one may lack fields: shown as ``?``)."""
    version = f" v{recorded.get('version')}" if recorded.get("version") else ""
    return (f"{recorded.get('name', '?')}{version} (run {str(recorded.get('run_id', '?'))[:12]}, "
            f"weights {str(recorded.get('weights_sha256', '?'))[:12]}, {recorded.get('dim')}-d)")


class GalleryStore:
    """One model's gallery: the table is the truth, the index this worker's cache of it."""

    def __init__(self, folder: Path, seed: Path | None, contract: EmbeddingContract,
                 uri: str = "", index: str = "auto", sealer: Sealer | None = None,
                 legacy: Path | None = None) -> None:
        self.folder, self.contract, self.sealer = Path(folder), contract, sealer
        choose_kind(index, 0)  # a bad ZOO_GALLERY_INDEX fails before any database is made
        self.table = GalleryTable(open_engine(database_uri(uri, self.folder)), contract.key,
                                  contract.name)
        self.single = not uri  # a SQLite file in the gallery's folder
        self._lock = threading.Lock()
        if sealer is not None:
            self.table.check_key(sealer.check)
        self.header = self.table.header() or self._create(seed, legacy)
        self._check_owner(self.header.contract, self.header.dim)
        self.index = GalleryIndex(contract.dim, index)
        self._counter = self._last_removal = -1
        with self._lock:
            self._build()

    # -- opening -----------------------------------------------------------------------------

    def _create(self, seed: Path | None, legacy: Path | None) -> Header:
        """Make the gallery row, seeded with the model's exported gallery; or with this
        version's gallery where an older model-zoo kept it (its own folder, ``legacy``, or
        files of a gallery in this folder)."""
        if legacy is not None and (legacy / DB_FILE).is_file():
            carried = _older_gallery(legacy / DB_FILE, self.contract)
            if carried is not None:
                return self._create_with(*carried, f" (carried from {legacy})")
        files = self.folder / META_FILE
        source = self.folder if self.single and files.is_file() else seed
        gallery = self._seed(source)
        return self._create_with(
            Rows(np.arange(len(gallery)), gallery.labels, gallery.vectors()),
            [dict(e) for e in gallery.entries], gallery.threshold, gallery.far,
            f" (from {files.parent}'s files)" if source == self.folder else "")

    def _create_with(self, rows: Rows, meta: list[dict[str, Any]], threshold: float | None,
                     far: float | None, origin: str) -> Header:
        if self.table.create(asdict(self.contract), self.contract.dim, threshold, far, rows,
                             meta):
            log.info("gallery %s created in %s with %d embeddings of %d identities%s",
                     self.contract.key, self.table.where, len(rows), len(set(rows.identities)),
                     origin)
        header = self.table.header()
        assert header is not None  # created by us or by another process
        return header

    def _seed(self, source: Path | None) -> Gallery:
        """The model's exported gallery (made by this very model at export), or an empty one."""
        if source is None or not (source / META_FILE).exists():
            return Gallery(self.contract.dim)
        gallery = Gallery.load(source)
        if source == self.folder:  # an older model-zoo's state: says whose it is, or not used
            self._check_owner(gallery.model, gallery.dim)
        elif gallery.dim != self.contract.dim:
            raise ValueError(f"the exported gallery in {source} holds {gallery.dim}-d "
                             f"embeddings but the model makes {self.contract.dim}-d ones: "
                             "export the model again")
        return gallery

    def _check_owner(self, recorded: dict[str, Any] | None, dim: int) -> None:
        if recorded is None:
            raise ValueError(f"gallery {self.folder} does not say which model made its "
                             f"embeddings (written by an older model-zoo), so it is not used with "
                             f"{self.contract.describe()}: point ZOO_GALLERY_DIR elsewhere, and "
                             "enroll again with python -m serving.enroll")
        if not self.contract.matches(recorded) or dim != self.contract.dim:
            raise ValueError(f"gallery {self.where} belongs to {_describe(recorded)}, not to "
                             f"{self.contract.describe()}: embeddings of two models do not "
                             "compare. Point ZOO_GALLERY_DIR elsewhere (or unset it): each "
                             "version gets a gallery of its own, which python -m serving.migrate "
                             "fills with the people enrolled before")

    @property
    def where(self) -> str:
        return (f"{self.contract.key} in {self.folder}" if self.single
                else f"{self.contract.key} in {self.table.where}")

    def _build(self) -> None:
        """Index the whole table (at start, or when an HNSW index has too many tombstones)."""
        started = time.perf_counter()
        counter, last_removal = self.table.counter(), self.table.last_removal()
        total = self.table.size()
        # filled in place: a million 128-d entries are 512 MB, and copies of them add up
        ids, names = np.zeros(total, np.int64), []
        vectors = np.zeros((total, self.contract.dim), np.float32)
        with tqdm(total=total, desc="gallery", unit="entry", disable=total < PROGRESS_FROM,
                  mininterval=2) as bar:
            for chunk in self.table.rows():  # rows committed since `total` wait for catch-up
                take = min(len(chunk), total - len(names))
                ids[len(names):len(names) + take] = chunk.ids[:take]
                vectors[len(names):len(names) + take] = chunk.vectors[:take]
                names += chunk.identities[:take]
                bar.update(take)
        count = len(names)
        self.index.build(Rows(ids[:count], names, vectors[:count]))
        self._counter, self._last_removal = counter, last_removal
        if total >= PROGRESS_FROM:
            log.info("gallery %s: %d entries indexed (%s) in %.1f s", self.contract.key, total,
                     self.index.info.kind, time.perf_counter() - started)

    # -- keeping up --------------------------------------------------------------------------

    def _catch_up(self) -> None:
        """Apply what was committed since this worker last looked (hold ``_lock``)."""
        if self.table.counter() == self._counter:
            return
        changes = self.table.changes(self.index.last_id, self._last_removal)
        self.index.add(changes.added)
        for identity, up_to in changes.removed:
            self.index.remove(identity, up_to)
        self._counter, self._last_removal = changes.counter, changes.last_removal
        if self.index.stale:
            self._build()

    def refresh(self) -> "GalleryStore":
        """Catch up with the table now; returns self."""
        with self._lock:
            self._catch_up()
        return self

    def search(self, embeddings: np.ndarray, k: int) -> list[list[Match]]:
        """The ``k`` most similar identities (best entry of each), most similar first."""
        with self._lock:
            self._catch_up()
            return self.index.search(embeddings, k)

    def enroll(self, embeddings: np.ndarray, name: str, digests: list[str] | None = None,
               kept: tuple[str, list[bytes]] | None = None) -> int:
        """Add ``embeddings`` under ``name`` (``digests``: each source's sha256), and what
        each keeps for later versions (``kept``: its kind and one payload per entry, sealed
        here; dropped where keeping is off), in one transaction; returns that identity's
        entry count."""
        vectors = normalised(embeddings, self.contract.dim)
        name = str(name).strip()
        if not name:
            raise ValueError("identity names must not be empty")
        sealed = None
        if kept is not None and self.sealer is not None:
            kind, payloads = kept
            sealed = [Kept(kind, self.sealer.seal(self.contract.name, name, kind, data))
                      for data in payloads]
        count = self.table.enroll(name, vectors, list(digests or [None] * len(vectors)),
                                  sealed)
        self.refresh()
        return count

    def remove(self, name: str) -> int:
        """Remove every entry of ``name``; returns how many there were (0: none)."""
        removed = self.table.remove(name)
        if removed:
            self.refresh()
        return removed

    # -- reading -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.refresh().index)

    @property
    def threshold(self) -> float | None:
        return self.header.threshold

    @property
    def far(self) -> float | None:
        return self.header.far

    def counts(self, offset: int = 0, limit: int | None = None,
               search: str = "") -> dict[str, int]:
        """Entries per identity, by name (a page of them; names holding ``search``)."""
        return self.table.counts(offset, limit, search)

    def count_identities(self, search: str = "") -> int:
        """How many identities there are (whose names hold ``search``)."""
        return self.table.count_identities(search) if search else self.index.identities

    def enrollments(self, name: str) -> list[dict[str, Any]]:
        return self.table.enrollments(name)

    def similarity_to(self, name: str, embedding: np.ndarray) -> float | None:
        """``embedding``'s similarity to the nearest entry of ``name`` (None: not enrolled),
        read from the table, so every kind of index answers exactly."""
        vectors = self.table.vectors_of(name)
        if not len(vectors):
            return None
        return float((vectors @ normalised(embedding.reshape(1, -1), self.contract.dim)[0]).max())

    def describe(self) -> dict[str, Any]:
        """``/model``'s gallery: its size, threshold and index, and how many entries of the
        family keep data for later versions (never what they keep)."""
        self.refresh()
        return {"entries": len(self.index), "identities": self.index.identities,
                "threshold": self.threshold, "far": self.far,
                "database": self.table.engine.dialect.name,
                "index": self.index.info.to_dict(),
                "kept": {"keeping": self.sealer is not None,
                         "entries": self.table.kept_count()}}

    def close(self) -> None:
        self.table.dispose()



def _older_gallery(path: Path, contract: EmbeddingContract
                   ) -> tuple[Rows, list[dict[str, Any]], float | None, float | None] | None:
    """This version's gallery in a database an older model-zoo kept for it alone: its rows,
    their enrollment times and digests, its threshold; None when it holds another's."""
    from serving.gallery.table import read_gallery

    engine = open_engine(f"sqlite:///{path}")
    try:
        return read_gallery(engine, contract.key)
    finally:
        engine.dispose()
