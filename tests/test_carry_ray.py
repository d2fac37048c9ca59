"""Carrying on Ray (``serving/gallery/carry_ray.py``, ``serving.migrate --ray-address``) on a
local Ray instance: the kept entries cut into parts of about equal size, each carried by a
task that opens the version itself, every entry once, and the report the same as one
process's. The versions are test_gallery_lifecycle's stand-ins, which each task opens with a
picklable factory, so no MLflow store is needed."""
from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from serving.gallery.carry import carry
from serving.gallery.carry_ray import carry_on_ray, parts_of
from serving.gallery.database import DB_FILE
from serving.gallery.table import CarryTable
from serving.settings import ServeSettings
from test_gallery_lifecycle import PEOPLE, PER, WIDTH, RowVersion, people

REPO = Path(__file__).resolve().parents[1]
KEPT = PEOPLE * PER + 1  # everyone's rows, and one row no version can take


@dataclass(frozen=True)
class Opens:
    """How a task opens stand-in version ``version`` of the gallery in ``folder``."""

    folder: Path
    version: int

    def __call__(self) -> RowVersion:
        return RowVersion(self.folder, self.version)


@dataclass(frozen=True)
class Fails:
    """A version no task can open (a node without the MLflow store, say)."""

    def __call__(self) -> RowVersion:
        raise LookupError("no MLflow store at sqlite:///nowhere/mlflow.db")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A Ray instance of 2 CPUs on this machine for the module; its workers import the
    stand-ins from tests/. Skipped, with Ray's reason, where Ray cannot start."""
    ray = pytest.importorskip("ray")
    paths = [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
    with pytest.MonkeyPatch.context() as env:  # the workers inherit the raylet's environment
        env.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
        env.delenv("RAY_ADDRESS", raising=False)
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False,
                     logging_level=logging.WARNING)
        except Exception as exc:  # noqa: BLE001 - whatever stops Ray here skips the test
            pytest.skip(f"Ray cannot start here: {type(exc).__name__}: {exc}")
    yield
    ray.shutdown()


def enrolled(folder: Path) -> None:
    """Version 1's people in ``folder``: each with kept rows, one enrolled before keeping,
    and one whose kept row no version can take."""
    one = RowVersion(folder, 1)
    for name, rows in people().items():
        one.enroll(name, rows)
    one.gallery.enroll(np.ones((1, WIDTH)), "before-keeping", ["0" * 64])
    one.gallery.enroll(np.ones((1, WIDTH)), "odd", ["1" * 64], ("row", [b"[1, 2]"]))
    one.gallery.close()


