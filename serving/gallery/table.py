"""The gallery's source of truth: one table row per enrolled embedding, in SQLite or PostgreSQL.

    ZOO_GALLERY_URI=                       # SQLite (WAL) in the gallery's state folder
    ZOO_GALLERY_URI=postgresql://u:p@h/db  # one gallery shared by servers on several machines

Three tables, prefixed ``zoo_gallery`` so they sit beside a tracking server's own in the same
PostgreSQL database:

- ``zoo_galleries``: one row per model version (its key), with the model's embedding contract,
  the verification threshold and a change counter that every write raises;
- ``zoo_gallery_entries``: one row per entry (identity, the L2-normalised float32 vector,
  enrolled_at, the source's sha256, the model key), whose id only grows (ids are never
  reused, so ``id > last seen`` is every entry a reader lacks);
- ``zoo_gallery_removals``: one row per removed identity (the name and the largest entry id
  removed), so a reader removes what it holds without re-reading the gallery.

Every write is one transaction that first locks its gallery's row (``BEGIN IMMEDIATE`` in
SQLite, ``SELECT ... FOR UPDATE`` in PostgreSQL): writers of one gallery go one at a time, so
ids are committed in order and a reader's watermark never skips one. A process killed in the
middle of an enrollment leaves the database as it was before that transaction.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from serving.gallery.names import search_key
from zoo.gallery import normalised

log = logging.getLogger(__name__)

DB_FILE = "gallery.db"
_KEY = sa.String(255)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: the rowid itself

METADATA = sa.MetaData()
GALLERIES = sa.Table(
    "zoo_galleries", METADATA,
    sa.Column("key", _KEY, primary_key=True),
    sa.Column("contract", sa.Text, nullable=False),  # JSON: serving.gallery_store.EmbeddingContract
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("threshold", sa.Float),
    sa.Column("far", sa.Float),
    sa.Column("changes", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)
ENTRIES = sa.Table(
    "zoo_gallery_entries", METADATA,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("model_key", _KEY, sa.ForeignKey("zoo_galleries.key"), nullable=False),
    sa.Column("identity", sa.Text, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),
    sa.Column("enrolled_at", sa.String(32)),
    sa.Column("sha256", sa.String(64)),
    # the identity as /identities?search= compares it (serving.gallery.names.search_key);
    # added to older tables when they are opened (GalleryTable._upgrade)
    sa.Column("search_key", sa.Text),
    sa.Index("zoo_gallery_entries_identity", "model_key", "identity"),
    sa.Index("zoo_gallery_entries_id", "model_key", "id"),
    sqlite_autoincrement=True,  # never reuse the id of a removed last row
)
REMOVALS = sa.Table(
    "zoo_gallery_removals", METADATA,
    sa.Column("seq", _ID, primary_key=True, autoincrement=True),
    sa.Column("model_key", _KEY, sa.ForeignKey("zoo_galleries.key"), nullable=False),
    sa.Column("identity", sa.Text, nullable=False),
    sa.Column("up_to_id", sa.BigInteger, nullable=False),
    sa.Index("zoo_gallery_removals_seq", "model_key", "seq"),
    sqlite_autoincrement=True,
)


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
class Header:
    """A gallery's own row."""

    contract: dict[str, Any]
    dim: int
    threshold: float | None
    far: float | None


def database_uri(uri: str, folder: Path) -> str:
    """``ZOO_GALLERY_URI`` as SQLAlchemy takes it; empty: SQLite in ``folder``."""
    check_uri(uri)
    if not uri:
        private_database(folder / DB_FILE)
        return f"sqlite:///{folder / DB_FILE}"
    return uri


