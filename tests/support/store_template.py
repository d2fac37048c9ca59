"""New SQLite stores for tests, copied from one initialised store instead of built each time.

MLflow creates a new store's tables by running its ~60 schema migrations, about 4 s here; the
suite makes a hundred stores, so each test process builds one empty store and copies it.
"""
from __future__ import annotations

import atexit
import contextlib
import shutil
import sqlite3
import tempfile
from pathlib import Path

_TEMPLATE: Path | None = None


def _template() -> Path:
    """This process's initialised, empty store (built on first use, removed at exit)."""
    global _TEMPLATE
    if _TEMPLATE is None:
        import mlflow

        folder = Path(tempfile.mkdtemp(prefix="zoo-store-template-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        database = folder / "mlflow.db"
        mlflow.MlflowClient(f"sqlite:///{database}").search_experiments(max_results=1)
        _TEMPLATE = database
    return _TEMPLATE


def seed_store(database: Path) -> None:
    """Put an initialised, empty store at ``database`` (unless one is there), as MLflow would
    have created it from the folder it is in: the Default experiment's artifacts under
    ``mlruns/0`` beside it."""
    if database.exists():
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_template(), database)
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                           (str(database.parent / "mlruns" / "0"),))