def test_a_malformed_ray_address_is_an_error_that_says_so(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # connected already: the address is not used
        pytest.skip("Ray is initialised in this process already")
    enrolled(tmp_path)
    with pytest.raises(RuntimeError, match="cannot reach Ray at 'nowhere': ValueError: "
                                           "Invalid address format"):
        carry_on_ray("models:/zoo-rows/2", ServeSettings(), "nowhere",
                     model=RowVersion(tmp_path, 2), factory=Opens(tmp_path, 2))


def test_the_kept_entries_still_to_carry_are_cut_into_even_parts(tmp_path: Path) -> None:
    enrolled(tmp_path)
    two = RowVersion(tmp_path, 2)
    table = CarryTable(two.gallery.table)
    assert table.split(3) == [9, 17, KEPT]  # 9, 8 and 8 entries
    assert table.split(100) == list(range(1, KEPT + 1)) and table.split(1) == [KEPT]
    assert parts_of([9, 17, KEPT]) == [(0, 9), (9, 17), (17, None)]  # the last one open
    part = carry(two, ids=(9, 17))
    assert part.added == 8 and (part.done, part.kept) == (8, KEPT)
    assert [r.id for r in table.pending(0, 100, until_id=20)] == [*range(1, 10), 18, 19, 20]
    assert table.split(2) == [9, KEPT]  # only what is still pending: 9 and 8
    assert carry(two, ids=(0, 9)).added == 9 and carry(two).added == KEPT - 1 - 17
    assert table.split(4) == []


def test_a_carry_on_ray_carries_each_kept_entry_once_as_one_process_would(
        tmp_path: Path, local_ray: None) -> None:
    here, copy = tmp_path / "ray", tmp_path / "plain"
    enrolled(here)
    shutil.copytree(here, copy)
    two = RowVersion(here, 2)
    seen: list[tuple[int, int]] = []
    done = carry_on_ray("models:/zoo-rows/2", ServeSettings(), "local", parts=3,
                        progress=lambda d, t: seen.append((d, t)), model=two,
                        factory=Opens(here, 2))
    alone = RowVersion(copy, 2)
    plain = carry(alone)
    assert (done.added, done.done, done.kept) == (plain.added, plain.done, plain.kept) \
        == (KEPT - 1, KEPT, KEPT)
    assert done.uncarried == plain.uncarried and [w for w, _ in done.uncarried] == ["odd"]
    assert done.nothing_kept == plain.nothing_kept == ["before-keeping"]
    assert seen[-1] == (KEPT, KEPT)
    with sqlite3.connect(here / DB_FILE) as db:
        kept_ids = [k for (k,) in db.execute("SELECT kept_id FROM zoo_gallery_entries WHERE "
                                             "model_key = ?", (two.gallery.contract.key,))]
    assert len(kept_ids) == len(set(kept_ids)) == KEPT - 1 == two.gallery.table.size()
    ids, names, vectors = CarryTable(two.gallery.table).kept_entries(two.gallery.contract.key)
    same = CarryTable(alone.gallery.table).kept_entries(alone.gallery.contract.key)
    assert ids.tolist() == same[0].tolist() and names == same[1]
    np.testing.assert_allclose(vectors, same[2], atol=1e-6)  # each embedded as one process does
    again = carry_on_ray("models:/zoo-rows/2", ServeSettings(), "local", model=two,
                         factory=Opens(here, 2))
    assert (again.added, again.done) == (0, KEPT)  # done is done


def test_a_part_that_fails_is_an_error_that_says_why(tmp_path: Path, local_ray: None) -> None:
    enrolled(tmp_path)
    with pytest.raises(RuntimeError, match=r"kept ids after 0 failed: LookupError: no MLflow "
                                           r"store .*run it again to continue"):
        carry_on_ray("models:/zoo-rows/2", ServeSettings(), "local", parts=1,
                     model=RowVersion(tmp_path, 2), factory=Fails())


def test_migrate_on_ray_of_an_unknown_model_exits_1_saying_so(
        tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from serving.migrate import main

    monkeypatch.setenv("ZOO_GALLERY_DIR", str(tmp_path / "galleries"))
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["--to", "models:/no-such-model@champion", "--ray-address", "local"]) == 1
    said = capsys.readouterr().err
    assert said.startswith("error: ") and "no-such-model" in said and "Traceback" not in said


@pytest.mark.slow
def test_migrate_on_ray_carries_to_a_registered_version(
        tmp_path: Path, local_ray: None, monkeypatch: pytest.MonkeyPatch, capsys,
        request: pytest.FixtureRequest) -> None:
    """The command itself: a version opened from the MLflow store in each task (the bundle
    fetched there), the gallery's key reaching the tasks with the settings, then the gate.
    Version 2 is version 1's run registered again: another gallery, the same embeddings."""
    import hashlib
    import json

    import mlflow
    import torch

    from mlflow_source.fetch import fetch_bundle
    from serving.gallery.kept import keep_row
    from serving.inputs.rows import rows_to_array
    from serving.migrate import main
    from serving.model.served import ServedModel
    from support.serving_store import TABULAR_URI, serving_store
    from zoo.data.emitters import emitters

    threads = torch.get_num_threads()  # the ServedModel here sets 1; put back below
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    # zoo-emitters (residual_mlp, one epoch): a copy of test_serving.py's store
    store = serving_store(request.getfixturevalue("tmp_path_factory"), tmp_path / "store")
    for key in ("MLFLOW_TRACKING_URI", "ZOO_CACHE_DIR"):
        monkeypatch.setenv(key, store[key])
    monkeypatch.setenv("ZOO_GALLERY_DIR", str(tmp_path / "galleries"))
    monkeypatch.delenv("ZOO_GALLERY_KEY", raising=False)
    client = mlflow.MlflowClient(store["MLFLOW_TRACKING_URI"])
    first = client.get_model_version_by_alias("zoo-emitters", "champion")
    client.create_model_version("zoo-emitters", first.source, first.run_id, tags=first.tags)

    settings = ServeSettings.from_env()
    one = ServedModel(fetch_bundle(TABULAR_URI, settings.cache_path()), settings)
    data = emitters()
    labels = data.y.numpy()
    try:
        for who in range(6):
            listed = data.x[np.flatnonzero(labels == who)[:3]].tolist()
            one.gallery.enroll(
                one.run_batched(rows_to_array(listed, one.pre, settings))["embedding"],
                f"radar-{who}",
                [hashlib.sha256(json.dumps(r).encode()).hexdigest() for r in listed],
                ("row", [keep_row(r, one.pre) for r in listed]))
    finally:
        one.close()

    assert main(["--to", "models:/zoo-emitters/2", "--ray-address", "local"]) == 0, \
        capsys.readouterr().err[-2000:]
    said = capsys.readouterr().out
    assert "18 kept entries embedded now, 18 of 18 done" in said, said
    assert "gate against" in said and ": passed:" in said, said
    with sqlite3.connect(tmp_path / "galleries" / DB_FILE) as db:
        kept_ids = [k for (k,) in db.execute(
            "SELECT kept_id FROM zoo_gallery_entries WHERE kept_id IS NOT NULL")]
    assert sorted(kept_ids) == sorted([*range(1, 19)] * 2)  # once in each version's gallery
