"""Tags the server's commands write on a registered version: what ``serving.migrate``'s gate
measured, so that the MLflow UI shows it beside the version's own metrics."""
from __future__ import annotations

import mlflow

from mlflow_source.store import use_store
from mlflow_source.uris import resolve_model


def tag_version(model_uri: str, tags: dict[str, str]) -> str | None:
    """Set ``tags`` on the registered version ``model_uri`` names; returns what was tagged
    (None for a URI without a version, which has nowhere to put them)."""
    use_store()
    source = resolve_model(model_uri)
    if source.version is None:
        return None
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(source.version.name, source.version.version, key, value)
    return source.describe()
