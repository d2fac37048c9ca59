"""Where the MLflow store is: ``MLFLOW_TRACKING_URI``, or the project's embedded SQLite store
under ``mlruns/`` of the working directory."""
from __future__ import annotations

import os
from pathlib import Path

import mlflow

HOW_TO_CREATE = "train and register one with `mlflow run . -e sweep --env-manager local`"
#: The embedded store's folder: ``sqlite:///<cwd>/mlruns/mlflow.db``, artifacts beside it.
STORE_DIR = Path("mlruns")


def embedded_store_uri(root: Path | None = None) -> str:
    """``sqlite:///<root>/mlruns/mlflow.db`` (absolute, so any working directory agrees)."""
    store = ((root or Path.cwd()) / STORE_DIR).resolve()
    return f"sqlite:///{store / 'mlflow.db'}"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the embedded store of the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or embedded_store_uri()


def use_store() -> str:
    """Point MLflow at the store the server reads (``tracking_uri``); returns its URI. A
    SQLite store that does not exist is a ``LookupError`` (MLflow would create an empty one)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise LookupError(f"no MLflow store at {uri} (set MLFLOW_TRACKING_URI, or run from the "
                          f"folder whose mlruns/ holds it); {HOW_TO_CREATE}")
    mlflow.set_tracking_uri(uri)
    return uri
