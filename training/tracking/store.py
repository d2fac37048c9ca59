"""Where runs go, and how a run is opened, attached and closed.

With ``MLFLOW_TRACKING_URI`` unset the project uses its embedded store: SQLite at
``mlruns/mlflow.db`` with artifacts under ``mlruns/`` (the repository's ``mlflow.db`` is a
link to the same file, so plain ``mlflow run`` / ``mlflow ui`` find it too). Any tracking
server works by setting the variable.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Iterator

import mlflow
from filelock import FileLock
from mlflow.entities import RunStatus

from mlflow_source.store import STORE_DIR, embedded_store_uri
from zoo import names
from zoo.values import AUTO, unquote

log = logging.getLogger(__name__)


def configure_tracking() -> str:
    """Use ``MLFLOW_TRACKING_URI`` if set, else the embedded store; returns the URI."""
    # MLflow's artifact progress bars would interleave with the training bars.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        (Path.cwd() / STORE_DIR).mkdir(parents=True, exist_ok=True)
        uri = embedded_store_uri()
        mlflow.set_tracking_uri(uri)
    prepare_sqlite_store(uri)
    return uri


_PREPARED: set[str] = set()


def prepare_sqlite_store(uri: str) -> None:
    """Build a SQLite store's schema once, under a file lock, and put it in WAL mode.

    Processes that open a new store at the same moment (sweep workers) race in MLflow's
    schema migration ("table _alembic_tmp_metrics already exists", "duplicate column name:
    step"); here the first builds it while the others wait. In WAL mode readers do not block
    the writer, so workers that log and read at once do not run into "database is locked"
    (MLflow already waits up to 20 s for a busy database). Other stores are left alone.
    """
    if not uri.startswith("sqlite:///") or uri in _PREPARED:
        return
    database = Path(uri[len("sqlite:///"):])
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(database.with_name(database.name + ".lock")):
        with contextlib.closing(sqlite3.connect(database, timeout=60)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
        mlflow.MlflowClient(uri).search_experiments(max_results=1)  # creates the tables
    _PREPARED.add(uri)


def ensure_experiment(name: str) -> str:
    """The id of experiment ``name``, created with artifacts under ``mlruns/`` if new."""
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = sqlite_artifact_root(mlflow.get_tracking_uri())
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:
        # Another process created it between our lookup and create.
        return client.get_experiment_by_name(name).experiment_id


def sqlite_artifact_root(uri: str) -> str | None:
    """Artifacts beside a SQLite store: the database's own ``mlruns/`` folder (or ``mlruns/``
    next to it), whatever the working directory. None for other stores (server's choice)."""
    if not uri.startswith("sqlite:///"):
        return None
    folder = Path(uri[len("sqlite:///"):]).resolve().parent
    return (folder if folder.name == STORE_DIR.name else folder / STORE_DIR).as_uri()


@contextlib.contextmanager
def registry_lock(uri: str) -> Iterator[None]:
    """One registration at a time per store: two sweeps that finish together would otherwise
    both read the same champion, both move the alias, and the later one win, better or not.
    The lock file sits beside a SQLite store; for a tracking server it is in the temporary
    folder, so it serialises the registrations made from this machine."""
    if uri.startswith("sqlite:///"):
        database = Path(uri[len("sqlite:///"):])
        lock = database.with_name(database.name + ".registry.lock")
    else:
        digest = hashlib.sha1(uri.encode()).hexdigest()[:16]
        lock = Path(tempfile.gettempdir()) / f"zoo-registry-{digest}.lock"
    with FileLock(lock):
        yield


@contextlib.contextmanager
def training_run(
    run_name: str,
    experiment: str,
    tags: dict[str, str],
    *,
    parent_run_id: str | None = None,
    run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Open the run; on any error tag it and end it FAILED (KILLED on Ctrl-C), then re-raise.

    - ``run_id``: reopen that run (a resumed sweep, or a resumed run: a sweep's child too);
    - ``parent_run_id``: a new child run of that run, in its experiment (sweep children,
      whether trained in this process or in a worker process);
    - else, under ``mlflow run``, attach to the run it made (``MLFLOW_RUN_ID``; the experiment
      is whatever ``mlflow run`` chose); otherwise a new run in ``experiment``.
    """
    client = mlflow.MlflowClient()
    if run_id:
        run = mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None)
    elif parent_run_id:
        parent = client.get_run(parent_run_id)
        child = client.create_run(
            parent.info.experiment_id, run_name=run_name,
            tags={"mlflow.parentRunId": parent_run_id},
        )
        run = mlflow.start_run(run_id=child.info.run_id, nested=mlflow.active_run() is not None)
    elif os.environ.get("MLFLOW_RUN_ID"):
        run = mlflow.start_run()
    else:
        run = mlflow.start_run(run_name=run_name, experiment_id=ensure_experiment(experiment))
    try:
        mlflow.set_tags({"mlflow.runName": run_name, **tags})
        yield run
    except BaseException as exc:  # KeyboardInterrupt too: never leave a run RUNNING
        # an exception may say how the run ended (a pruned trial: KILLED, not FAILED)
        status = getattr(exc, "run_status", None) or (
            "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        with contextlib.suppress(Exception):
            mlflow.set_tag(names.ERROR_TAG, f"{type(exc).__name__}: {exc}"[:5000])
        mlflow.end_run(status=status)
        raise
    else:
        mlflow.end_run(status=RunStatus.to_string(RunStatus.FINISHED))




def log_params_once(params: dict[str, str], resolved_keys: tuple[str, ...] = ()) -> None:
    """Log parameters, skipping those the run already holds (``mlflow run`` logs its -P values,
    shell-quoted: ``unquote`` reads them back).

    MLflow refuses to change a logged parameter ("7" vs "7.0"), so values already present
    are left as they are. Where the run holds ``auto``, or a key of ``resolved_keys`` (the
    fields a preset set), what the value became is tagged ``zoo.resolved.<param>``; any other
    disagreement is reported, not silently overwritten.
    """
    run = mlflow.active_run()
    existing = {k: unquote(v) for k, v in
                mlflow.MlflowClient().get_run(run.info.run_id).data.params.items()}
    resolved = {}
    for key in sorted(set(params) & set(existing)):
        if _same(existing[key], params[key]):
            continue
        if existing[key].lower() == AUTO or key in resolved_keys:  # the code chose: say what
            resolved[names.resolved_tag(key)] = params[key]
        else:
            log.warning("parameter %s: run has %r, config has %r", key, existing[key], params[key])
    if resolved:
        mlflow.set_tags(resolved)
    fresh = {k: v for k, v in params.items() if k not in existing}
    if fresh:
        mlflow.log_params(fresh)


def _same(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return a.lower() == b.lower()
