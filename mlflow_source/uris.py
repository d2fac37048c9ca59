"""Which registered version and run a model URI names. A miss says what was looked for,
what exists, and how to create it.

``models:/<name>@<alias>`` and ``models:/<name>/<version>`` name a registry version;
``models:/m-<id>`` (a logged model) and ``runs:/<run_id>/<path>`` name a run's model
without a version.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mlflow_source.store import HOW_TO_CREATE

_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[\w-]+)$")
_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
_LOGGED = re.compile(r"^models:/(?P<id>m-[0-9A-Za-z]+)$")
_RUN = re.compile(r"^runs:/(?P<run_id>[0-9A-Za-z]+)/(?P<path>.+)$")


@dataclass(frozen=True)
class ModelSource:
    """A model URI resolved to its training run (and registry version, when it has one)."""

    uri: str
    run_id: str
    version: ModelVersion | None = None
    alias: str | None = None

    @property
    def load_uri(self) -> str:
        """A URI that loads this exact model, stable if the alias moves meanwhile."""
        if self.version is not None:
            return f"models:/{self.version.name}/{self.version.version}"
        return self.uri

    def describe(self) -> str:
        if self.version is None:
            return f"{self.uri} (run {self.run_id})"
        alias = f"@{self.alias} = " if self.alias else ""
        return f"{self.version.name} {alias}v{self.version.version} (run {self.run_id})"


def resolve_model(uri: str, client: mlflow.MlflowClient | None = None) -> ModelSource:
    """Resolve ``uri``; a miss raises ``LookupError`` naming the name, alias or version."""
    client = client or mlflow.MlflowClient()
    uri = uri.strip()
    store = mlflow.get_tracking_uri()
    if match := _ALIAS.match(uri):
        name, alias = match["name"], match["alias"]
        try:
            version = client.get_model_version_by_alias(name, alias)
        except MlflowException:
            raise LookupError(_miss(client, name, f"alias @{alias}", store)) from None
        return ModelSource(uri, _run_of(version, uri), version, alias)
    if match := _VERSION.match(uri):
        name, number = match["name"], match["version"]
        try:
            version = client.get_model_version(name, number)
        except MlflowException:
            raise LookupError(_miss(client, name, f"version {number}", store)) from None
        return ModelSource(uri, _run_of(version, uri), version)
    if match := _LOGGED.match(uri):
        try:
            model = client.get_logged_model(match["id"])
        except MlflowException:
            raise LookupError(f"no logged model {match['id']} in {store}") from None
        if not model.source_run_id:
            raise LookupError(f"logged model {match['id']} has no source run")
        return ModelSource(uri, model.source_run_id)
    if match := _RUN.match(uri):
        try:
            client.get_run(match["run_id"])
        except MlflowException:
            raise LookupError(f"no run {match['run_id']} in {store}") from None
        return ModelSource(uri, match["run_id"])
    raise ValueError(f"model URI {uri!r} is not models:/<name>@<alias>, models:/<name>/<version>, "
                     "models:/m-<id> or runs:/<run_id>/<path>")


def logged_model_location(uri: str, client: mlflow.MlflowClient) -> str | None:
    """Where a ``models:/m-<id>`` or ``runs:/<id>/<path>`` URI's files are stored; None for
    any other URI."""
    if match := _LOGGED.match(uri or ""):
        try:
            return client.get_logged_model(match["id"]).artifact_location
        except MlflowException:
            return uri
    if match := _RUN.match(uri or ""):
        return f"{client.get_run(match['run_id']).info.artifact_uri}/{match['path']}"
    return None


def _run_of(version: ModelVersion, uri: str) -> str:
    if not version.run_id:
        raise LookupError(f"{uri} (v{version.version}) has no source run to read its data from")
    return version.run_id


def _miss(client: mlflow.MlflowClient, name: str, what: str, store: str) -> str:
    """'no X in store' plus what does exist, and how to make it."""
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        found = sorted(m.name for m in client.search_registered_models(max_results=50))
        known = f"registered models: {', '.join(found)}" if found else "no registered models"
        return f"no registered model {name!r} in {store} ({known}); {HOW_TO_CREATE}"
    aliases = ", ".join(f"@{a}" for a in sorted(model.aliases)) or "none"
    return (f"registered model {name!r} has no {what} in {store} (aliases: {aliases}); "
            f"{HOW_TO_CREATE}")
