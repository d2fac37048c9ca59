"""Shared fixtures: a temporary MLflow store per test, the ORL faces path, the repo root."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import mlflow
import pytest

from support.faces import ORL_FACES
from support.store_template import seed_store

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Give each pytest-xdist worker (pyproject.toml), and every process it starts, an equal
    share of the cores for torch's threads, unless OMP_NUM_THREADS is set already.

    Set here, in the controller before the workers start, because workers inherit its
    environment. Oversubscribed (two workers of two threads each on two cores) the same suite
    took 18 minutes instead of 12.
    """
    workers = getattr(config.option, "numprocesses", None)
    workers = workers if isinstance(workers, int) and workers > 0 else 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // workers)))


#: Test files by the time they take, slowest first (docs/testing.md). xdist hands whole files
#: to the workers in collection order, so the longest start first and the short ones fill the
#: gaps; in alphabetical order the serving tests (a third of the total) started halfway.
SLOWEST_FIRST = ("test_serving.py", "test_export.py", "test_docs_run.py", "test_checkpoint.py",
                 "test_tracking_server.py", "test_face_serving.py", "test_transfer.py",
                 "test_presets.py", "test_train.py", "test_bento.py", "test_big_folder.py",
                 "test_registration.py", "test_tables.py", "test_distributed.py",
                 "test_distill_evaluate.py", "test_dlib_resnet.py", "test_store.py",
                 "test_models.py", "test_recommend.py", "test_sweep.py", "test_registry.py",
                 "test_faces.py", "test_input_pipeline.py", "test_carry_ray.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slowest files first; a stable sort, so the order within a file stays as written."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@contextlib.contextmanager
def temporary_store(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh SQLite store in ``folder``, set for this process and its children."""
    seed_store(folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(folder)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    # mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID for subprocesses: do not leak it.
    import mlflow.tracking.fluent as fluent

    fluent._active_experiment_id = None
    for var in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        os.environ.pop(var, None)


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh SQLite store under tmp_path for one test."""
    with temporary_store(tmp_path, monkeypatch) as uri:
        yield uri


@pytest.fixture(scope="module")
def module_tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One store shared by the tests of a module (for expensive shared set-ups)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        with temporary_store(tmp_path_factory.mktemp("store"), monkeypatch) as uri:
            yield uri


@pytest.fixture
def orl_faces() -> Path:
    """The ORL face set beside the checkout; the test is skipped when it is absent."""
    if not ORL_FACES.is_dir():
        pytest.skip(f"ORL faces not found at {ORL_FACES}")
    return ORL_FACES
