"""Where the gallery's tables live, and what they are: SQLite (WAL) in the gallery's state
folder, or a PostgreSQL database shared by servers on several machines.

    ZOO_GALLERY_URI=                       # SQLite (WAL) in the gallery's state folder
    ZOO_GALLERY_URI=postgresql://u:p@h/db  # one gallery shared by servers on several machines

The tables are prefixed ``zoo_gallery`` so they sit beside a tracking server's own in the same
PostgreSQL database:

- ``zoo_galleries``: one row per model version (its key), with the model's embedding contract,
  its family (the registered model its versions belong to), the verification threshold and a
  change counter that every write raises;
- ``zoo_gallery_entries``: one row per entry (identity, the L2-normalised float32 vector,
  enrolled_at, the source's sha256, the model key, and the kept data it was embedded from),
  whose id only grows (ids are never reused, so ``id > last seen`` is every entry a reader
  lacks);
- ``zoo_gallery_removals``: one row per removed identity (the name and the largest entry id
  removed), so a reader removes what it holds without re-reading the gallery;
- ``zoo_gallery_kept``: what each enrollment keeps for the family's later versions (a face's
  canonical chip, a bounded image or the row as sent), encrypted (``serving/gallery/kept.py``);
- ``zoo_gallery_keys``: which key encrypted a family's kept data (a digest, never the key);
- ``zoo_gallery_uncarried``: the kept entries a version could not embed, and why.

A table written by an older model-zoo gains the newer columns when it is opened
(:func:`upgrade`).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from serving.gallery.names import search_key

log = logging.getLogger(__name__)

DB_FILE = "gallery.db"
_KEY = sa.String(255)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: the rowid itself

METADATA = sa.MetaData()
GALLERIES = sa.Table(
    "zoo_galleries", METADATA,
    sa.Column("key", _KEY, primary_key=True),
    sa.Column("contract", sa.Text, nullable=False),  # JSON: serving.gallery.store.EmbeddingContract
    # the registered model whose versions share the kept data (added by upgrade())
    sa.Column("family", _KEY),
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
    # the identity as /identities?search= compares it (serving.gallery.names.search_key)
    sa.Column("search_key", sa.Text),
    # the kept data (KEPT) this entry was embedded from; none for a seed, or where nothing
    # was kept
    sa.Column("kept_id", sa.BigInteger),
    sa.Index("zoo_gallery_entries_identity", "model_key", "identity"),
    sa.Index("zoo_gallery_entries_id", "model_key", "id"),
    sa.Index("zoo_gallery_entries_kept", "model_key", "kept_id"),
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
KEPT = sa.Table(
    "zoo_gallery_kept", METADATA,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("family", _KEY, nullable=False),
    sa.Column("identity", sa.Text, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # chip, image or row (kept.py)
    sa.Column("payload", sa.LargeBinary, nullable=False),  # AES-GCM: nonce + ciphertext
    sa.Column("enrolled_at", sa.String(32)),
    sa.Column("sha256", sa.String(64)),
    sa.Index("zoo_gallery_kept_identity", "family", "identity"),
    # a carrier's next batch is a range of ids: without it each batch sorts every kept row
    # above the watermark (bench/gallery_migration.py: 139 ms a batch at 100k entries)
    sa.Index("zoo_gallery_kept_family_id", "family", "id"),
    sqlite_autoincrement=True,
)
KEYS = sa.Table(
    "zoo_gallery_keys", METADATA,
    sa.Column("family", _KEY, primary_key=True),
    sa.Column("key_check", sa.String(64), nullable=False),  # HMAC-SHA256 of a constant
)
UNCARRIED = sa.Table(
    "zoo_gallery_uncarried", METADATA,
    sa.Column("model_key", _KEY, primary_key=True),
    sa.Column("kept_id", sa.BigInteger, primary_key=True),
    sa.Column("identity", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)
#: columns added since a table's first release: (table, column, SQL type), for upgrade()
ADDED_COLUMNS = ((ENTRIES, "search_key", "TEXT"), (ENTRIES, "kept_id", "BIGINT"),
                 (GALLERIES, "family", "VARCHAR(255)"))


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
        # secure_delete: a deleted row's bytes are overwritten in the file, not left in
        # free pages (what a person leaves behind when deleted must be gone for real)
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=60000",
                       "foreign_keys=ON", "secure_delete=ON"):
            dbapi.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def upgrade(engine: Engine) -> None:
    """Bring tables written by an older model-zoo up to this one: every table made, the
    columns added since (``ADDED_COLUMNS``) added, entries' search keys and galleries'
    families filled where they lack them. Idempotent: servers opening one database at once
    may both try."""
    METADATA.create_all(engine)
    inspector = sa.inspect(engine)
    present = {t.name: {c["name"] for c in inspector.get_columns(t.name)}
               for t in {table for table, _, _ in ADDED_COLUMNS}}
    exists = " IF NOT EXISTS" if engine.dialect.name == "postgresql" else ""
    for table, column, kind in ADDED_COLUMNS:
        if column in present[table.name]:
            continue
        try:
            with engine.connect().execution_options(write=True) as conn, conn.begin():
                conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN{exists} "
                                     f"{column} {kind}")
        except sa.exc.OperationalError as exc:  # SQLite: another process added it first
            if "duplicate column" not in str(exc):
                raise
    _fill_search_keys(engine)
    _fill_families(engine)
    if "kept_id" not in present[ENTRIES.name]:  # the index of a column added above
        with engine.connect().execution_options(write=True) as conn, conn.begin():
            conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS zoo_gallery_entries_kept "
                                 f"ON {ENTRIES.name} (model_key, kept_id)")
    indexes = {i["name"] for i in inspector.get_indexes(KEPT.name)}
    if "zoo_gallery_kept_family_id" not in indexes:  # added after its table
        with engine.connect().execution_options(write=True) as conn, conn.begin():
            conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS zoo_gallery_kept_family_id "
                                 f"ON {KEPT.name} (family, id)")


def _fill_search_keys(engine: Engine) -> None:
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


def _fill_families(engine: Engine) -> None:
    """A gallery's family is its contract's model name."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(GALLERIES.c.key, GALLERIES.c.contract)
                            .where(GALLERIES.c.family.is_(None))).all()
    if rows:
        with engine.connect().execution_options(write=True) as conn, conn.begin():
            for key, contract in rows:
                conn.execute(GALLERIES.update().where(GALLERIES.c.key == key)
                             .values(family=json.loads(contract).get("name")))
