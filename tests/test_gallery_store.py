"""The served gallery: a table in SQLite (or PostgreSQL) and each worker's faiss index of it.

With ``ZOO_TEST_POSTGRES_URI`` set (``postgresql://user:password@host:port/database``) the
store tests run against that PostgreSQL database too, under keys of their own.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from serving.gallery.store import EmbeddingContract, GalleryStore
from serving.gallery.database import DB_FILE
from serving.settings import ServeSettings
from zoo.gallery import Gallery

POSTGRES = os.environ.get("ZOO_TEST_POSTGRES_URI", "")
CONTRACT = EmbeddingContract("zoo-x", "1", "run-a", "ab" * 32, 4, "cd" * 32)


def _uri(kind: str) -> str:
    if kind == "postgres" and not POSTGRES:
        pytest.skip("set ZOO_TEST_POSTGRES_URI to run the gallery against PostgreSQL")
    return POSTGRES if kind == "postgres" else ""


def _contract(kind: str, dim: int = 4) -> EmbeddingContract:
    """A contract of its own per test on a shared database (its key includes the run)."""
    run = f"run-{uuid.uuid4().hex[:8]}" if kind == "postgres" else "run-a"
    return dataclasses.replace(CONTRACT, run_id=run, dim=dim)


def _clustered(identities: int, per: int, dim: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """``per`` noisy entries around each of ``identities`` random unit centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((identities, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((identities, per, dim)).astype(np.float32) * (0.3 / dim ** 0.5)
    vectors = (centres[:, None, :] + noise).reshape(-1, dim)
    return vectors, [f"id{i:05d}" for i in range(identities) for _ in range(per)]


def test_gallery_store_sees_other_writers_and_keeps_the_seed(tmp_path: Path) -> None:
    seed = Gallery(4, threshold=0.5, far=1e-3)
    seed.add(np.eye(4, dtype=np.float32), ["a", "b", "c", "d"])
    seed.save(tmp_path / "seed")
    one = GalleryStore(tmp_path / "state", tmp_path / "seed", CONTRACT)
    two = GalleryStore(tmp_path / "state", tmp_path / "seed", CONTRACT)  # another worker
    assert len(one) == 4 and one.threshold == 0.5 and one.far == 1e-3
    assert (tmp_path / "state" / DB_FILE).is_file()
    assert one.enroll(np.array([[1, 1, 0, 0]], np.float32), "ab") == 1
    assert two.search(np.array([[1, 1, 0, 0]], np.float32), 2)[0][0].label == "ab"
    assert len(Gallery.load(tmp_path / "seed")) == 4  # the model's own gallery is untouched
    nearest = one.search(np.array([[1, 0, 0, 0]], np.float32), 3)[0]
    assert [m.label for m in nearest[:2]] == ["a", "ab"] and len({m.label for m in nearest}) == 3
    # the same name and version from another store's run: a gallery of its own beside it
    other = GalleryStore(tmp_path / "state", None, dataclasses.replace(CONTRACT, run_id="run-b"))
    assert len(other) == 0 and len(one) == 5
    # the same gallery key for other embeddings: refused, naming the owner
    with pytest.raises(ValueError, match=r"belongs to zoo-x v1 \(run run-a, .*not to zoo-x v1 "):
        GalleryStore(tmp_path / "state", None, dataclasses.replace(CONTRACT, dim=8))
    with pytest.raises(ValueError, match="belongs to zoo-x v1"):  # other preprocessing
        GalleryStore(tmp_path / "state", None,
                     dataclasses.replace(CONTRACT, preprocessing_sha256="ef" * 32))
    legacy = Gallery(4)
    legacy.save(tmp_path / "old")
    with pytest.raises(ValueError, match="does not say which model"):
        GalleryStore(tmp_path / "old", None, CONTRACT)


def test_the_gallery_is_private_to_the_servers_user(tmp_path: Path) -> None:
    """Names and face embeddings: the folder 0700, the database and its WAL and shared-memory
    files 0600, whatever the umask; a gallery made world-readable before is tightened."""
    old_umask = os.umask(0o022)
    try:
        store = GalleryStore(tmp_path / "state", None, CONTRACT)
        store.enroll(np.eye(4, dtype=np.float32)[:1], "Alice Smith")
        files = [tmp_path / "state" / f"{DB_FILE}{end}" for end in ("", "-wal", "-shm")]
        assert all(f.exists() for f in files)
        assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
        assert [f.stat().st_mode & 0o777 for f in files] == [0o600] * 3
        for item in (tmp_path / "state", *files):  # as an older zoo left them
            item.chmod(0o755 if item.is_dir() else 0o644)
        again = GalleryStore(tmp_path / "state", None, CONTRACT)
        assert len(again) == 1 and (tmp_path / "state").stat().st_mode & 0o777 == 0o700
        assert [f.stat().st_mode & 0o777 for f in files] == [0o600] * 3
    finally:
        os.umask(old_umask)


def test_an_older_gallery_folder_is_imported_once(tmp_path: Path) -> None:
    """A state folder of gallery.npy + gallery.json (model-zoo before the database) becomes
    the table's first rows, enrollment times and digests kept."""
    old = Gallery(4, threshold=0.25, far=1e-3)
    old.add(np.eye(4, dtype=np.float32)[:2], ["a", "b"],
            [{"enrolled_at": "2026-01-02T03:04:05+00:00", "sha256": "f" * 64}, {}])
    old.model = dataclasses.asdict(CONTRACT)
    old.save(tmp_path / "state")
    store = GalleryStore(tmp_path / "state", None, CONTRACT)
    assert len(store) == 2 and store.threshold == 0.25
    assert store.enrollments("a") == [{"enrolled_at": "2026-01-02T03:04:05+00:00",
                                       "sha256": "f" * 64}]
    store.enroll(np.eye(4, dtype=np.float32)[2:3], "c")
    assert len(GalleryStore(tmp_path / "state", None, CONTRACT)) == 3  # not imported twice


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_workers_apply_each_others_rows_and_removals_incrementally(kind: str,
                                                                   tmp_path: Path) -> None:
    contract = _contract(kind, dim=16)
    vectors, names = _clustered(30, 4, 16)
    one = GalleryStore(tmp_path / "g", None, contract, _uri(kind))
    one.table.enroll_many(names, vectors)
    two = GalleryStore(tmp_path / "g", None, contract, _uri(kind))
    built = two.index.info
    assert len(two) == 120 and built.built_entries == 120 and two.index.identities == 30

    assert one.enroll(vectors[:2] * 2, "new", ["1" * 64, "2" * 64]) == 2
    found = two.search(vectors[:1], 3)[0]
    assert found[0].label in {"id00000", "new"} and {"id00000", "new"} <= {m.label for m in found}
    assert two.index.info is built and len(two.index) == 122  # rows applied, nothing rebuilt

    assert one.remove("id00000") == 4 and one.remove("id00000") == 0
    assert "id00000" not in {m.label for m in two.search(vectors[:1], 5)[0]}
    assert len(two) == 118 and two.index.entries_of("id00000") == 0
    # the removed rows held the largest ids too: a new row never takes one of their ids
    assert one.remove("new") == 2
    one.enroll(vectors[:1], "later")
    assert two.search(vectors[:1], 1)[0][0].label == "later"
    counts = two.counts()
    assert counts["later"] == 1 and "new" not in counts and sum(counts.values()) == len(two)
    # /identities?search=: names holding the text, any case; % and _ are no wildcards
    one.enroll(vectors[:1], "Ana 50%_x")
    assert two.counts(search="ana 50%") == {"Ana 50%_x": 1} == two.counts(search="%_")
    one.enroll(vectors[:1], "ÉMILE Zola")  # any case in every script, not ASCII's alone
    assert two.counts(search="émile") == {"ÉMILE Zola": 1} == two.counts(search="Émile ZOLA")
    one.remove("ÉMILE Zola")
    assert two.count_identities("ID0000") == 9 and two.refresh().count_identities("") == 31
    assert two.counts(0, 2, "id0000") == {"id00001": 4, "id00002": 4}
    assert two.describe()["database"] == ("postgresql" if kind == "postgres" else "sqlite")
    for store in (one, two):
        store.close()


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_an_approximate_index_is_tuned_to_its_recall_and_removes(index: str,
                                                                  tmp_path: Path) -> None:
    contract = _contract("sqlite", dim=32)
    vectors, names = _clustered(600, 10, 32)
    GalleryStore(tmp_path / "g", None, contract).table.enroll_many(names, vectors)
    store = GalleryStore(tmp_path / "g", None, contract, index=index)
    info = store.describe()["index"]
    assert info["kind"] == index and info["built_entries"] == 6000
    assert info["recall_at_5"] >= 0.99, info
    assert set(info["params"]) >= ({"nlist", "nprobe"} if index == "ivf" else {"M", "efSearch"})
    rng = np.random.default_rng(1)
    picks = rng.choice(len(vectors), 100, replace=False)
    queries = vectors[picks] + rng.standard_normal((100, 32)).astype(np.float32) * 0.03
    right = [store.search(q[None], 1)[0][0].label == names[i] for q, i in zip(queries, picks)]
    assert np.mean(right) >= 0.97
    assert store.remove(names[picks[0]]) == 10
    assert names[picks[0]] not in {m.label for m in store.search(queries[:1], 5)[0]}
    assert len(store) == 5990


def test_settings_name_a_bad_gallery_index_or_database() -> None:
    with pytest.raises(ValueError, match="ZOO_GALLERY_INDEX='annoy': choose one of auto, flat"):
        ServeSettings.from_env({"ZOO_GALLERY_INDEX": "annoy"})
    with pytest.raises(ValueError, match="ZOO_GALLERY_URI='db.example/x': use postgresql://"):
        ServeSettings.from_env({"ZOO_GALLERY_URI": "mysql://root:secret@db.example/x"})
    assert ServeSettings.from_env({"ZOO_GALLERY_INDEX": "hnsw"}).gallery_index == "hnsw"


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from pathlib import Path
    from serving.gallery.store import EmbeddingContract, GalleryStore

    contract = EmbeddingContract("zoo-x", "1", "run-a", "ab" * 32, 4, "cd" * 32)
    store = GalleryStore(Path(sys.argv[1]), None, contract)
    rng = np.random.default_rng(0)
    for i in range(100000):
        store.enroll(rng.standard_normal((3, 4)), f"person{i}")
        print(i, flush=True)  # acknowledged: committed
""")


def test_a_process_killed_while_enrolling_loses_nothing_committed(tmp_path: Path) -> None:
    """kill -9 in the middle of enrollments: every acknowledged identity is there with all
    three of its entries, no identity has part of them, and the database is intact."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "g")],
                            stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    acked = -1
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    while acked < 40 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acked = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert acked >= 40, "the writer did not get going"
    with sqlite3.connect(tmp_path / "g" / DB_FILE) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        counts = dict(db.execute("SELECT identity, count(*) FROM zoo_gallery_entries "
                                 "GROUP BY identity"))
    assert all(counts.get(f"person{i}") == 3 for i in range(acked + 1))
    assert set(counts.values()) == {3}
    store = GalleryStore(tmp_path / "g", None, CONTRACT)
    assert len(store) == 3 * len(counts) and store.enroll(np.ones((1, 4)), "after") == 1


def test_auto_switches_to_an_approximate_index_as_the_gallery_grows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import serving.gallery.index as gallery_index

    monkeypatch.setattr(gallery_index, "FLAT_MAX", 100)
    contract = _contract("sqlite", dim=16)
    vectors, names = _clustered(40, 5, 16)
    store = GalleryStore(tmp_path / "g", None, contract)
    store.table.enroll_many(names[:150], vectors[:150])
    assert len(store) == 150 and store.index.info.kind == "flat"  # built when it was empty
    store.enroll(vectors[150:], "more")  # 200 entries: twice FLAT_MAX
    info = store.describe()["index"]
    assert info["kind"] == "ivf" and info["built_entries"] == 200 and info["recall_at_5"] > 0
    assert store.search(vectors[:1], 1)[0][0].label == names[0]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_table_of_an_older_model_zoo_gains_its_search_keys(kind: str, tmp_path: Path) -> None:
    """A gallery written before names had search keys is brought up to date when opened:
    the column added, every entry's key filled, and search folds case as for new ones."""
    contract = _contract(kind)
    with _own_database(_uri(kind)) as uri:  # the shared one's table is other tests' too
        _upgrade_older_table(contract, uri, tmp_path)


def _upgrade_older_table(contract: EmbeddingContract, uri: str, tmp_path: Path) -> None:
    import sqlalchemy as sa

    store = GalleryStore(tmp_path / "g", None, contract, uri)
    store.enroll(np.eye(4, dtype=np.float32)[:1], "ÉMILE")
    with store.table.engine.connect() as conn, conn.begin():
        conn.exec_driver_sql("ALTER TABLE zoo_gallery_entries DROP COLUMN search_key")
    store.close()
    again = GalleryStore(tmp_path / "g", None, contract, uri)
    assert again.counts(search="émile") == {"ÉMILE": 1}
    with again.table.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM zoo_gallery_entries "
                                    "WHERE search_key IS NULL")).scalar_one() == 0
    again.close()


@contextlib.contextmanager
def _own_database(uri: str) -> Iterator[str]:
    """A PostgreSQL database of this test's own beside ``uri``'s (dropped after), or ``uri``
    itself for SQLite (empty: the gallery's own file)."""
    if not uri:
        yield uri
        return
    import sqlalchemy as sa

    name = f"zoo_upgrade_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(uri, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield sa.engine.make_url(uri).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        admin.dispose()