def private_database(path: Path) -> None:
    """The gallery's folder (0700) and SQLite file (0600) readable by the server's user only:
    they hold names and face embeddings. SQLite gives its WAL and shared-memory files the
    database file's permissions. A gallery made before is tightened where this user owns it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    for item, mode in ((path.parent, 0o700), *((f, 0o600) for f in _sqlite_files(path))):
        try:
            stat = item.stat()
            if stat.st_uid == os.getuid() and stat.st_mode & 0o777 != mode:
                item.chmod(mode)
        except OSError as exc:  # a file owned by another user stays as its owner made it
            log.warning("could not make %s private: %s", item, exc)


def _sqlite_files(path: Path) -> list[Path]:
    """The database file and its WAL and shared-memory files, those that exist."""
    files = (path, *(path.with_name(f"{path.name}-{end}") for end in ("wal", "shm")))
    return [f for f in files if f.exists()]


def check_uri(uri: str) -> None:
    """Refuse a ``ZOO_GALLERY_URI`` of another kind, naming what is taken (never the password)."""
    if uri and not uri.startswith(("postgresql://", "postgresql+psycopg://", "sqlite:///")):
        raise ValueError(f"ZOO_GALLERY_URI={uri.split('@')[-1]!r}: use postgresql://user:"
                         "password@host/database, sqlite:///path/to/gallery.db, or leave it "
                         "empty for SQLite in the gallery's state folder")


def open_engine(uri: str) -> Engine:
    """An engine whose SQLite connections run in WAL mode and take the write lock up front."""
    if not uri.startswith("sqlite"):
        return sa.create_engine(uri, pool_pre_ping=True)
    engine = sa.create_engine(uri, connect_args={"timeout": 60, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi: Any, _record: Any) -> None:
        dbapi.isolation_level = None  # transactions begin as _begin says, not as pysqlite does
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=60000",
                       "foreign_keys=ON"):
            dbapi.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _upgrade(engine: Engine) -> None:
    """Bring a table written by an older model-zoo up to this one: the ``search_key`` column
    added, and filled for every entry that lacks it (idempotent; servers opening one
    database at once may both try)."""
    columns = {c["name"] for c in sa.inspect(engine).get_columns(ENTRIES.name)}
    if "search_key" not in columns:
        exists = " IF NOT EXISTS" if engine.dialect.name == "postgresql" else ""
        try:
            with engine.connect().execution_options(write=True) as conn, conn.begin():
                conn.exec_driver_sql(f"ALTER TABLE {ENTRIES.name} ADD COLUMN{exists} "
                                     "search_key TEXT")
        except sa.exc.OperationalError as exc:  # SQLite: another process added it first
            if "duplicate column" not in str(exc):
                raise
    with engine.connect() as conn:
        names = conn.execute(sa.select(ENTRIES.c.identity).distinct()
                             .where(ENTRIES.c.search_key.is_(None))).scalars().all()
    if names:
        with engine.connect().execution_options(write=True) as conn, conn.begin():
            conn.execute(ENTRIES.update().where(ENTRIES.c.identity == sa.bindparam("name"),
                                                ENTRIES.c.search_key.is_(None))
                         .values(search_key=sa.bindparam("key")),
                         [{"name": n, "key": search_key(n)} for n in names])
        log.info("gallery database: search keys filled for %d identities", len(names))


def _header(row: Any) -> Header:
    return Header(json.loads(row.contract), row.dim, row.threshold, row.far)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _as_rows(rows: Sequence[Any], dim: int) -> Rows:
    """``(id, identity, vector blob)`` rows as one ``Rows``: ids, names, a float32 matrix."""
    ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    vectors = np.frombuffer(b"".join(r[2] for r in rows), np.float32)
    return Rows(ids, [r[1] for r in rows], vectors.reshape(len(rows), dim))


def _blob(vectors: np.ndarray) -> list[bytes]:
    """Rows as float32 bytes, L2-normalised here: readers take the table's vectors as they are."""
    return [row.tobytes() for row in normalised(vectors, vectors.shape[1])]


class GalleryTable:
    """One model's gallery in a database (see the module docstring)."""

    def __init__(self, engine: Engine, key: str) -> None:
        self.engine, self.key = engine, key
        self._dim: int | None = None
        METADATA.create_all(engine)
        _upgrade(engine)

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

    def others(self) -> list[Header]:
        """The galleries of other models in this database."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(GALLERIES).where(GALLERIES.c.key != self.key)).all()
        return [_header(r) for r in rows]

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
                    key=self.key, contract=json.dumps(contract), dim=dim, threshold=threshold,
                    far=far, changes=0, created_at=_now()))
            except sa.exc.IntegrityError:  # PostgreSQL: another server created it meanwhile
                return False
            if seed is not None and len(seed):
                self._insert(conn, seed.identities, seed.vectors, seed_meta)
        return True

    def _insert(self, conn: Connection, identities: list[str], vectors: np.ndarray,
                meta: list[dict[str, Any]]) -> None:
        for start in range(0, len(identities), 10_000):
            end = start + 10_000
            conn.execute(ENTRIES.insert(), [
                {"model_key": self.key, "identity": name, "vector": blob,
                 "enrolled_at": m.get("enrolled_at"), "sha256": m.get("sha256"),
                 "search_key": search_key(name)}
                for name, blob, m in zip(identities[start:end], _blob(vectors[start:end]),
                                         meta[start:end])])

    def enroll(self, identity: str, vectors: np.ndarray, digests: list[str | None]) -> int:
        """Insert the entries of one identity in one transaction; returns its entry count."""
        when = _now()
        with self._write() as conn, conn.begin():
            if self._lock(conn) is None:
                raise LookupError(f"gallery {self.key} is not in {self.where}")
            self._insert(conn, [identity] * len(vectors), vectors,
                         [{"enrolled_at": when, "sha256": d} for d in digests])
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
        """Delete every entry of ``identity`` and record the removal; returns how many."""
        with self._write() as conn, conn.begin():
            self._lock(conn)
            mine = sa.and_(ENTRIES.c.model_key == self.key, ENTRIES.c.identity == identity)
            count, up_to = conn.execute(sa.select(sa.func.count(), sa.func.max(ENTRIES.c.id))
                                        .where(mine)).one()
            if not count:
                return 0
            conn.execute(ENTRIES.delete().where(mine))
            conn.execute(REMOVALS.insert().values(model_key=self.key, identity=identity,
                                                  up_to_id=up_to))
            self._bump(conn)
            return int(count)

    def _bump(self, conn: Connection) -> None:
        conn.execute(GALLERIES.update().where(GALLERIES.c.key == self.key)
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
            result = conn.execution_options(stream_results=True, yield_per=chunk).execute(
                sa.select(ENTRIES.c.id, ENTRIES.c.identity, ENTRIES.c.vector)
                .where(ENTRIES.c.model_key == self.key, ENTRIES.c.id > after_id)
                .order_by(ENTRIES.c.id))
            for part in result.partitions(chunk):
                yield _as_rows(part, dim)

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

    def enrollments(self, identity: str) -> list[dict[str, Any]]:
        """When each entry of ``identity`` was enrolled, and from what (sha256), in order."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ENTRIES.c.enrolled_at, ENTRIES.c.sha256)
                                .where(ENTRIES.c.model_key == self.key,
                                       ENTRIES.c.identity == identity)
                                .order_by(ENTRIES.c.id)).all()
        return [{"enrolled_at": r[0], "sha256": r[1]} for r in rows]

    def dispose(self) -> None:
        self.engine.dispose()
