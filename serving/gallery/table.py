"""One model version's gallery in the database (``serving/gallery/database.py``): its entries
added, removed and read in the order readers need.

Every write is one transaction that first locks its gallery's row (``BEGIN IMMEDIATE`` in
SQLite, ``SELECT ... FOR UPDATE`` in PostgreSQL): writers of one gallery go one at a time, so
ids are committed in order and a reader's watermark never skips one. A process killed in the
middle of an enrollment leaves the database as it was before that transaction.

An enrollment writes what it keeps for later versions (``KEPT``) and its entries in one
transaction. Removing an identity removes it from every gallery of the family and deletes
what was kept of it, in one transaction that locks the family's galleries in key order (as
every writer does), so an enrollment or a migration running meanwhile either comes before it
whole or finds the identity gone.
"""
from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from serving.gallery.database import (ENTRIES, GALLERIES, KEPT, KEYS, REMOVALS, UNCARRIED,
                                      upgrade)
from serving.gallery.names import search_key
from zoo.gallery import normalised

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rows:
    """Entries as arrays: ids (int64, ascending), identities, vectors (float32 ``[N, dim]``)."""

    ids: np.ndarray
    identities: list[str]
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Changes:
    """What a reader lacks: new entries, and removals as (identity, largest removed id)."""

    counter: int
    added: Rows
    removed: list[tuple[str, int]]
    last_removal: int


@dataclass(frozen=True)
class Kept:
    """What one enrollment keeps for later versions: ``kind`` (chip, image or row) and its
    sealed payload (``serving/gallery/kept.py``)."""

    kind: str
    payload: bytes


@dataclass(frozen=True)
class Header:
    """A gallery's own row."""

    contract: dict[str, Any]
    dim: int
    threshold: float | None
    far: float | None


def _header(row: Any) -> Header:
    return Header(json.loads(row.contract), row.dim, row.threshold, row.far)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _as_rows(rows: Sequence[Any], dim: int) -> Rows:
    """``(id, identity, vector blob)`` rows as one ``Rows``: ids, names, a float32 matrix."""
    ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    vectors = np.frombuffer(b"".join(r[2] for r in rows), np.float32)
    return Rows(ids, [r[1] for r in rows], vectors.reshape(len(rows), dim))


def _in_parts(conn: Connection, query: Any, dim: int, chunk: int) -> Iterator[Rows]:
    """``query``'s ``(id, identity, vector blob)`` rows as ``Rows`` of at most ``chunk``,
    streamed: never every row as Python objects at once."""
    result = conn.execution_options(stream_results=True, yield_per=chunk).execute(query)
    for part in result.partitions(chunk):
        yield _as_rows(part, dim)


def _blob(vectors: np.ndarray) -> list[bytes]:
    """Rows as float32 bytes, L2-normalised here: readers take the table's vectors as they are."""
    return [row.tobytes() for row in normalised(vectors, vectors.shape[1])]


