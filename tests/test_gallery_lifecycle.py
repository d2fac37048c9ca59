"""The gallery outlives a model: what enrollments keep is sealed and erased for real, a new
version's gallery is filled from it (resumable, never bringing a deleted person back), and
the gate judges the new version on the enrolled people. Versions here are small stand-ins
(a fixed projection of rows per version), so each property is tested fast and exactly; the
served models are tested end to end in test_serving.py."""
from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from serving.gallery.carry import carry, gate
from serving.gallery.database import DB_FILE
from serving.gallery.kept import KEY_FILE, Sealer, keep_row
from serving.gallery.store import EmbeddingContract, GalleryStore
from serving.gallery.table import CarryTable, KeptRow
from serving.settings import ServeSettings
from zoo.data import Preprocessing
from zoo.gallery import Gallery

REPO = Path(__file__).resolve().parents[1]
PEOPLE, PER, WIDTH = 8, 3, 4
PRE = Preprocessing("tabular", (WIDTH,), [0.0] * WIDTH, [1.0] * WIDTH, ["a"],
                    ["w", "x", "y", "z"])


class RowVersion:
    """What ``carry`` and ``gate`` ask of a served version: its gallery (with the family's
    sealer) and a model, here rows times a fixed matrix of the version's own."""

    def __init__(self, folder: Path, version: int, matrix: np.ndarray | None = None,
                 keep: bool = True, delay: float = 0.0, settings: ServeSettings | None = None
                 ) -> None:
        self.pre, self.faces, self.embedding_dim, self.delay = PRE, None, WIDTH, delay
        self.settings = settings or ServeSettings(max_batch_size=5)
        self.sealer = Sealer.load(self.settings, folder) if keep else None
        rng = np.random.default_rng(version)
        self.matrix = (matrix if matrix is not None
                       else np.linalg.qr(rng.standard_normal((WIDTH, WIDTH)))[0])
        contract = EmbeddingContract("zoo-rows", str(version), f"run-{version}", "ab" * 32,
                                     WIDTH, "cd" * 32)
        seed = folder.parent / f"{folder.name}-seed-{version}"  # an export's: a threshold
        Gallery(WIDTH, threshold=0.5, far=1e-3).save(seed)
        self.gallery = GalleryStore(folder, seed, contract, sealer=self.sealer)

    def run_batched(self, x: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(self.delay)
        return {"embedding": x @ self.matrix}

    def enroll(self, name: str, rows: np.ndarray) -> int:
        kept = ("row", [keep_row(r.tolist(), PRE) for r in rows])
        return self.gallery.enroll(self.run_batched(rows)["embedding"], name, None, kept)


def people(seed: int = 0) -> dict[str, np.ndarray]:
    """``PEOPLE`` identities of ``PER`` rows each, near their own random centre."""
    rng = np.random.default_rng(seed)
    return {f"p{i}": rng.standard_normal(WIDTH) + 0.05 * rng.standard_normal((PER, WIDTH))
            for i in range(PEOPLE)}


def test_a_new_version_carries_every_kept_entry_once_and_says_what_it_cannot(
        tmp_path: Path) -> None:
    one = RowVersion(tmp_path, 1)
    for name, rows in people().items():
        one.enroll(name, rows)
    one.gallery.enroll(np.ones((1, WIDTH)), "before-keeping", ["0" * 64])  # nothing kept
    one.gallery.enroll(np.ones((1, WIDTH)), "odd", ["1" * 64], ("row", [b"[1, 2]"]))
    two = RowVersion(tmp_path, 2)
    done = carry(two)
    assert (done.added, done.done, done.kept) == (PEOPLE * PER, PEOPLE * PER + 1,
                                                 PEOPLE * PER + 1)
    assert [who for who, _ in done.uncarried] == ["odd"]
    assert "has 2 values; the model takes 4" in done.uncarried[0][1]
    assert done.nothing_kept == ["before-keeping"]
    for name, rows in people().items():  # each person found by the new version's embedding
        found = two.gallery.search(two.run_batched(rows[:1])["embedding"], 1)[0][0]
        assert found.label == name and found.similarity > 0.999
    assert carry(two).added == 0  # done is done: a second run adds nothing
    first = KeptRow(1, "p0", "row", b"", None, None)  # a carrier that read it before the run
    assert CarryTable(two.gallery.table).add([first], np.ones((1, WIDTH)), []) == 0
    assert two.gallery.describe()["kept"] == {"keeping": True, "entries": PEOPLE * PER + 1}
    verdict, source = gate(two)
    assert source == one.gallery.contract.key and verdict.passed and verdict.judged
    assert verdict.new.identities == PEOPLE and verdict.new.top1 == 1.0 == verdict.old.top1


def test_a_version_worse_on_the_enrolled_people_fails_the_gate(tmp_path: Path) -> None:
    one = RowVersion(tmp_path, 1)
    for name, rows in people().items():
        one.enroll(name, rows)
    blurred = np.zeros((WIDTH, WIDTH))
    blurred[0, 0] = 1.0  # everyone on one line: neighbours are anyone
    worse = RowVersion(tmp_path, 3, blurred)
    carry(worse)
    verdict, _ = gate(worse)
    assert not verdict.passed and verdict.judged and "worse" in verdict.reason
    assert verdict.new.top1 < verdict.old.top1 - 0.005
    few = RowVersion(tmp_path / "few", 1)  # fewer than 5 people: the registry decides
    for name, rows in list(people().items())[:3]:
        few.enroll(name, rows)
    verdict, _ = gate(few)
    assert verdict.passed and not verdict.judged and "registry" in verdict.reason
    # nobody enrolled: nothing measured, and the figures stay valid JSON (null, not NaN)
    verdict, _ = gate(RowVersion(tmp_path / "nobody", 1))
    assert verdict.passed and not verdict.judged
    assert json.loads(json.dumps(verdict.to_dict(), allow_nan=False))["new"]["top1"] is None


def test_who_is_deleted_or_enrolled_while_carrying_reaches_both_galleries(
        tmp_path: Path) -> None:
    one = RowVersion(tmp_path, 1)
    crowd = people()
    for name, rows in crowd.items():
        one.enroll(name, rows)
    two = RowVersion(tmp_path, 2)
    late = np.random.default_rng(9).standard_normal((2, WIDTH))
    batches = []

    def meanwhile(done: int, total: int) -> None:
        batches.append(done)
        if len(batches) == 1:  # after the first batch: p0 (carried already) and p7 (not yet)
            assert one.gallery.remove("p0") == PER and one.gallery.remove("p7") == PER
            one.enroll("late", late)

    done = carry(two, progress=meanwhile)
    assert len(batches) > 2
    counts = two.gallery.counts()
    assert "p0" not in counts and "p7" not in counts and counts["late"] == 2
    assert set(counts) == set(one.gallery.counts()) and done.kept == (PEOPLE - 2) * PER + 2
    assert one.gallery.enrollments("p0") == []


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_gallery_lifecycle import RowVersion
    from serving.gallery.carry import carry

    carry(RowVersion(Path(sys.argv[1]), 2, delay=0.3),
          progress=lambda done, total: print(done, flush=True))
""")


def test_a_carry_killed_mid_way_resumes_where_the_gallery_stands(tmp_path: Path) -> None:
    """kill -9 after some batches: the next run adds exactly what is missing, each kept
    entry once."""
    one = RowVersion(tmp_path, 1)
    for name, rows in people().items():
        one.enroll(name, rows)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path),
                             str(REPO / "tests")], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    seen = int(proc.stdout.readline() or 0)
    seen = int(proc.stdout.readline() or seen)  # two batches committed
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert 0 < seen < PEOPLE * PER
    two = RowVersion(tmp_path, 2)
    done = carry(two)
    assert done.added == PEOPLE * PER - seen and done.done == PEOPLE * PER
    with sqlite3.connect(tmp_path / DB_FILE) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        kept_ids = [k for (k,) in db.execute("SELECT kept_id FROM zoo_gallery_entries "
                                             "WHERE model_key = ?", (two.gallery.contract.key,))]
    assert len(kept_ids) == len(set(kept_ids)) == PEOPLE * PER


def test_what_is_kept_is_sealed_bound_to_its_person_and_erased_for_real(
        tmp_path: Path) -> None:
    one = RowVersion(tmp_path, 1)
    key = tmp_path / KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600
    one.enroll("Ada", people()["p0"])
    with sqlite3.connect(tmp_path / DB_FILE) as db:
        payloads = [p for (p,) in db.execute("SELECT payload FROM zoo_gallery_kept")]
    plain = keep_row(people()["p0"][0].tolist(), PRE)
    assert len(payloads) == PER and all(plain not in p for p in payloads)
    assert one.sealer.open("zoo-rows", "Ada", "row", payloads[0]) == plain
    with pytest.raises(ValueError, match="cannot be opened with this key, or was altered"):
        one.sealer.open("zoo-rows", "Eve", "row", payloads[0])  # moved to another person
    # another key: the gallery refuses to start rather than keep what it cannot read
    other = base64.urlsafe_b64encode(os.urandom(32)).decode()
    with pytest.raises(ValueError, match="sealed with another key"):
        RowVersion(tmp_path, 1, settings=ServeSettings(gallery_key=other))
    with pytest.raises(ValueError, match="ZOO_GALLERY_KEY is not a gallery key"):
        RowVersion(tmp_path / "bad", 1, settings=ServeSettings(gallery_key="short"))
    files = [tmp_path / f"{DB_FILE}{end}" for end in ("", "-wal")]
    assert any(payloads[0] in f.read_bytes() for f in files)
    assert one.gallery.remove("Ada") == PER
    for f in files:  # gone from the database file and from its log, not only unlinked
        data = f.read_bytes() if f.exists() else b""
        assert not any(p in data for p in payloads), f


def test_a_version_s_gallery_of_an_older_model_zoo_is_carried_into_the_shared_one(
        tmp_path: Path) -> None:
    """An older model-zoo kept each version's gallery in a folder of its own; opened from the
    family's folder, that version starts with what it held (kept data had none)."""
    contract = EmbeddingContract("zoo-rows", "1", "run-1", "ab" * 32, WIDTH, "cd" * 32)
    old = GalleryStore(tmp_path / "zoo-rows-v1-run-1", None, contract)
    old.enroll(np.eye(WIDTH)[:2], "Ada", ["a" * 64, "b" * 64])
    old.close()
    shared = GalleryStore(tmp_path / "zoo-rows", None, contract,
                          legacy=tmp_path / "zoo-rows-v1-run-1")
    assert shared.counts() == {"Ada": 2}
    assert [e["sha256"] for e in shared.enrollments("Ada")] == ["a" * 64, "b" * 64]


def test_the_gate_asks_a_sample_beyond_its_limit_the_same_for_both_versions(monkeypatch) -> None:
    """Leave-one-out over every entry is N x N; past MAX_QUERIES the same seeded entries
    are asked of both versions, so equal versions still score equal."""
    from serving.gallery import gate as gating

    monkeypatch.setattr(gating, "MAX_QUERIES", 40)
    rng = np.random.default_rng(3)
    names = [f"p{i // 4}" for i in range(200)]
    vectors = rng.standard_normal((200, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(200)
    verdict = gating.compare((ids, names, vectors, 0.5), (ids, names, vectors.copy(), 0.5))
    assert verdict.old.queries == verdict.new.queries == 40
    assert verdict.old == verdict.new and verdict.passed