class GalleryTable:
    """One model version's gallery in a database, of the registered model ``family``."""

    def __init__(self, engine: Engine, key: str, family: str) -> None:
        self.engine, self.key, self.family = engine, key, family
        self._dim: int | None = None
        upgrade(engine)

    @property
    def where(self) -> str:
        """Where the gallery lives, for messages (no password)."""
        return self.engine.url.render_as_string(hide_password=True)

    def _write(self) -> Any:
        """A write transaction holding this gallery's lock (create the row first: ``create``)."""
        return self.engine.connect().execution_options(write=True)

    def _lock(self, conn: Connection) -> int | None:
        """Lock this gallery's row until commit; its change counter (None: no such gallery)."""
        return conn.execute(sa.select(GALLERIES.c.changes).where(GALLERIES.c.key == self.key)
                            .with_for_update()).scalar()

    def header(self) -> Header | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(GALLERIES).where(GALLERIES.c.key == self.key)).first()
        return None if row is None else _header(row)

    def check_key(self, check: str) -> None:
        """Record which key seals the family's kept data (its digest), or refuse another."""
        with self._write() as conn, conn.begin():
            known = conn.execute(sa.select(KEYS.c.key_check)
                                 .where(KEYS.c.family == self.family)).scalar()
            if known is None:
                try:
                    conn.execute(KEYS.insert().values(family=self.family, key_check=check))
                except sa.exc.IntegrityError:  # PostgreSQL: another server recorded one first
                    known = None
                else:
                    return
        if known is None:
            return self.check_key(check)
        if not hmac.compare_digest(known, check):
            raise ValueError(f"what the galleries of {self.family} in {self.where} keep was sealed "
                             "with another key: start with that key (ZOO_GALLERY_KEY, or the "
                             "gallery.key file the first server made), which every server of "
                             "this database must share")

    def create(self, contract: dict[str, Any], dim: int, threshold: float | None,
               far: float | None, seed: Rows | None, seed_meta: list[dict[str, Any]]) -> bool:
        """Create the gallery with its seed entries in one transaction; False when another
        process created it first."""
        with self._write() as conn, conn.begin():
            if conn.execute(sa.select(GALLERIES.c.key).where(GALLERIES.c.key == self.key)
                            .with_for_update()).first() is not None:
                return False
            try:
                conn.execute(GALLERIES.insert().values(
                    key=self.key, contract=json.dumps(contract), family=self.family, dim=dim,
                    threshold=threshold, far=far, changes=0, created_at=_now()))
            except sa.exc.IntegrityError:  # PostgreSQL: another server created it meanwhile
                return False
            if seed is not None and len(seed):
                self._insert(conn, seed.identities, seed.vectors, seed_meta)
        return True

    def _insert(self, conn: Connection, identities: list[str], vectors: np.ndarray,
                meta: list[dict[str, Any]]) -> None:
        """Entries, ``meta`` giving each its ``enrolled_at``, ``sha256`` and ``kept_id``."""
        for start in range(0, len(identities), 10_000):
            end = start + 10_000
            conn.execute(ENTRIES.insert(), [
                {"model_key": self.key, "identity": name, "vector": blob,
                 "enrolled_at": m.get("enrolled_at"), "sha256": m.get("sha256"),
                 "kept_id": m.get("kept_id"), "search_key": search_key(name)}
                for name, blob, m in zip(identities[start:end], _blob(vectors[start:end]),
                                         meta[start:end])])

    def enroll(self, identity: str, vectors: np.ndarray, digests: list[str | None],
               kept: Sequence[Kept] | None = None) -> int:
        """Insert the entries of one identity, and what each keeps for later versions
        (``kept``, one per entry, or none), in one transaction; returns its entry count."""
        when = _now()
        with self._write() as conn, conn.begin():
            if self._lock(conn) is None:
                raise LookupError(f"gallery {self.key} is not in {self.where}")
            kept_ids: list[int | None] = [None] * len(vectors)
            if kept:
                kept_ids = list(conn.execute(
                    KEPT.insert().returning(KEPT.c.id, sort_by_parameter_order=True),
                    [{"family": self.family, "identity": identity, "kind": k.kind,
                      "payload": k.payload, "enrolled_at": when, "sha256": d}
                     for k, d in zip(kept, digests)]).scalars())
            self._insert(conn, [identity] * len(vectors), vectors,
                         [{"enrolled_at": when, "sha256": d, "kept_id": k}
                          for d, k in zip(digests, kept_ids)])
            self._bump(conn)
            return conn.execute(sa.select(sa.func.count()).select_from(ENTRIES).where(
                ENTRIES.c.model_key == self.key, ENTRIES.c.identity == identity)).scalar_one()

    def enroll_many(self, identities: list[str], vectors: np.ndarray) -> None:
        """Bulk insert in one transaction (benchmarks and imports)."""
        meta = [{"enrolled_at": _now()}] * len(identities)
        with self._write() as conn, conn.begin():
            self._lock(conn)
            self._insert(conn, identities, vectors, meta)
            self._bump(conn)

    def remove(self, identity: str) -> int:
        """Delete ``identity`` from every gallery of the family, and what was kept of it,
        recording each gallery's removal for its readers; returns how many entries this
        gallery held (0: none)."""
        with self._write() as conn, conn.begin():
            keys = conn.execute(sa.select(GALLERIES.c.key).where(sa.or_(
                GALLERIES.c.family == self.family, GALLERIES.c.key == self.key))
                .order_by(GALLERIES.c.key).with_for_update()).scalars().all()
            here = 0
            for key in keys:
                mine = sa.and_(ENTRIES.c.model_key == key, ENTRIES.c.identity == identity)
                count, up_to = conn.execute(sa.select(sa.func.count(), sa.func.max(ENTRIES.c.id))
                                            .where(mine)).one()
                if not count:
                    continue
                conn.execute(ENTRIES.delete().where(mine))
                conn.execute(REMOVALS.insert().values(model_key=key, identity=identity,
                                                      up_to_id=up_to))
                self._bump(conn, key)
                here = int(count) if key == self.key else here
            conn.execute(KEPT.delete().where(KEPT.c.family == self.family,
                                             KEPT.c.identity == identity))
        if here:
            self._truncate_log()
        return here

    def _truncate_log(self) -> None:
        """SQLite: copy the WAL into the database and empty it, so a deleted person's bytes
        (overwritten in the file by ``secure_delete``) do not linger in the log either. Best
        effort: a reader holding an old snapshot keeps the log until it lets go."""
        if self.engine.dialect.name != "sqlite":
            return
        with self.engine.connect() as conn:  # outside any transaction: the driver's own
            busy = conn.connection.dbapi_connection.execute(
                "PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy and busy[0]:
            log.info("gallery %s: the write-ahead log is still read; it is emptied at the "
                     "next checkpoint", self.key)

    def _bump(self, conn: Connection, key: str | None = None) -> None:
        """Raise the change counter of this gallery (or of gallery ``key``)."""
        conn.execute(GALLERIES.update().where(GALLERIES.c.key == (key or self.key))
                     .values(changes=GALLERIES.c.changes + 1))

    def counter(self) -> int:
        """The change counter: a reader compares it with the one it has applied."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(GALLERIES.c.changes)
                                    .where(GALLERIES.c.key == self.key)).scalar_one())

    def rows(self, after_id: int = 0, chunk: int = 50_000) -> Iterator[Rows]:
        """Entries with ids above ``after_id``, ascending, in chunks."""
        dim = self.dim
        with self.engine.connect() as conn:
            yield from _in_parts(conn, sa.select(ENTRIES.c.id, ENTRIES.c.identity,
                                                 ENTRIES.c.vector)
                                 .where(ENTRIES.c.model_key == self.key, ENTRIES.c.id > after_id)
                                 .order_by(ENTRIES.c.id), dim, chunk)

    def changes(self, after_id: int, after_removal: int) -> Changes:
        """Everything committed since a reader's watermarks, read in one transaction."""
        dim = self.dim
        with self.engine.connect() as conn, conn.begin():
            counter = int(conn.execute(sa.select(GALLERIES.c.changes)
                                       .where(GALLERIES.c.key == self.key)).scalar_one())
            new = conn.execute(sa.select(ENTRIES.c.id, ENTRIES.c.identity, ENTRIES.c.vector)
                               .where(ENTRIES.c.model_key == self.key, ENTRIES.c.id > after_id)
                               .order_by(ENTRIES.c.id)).all()
            gone = conn.execute(sa.select(REMOVALS.c.seq, REMOVALS.c.identity,
                                          REMOVALS.c.up_to_id)
                                .where(REMOVALS.c.model_key == self.key,
                                       REMOVALS.c.seq > after_removal)
                                .order_by(REMOVALS.c.seq)).all()
        return Changes(counter, _as_rows(new, dim),
                       [(r[1], int(r[2])) for r in gone], gone[-1][0] if gone else after_removal)

    @property
    def dim(self) -> int:
        """The embedding width (read once: a gallery's width never changes)."""
        if self._dim is None:
            header = self.header()
            if header is None:
                raise LookupError(f"gallery {self.key} is not in {self.where}")
            self._dim = header.dim
        return self._dim

    def last_removal(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(REMOVALS.c.seq), 0))
                                    .where(REMOVALS.c.model_key == self.key)).scalar_one())

    def size(self) -> int:
        """Entries (the index counts identities as it builds: no second scan here)."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count())
                                    .where(ENTRIES.c.model_key == self.key)).scalar_one())

    def counts(self, offset: int = 0, limit: int | None = None,
               search: str = "") -> dict[str, int]:
        """Entries per identity, by name, one page; only names holding ``search`` (any case;
        ``%`` and ``_`` are no wildcards) when one is given."""
        query = (sa.select(ENTRIES.c.identity, sa.func.count())
                 .where(*self._names(search))
                 .group_by(ENTRIES.c.identity).order_by(ENTRIES.c.identity)
                 .offset(offset).limit(limit))
        with self.engine.connect() as conn:
            return {name: int(n) for name, n in conn.execute(query)}

    def count_identities(self, search: str = "") -> int:
        """How many identities hold ``search`` in their name."""
        query = sa.select(sa.func.count(sa.distinct(ENTRIES.c.identity))).where(
            *self._names(search))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def _names(self, search: str) -> list[Any]:
        where = [ENTRIES.c.model_key == self.key]
        if search:
            where.append(ENTRIES.c.search_key.contains(search_key(search), autoescape=True))
        return where

    def kept_count(self) -> int:
        """Entries of the family that keep data for later versions."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(KEPT)
                                    .where(KEPT.c.family == self.family)).scalar_one())

    def enrollments(self, identity: str) -> list[dict[str, Any]]:
        """When each entry of ``identity`` was enrolled, and from what (sha256), in order."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ENTRIES.c.enrolled_at, ENTRIES.c.sha256)
                                .where(ENTRIES.c.model_key == self.key,
                                       ENTRIES.c.identity == identity)
                                .order_by(ENTRIES.c.id)).all()
        return [{"enrolled_at": r[0], "sha256": r[1]} for r in rows]

    def vectors_of(self, identity: str) -> np.ndarray:
        """The entries of ``identity`` (float32 ``[n, dim]``, unit rows; none: ``[0, dim]``)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ENTRIES.c.id, ENTRIES.c.identity, ENTRIES.c.vector)
                                .where(ENTRIES.c.model_key == self.key,
                                       ENTRIES.c.identity == identity)).all()
        return _as_rows(rows, self.dim).vectors

    def dispose(self) -> None:
        self.engine.dispose()


def read_gallery(engine: Engine, key: str
                 ) -> tuple[Rows, list[dict[str, Any]], float | None, float | None] | None:
    """Gallery ``key`` of a database as it stands (an older model-zoo's too): its entries,
    their enrollment times and digests, its threshold and FAR; None when it has no such
    gallery."""
    with engine.connect() as conn:
        head = conn.execute(sa.select(GALLERIES.c.dim, GALLERIES.c.threshold, GALLERIES.c.far)
                            .where(GALLERIES.c.key == key)).first()
        if head is None:
            return None
        rows = conn.execute(sa.select(ENTRIES.c.id, ENTRIES.c.identity, ENTRIES.c.vector,
                                      ENTRIES.c.enrolled_at, ENTRIES.c.sha256)
                            .where(ENTRIES.c.model_key == key).order_by(ENTRIES.c.id)).all()
    meta = [{"enrolled_at": r[3], "sha256": r[4]} for r in rows]
    return _as_rows(rows, head.dim), meta, head.threshold, head.far


@dataclass(frozen=True)
class KeptRow:
    """One entry's kept data, as stored (sealed)."""

    id: int
    identity: str
    kind: str
    payload: bytes
    enrolled_at: str | None
    sha256: str | None


class CarryTable:
    """What carrying a family's people into a version's gallery reads and writes
    (``serving/gallery/carry.py``), on that version's ``GalleryTable``."""

    def __init__(self, table: GalleryTable) -> None:
        self.table = table

    def _pending(self, after_id: int, until_id: int | None = None) -> list[Any]:
        """The conditions of a kept entry of the family in ``(after_id, until_id]`` that this
        gallery has neither embedded nor listed as uncarried."""
        t = self.table
        embedded = sa.select(ENTRIES.c.id).where(ENTRIES.c.model_key == t.key,
                                                 ENTRIES.c.kept_id == KEPT.c.id)
        listed = sa.select(UNCARRIED.c.kept_id).where(UNCARRIED.c.model_key == t.key,
                                                      UNCARRIED.c.kept_id == KEPT.c.id)
        where = [KEPT.c.family == t.family, KEPT.c.id > after_id,
                 ~sa.exists(embedded), ~sa.exists(listed)]
        if until_id is not None:
            where.append(KEPT.c.id <= until_id)
        return where

    def pending(self, after_id: int, limit: int, until_id: int | None = None
                ) -> list[KeptRow]:
        """Kept entries of the family above ``after_id`` (up to ``until_id``, when given)
        that this gallery has neither embedded nor listed as uncarried, by id."""
        with self.table.engine.connect() as conn:
            rows = conn.execute(sa.select(KEPT.c.id, KEPT.c.identity, KEPT.c.kind,
                                          KEPT.c.payload, KEPT.c.enrolled_at, KEPT.c.sha256)
                                .where(*self._pending(after_id, until_id))
                                .order_by(KEPT.c.id).limit(limit)).all()
        return [KeptRow(*r) for r in rows]

    def split(self, parts: int) -> list[int]:
        """The last id of each of up to ``parts`` runs of the pending kept entries (by id)
        whose sizes differ by one at most, so that carriers given ``(0, first]``,
        ``(first, second]``, ... share the work evenly; empty when nothing is pending."""
        numbered = sa.select(KEPT.c.id, sa.func.ntile(max(1, parts)).over(
            order_by=KEPT.c.id).label("part")).where(*self._pending(0)).subquery()
        with self.table.engine.connect() as conn:
            return [int(i) for i in conn.execute(
                sa.select(sa.func.max(numbered.c.id)).group_by(numbered.c.part)
                .order_by(numbered.c.part)).scalars()]

    def count(self) -> tuple[int, int]:
        """(kept entries of the family, those this gallery has embedded or listed)."""
        t = self.table
        total = t.kept_count()
        with t.engine.connect() as conn:
            done = conn.execute(sa.select(sa.func.count()).select_from(ENTRIES).where(
                ENTRIES.c.model_key == t.key, ENTRIES.c.kept_id.is_not(None))).scalar_one()
            listed = conn.execute(sa.select(sa.func.count()).select_from(UNCARRIED)
                                  .where(UNCARRIED.c.model_key == t.key)).scalar_one()
        return int(total), int(done) + int(listed)

    def add(self, rows: Sequence[KeptRow], vectors: np.ndarray,
            refused: Sequence[tuple[KeptRow, str]]) -> int:
        """Entries embedded from ``rows``, and the rows this version cannot embed with the
        reason, in one transaction under the gallery's lock; only for what is still kept (a
        person deleted meanwhile is never brought back) and not embedded yet (by another
        carrier meanwhile). Returns the entries added."""
        t = self.table
        with t._write() as conn, conn.begin():
            if t._lock(conn) is None:
                raise LookupError(f"gallery {t.key} is not in {t.where}")
            wanted = [r.id for r in rows] + [r.id for r, _ in refused]
            alive = set(conn.execute(sa.select(KEPT.c.id).where(KEPT.c.id.in_(wanted)))
                        .scalars()) if wanted else set()
            alive -= set(conn.execute(sa.select(ENTRIES.c.kept_id).where(
                ENTRIES.c.model_key == t.key, ENTRIES.c.kept_id.in_(wanted))).scalars())
            alive -= set(conn.execute(sa.select(UNCARRIED.c.kept_id).where(
                UNCARRIED.c.model_key == t.key, UNCARRIED.c.kept_id.in_(wanted))).scalars())
            keep = [i for i, r in enumerate(rows) if r.id in alive]
            if keep:
                t._insert(conn, [rows[i].identity for i in keep], vectors[keep],
                          [{"enrolled_at": rows[i].enrolled_at, "sha256": rows[i].sha256,
                            "kept_id": rows[i].id} for i in keep])
                t._bump(conn)
            gone = [(r, why) for r, why in refused if r.id in alive]
            if gone:
                conn.execute(UNCARRIED.insert(), [
                    {"model_key": t.key, "kept_id": r.id, "identity": r.identity,
                     "reason": why} for r, why in gone])
            return len(keep)

    def uncarried(self) -> list[tuple[str, str]]:
        """(identity, reason) of every kept entry this gallery could not embed."""
        t = self.table
        with t.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(
                sa.select(UNCARRIED.c.identity, UNCARRIED.c.reason)
                .where(UNCARRIED.c.model_key == t.key).order_by(UNCARRIED.c.kept_id))]

    def nothing_kept(self, key: str) -> list[str]:
        """Identities enrolled into gallery ``key`` of which nothing was kept (enrolled
        before keeping, or with it off): they cannot be carried."""
        with self.table.engine.connect() as conn:
            return list(conn.execute(
                sa.select(ENTRIES.c.identity).distinct()
                .where(ENTRIES.c.model_key == key, ENTRIES.c.kept_id.is_(None),
                       ENTRIES.c.sha256.is_not(None))
                .order_by(ENTRIES.c.identity)).scalars())

    def kept_entries(self, key: str) -> tuple[np.ndarray, list[str], np.ndarray]:
        """The entries gallery ``key`` embedded from kept data: kept ids, identities and
        vectors (what the gate compares across versions), read in parts: 100k rows as
        Python objects at once would hold several times their arrays."""
        with self.table.engine.connect() as conn:
            dim = conn.execute(sa.select(GALLERIES.c.dim)
                               .where(GALLERIES.c.key == key)).scalar_one()
            parts = list(_in_parts(conn, sa.select(ENTRIES.c.kept_id, ENTRIES.c.identity,
                                                   ENTRIES.c.vector)
                                   .where(ENTRIES.c.model_key == key,
                                          ENTRIES.c.kept_id.is_not(None))
                                   .order_by(ENTRIES.c.kept_id), dim, 10_000))
        if not parts:
            return np.zeros(0, np.int64), [], np.zeros((0, dim), np.float32)
        return (np.concatenate([p.ids for p in parts]),
                [name for p in parts for name in p.identities],
                np.concatenate([p.vectors for p in parts]))

    def galleries(self) -> list[tuple[str, dict[str, Any], float | None]]:
        """The family's galleries: key, contract and threshold."""
        t = self.table
        with t.engine.connect() as conn:
            rows = conn.execute(sa.select(GALLERIES.c.key, GALLERIES.c.contract,
                                          GALLERIES.c.threshold)
                                .where(GALLERIES.c.family == t.family)
                                .order_by(GALLERIES.c.created_at, GALLERIES.c.key)).all()
        return [(k, json.loads(c), th) for k, c, th in rows]
