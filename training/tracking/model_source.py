"""Which registered version and training run a model URI names, with errors that say what
was looked for and how to create it.

``models:/<name>@<alias>`` and ``models:/<name>/<version>`` name a registry version;
``models:/m-<id>`` (a logged model) and ``runs:/<run_id>/<path>`` name a run's model
without a version.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from training.config import TrainConfig

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: Where a logged model's ``zoo_meta`` (and its MLmodel metadata under ``zoo``) keeps the
#: training parameters it was trained with, every ``auto`` and preset resolved.
RECIPE_KEY = "recipe"

DEFAULT_MODEL_URI = "models:/zoo-digits@champion"
HOW_TO_CREATE = "train and register one with `mlflow run . -e sweep --env-manager local`"

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


def load_source(uri: str) -> tuple[ModelSource, mlflow.entities.Run, torch.nn.Module]:
    """Resolve ``uri``, fetch its training run, and load its module on the CPU in eval mode."""
    source = resolve_model(uri)
    run = mlflow.MlflowClient().get_run(source.run_id)
    model = load_pytorch_model(source.load_uri, f"the model of {source.describe()}",
                               artifact_location(source))
    return source, run, model


def model_meta(source: ModelSource, model: Any = None) -> dict[str, Any]:
    """The model's ``zoo_meta``: from the loaded module, or without loading any weights
    from its MLmodel metadata."""
    if model is not None:
        return dict(getattr(model, "zoo_meta", {}))
    info = mlflow.models.get_model_info(source.load_uri)
    return dict((info.metadata or {}).get("zoo", {}))


def training_config(source: ModelSource, run: mlflow.entities.Run,
                    model: Any = None) -> TrainConfig:
    """What the model was trained with, as the model itself records it (its recipe: data,
    split seed and fractions, open-set share, preprocessing, architecture). Models logged
    before they carried a recipe fall back to their run's parameters and resolved tags."""
    recipe = model_meta(source, model).get(RECIPE_KEY)
    if recipe:
        return TrainConfig.from_recipe(recipe)
    log.info("%s carries no training recipe (logged before models recorded one): reading "
             "its run's parameters", source.describe())
    return TrainConfig.from_run(run.data.params, run.data.tags)


class ModelFileError(RuntimeError):
    """A logged model whose files are missing or damaged; the message names where."""


def load_pytorch_model(location: str, what: str, files: str | None = None) -> torch.nn.Module:
    """``mlflow.pytorch.load_model`` on the CPU in eval mode; a missing or damaged file is a
    ``ModelFileError`` naming ``files`` (where the model's files are), not a library trace."""
    try:
        return mlflow.pytorch.load_model(location, map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001 - torch, zipfile, pickle and mlflow all raise
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0].split(". ")[0][:300]
        raise ModelFileError(f"{what} cannot be loaded: its files under {files or location} are "
                             f"missing or damaged ({reason}); train and register it again, or "
                             "point the alias at another version") from None


def artifact_location(source: ModelSource) -> str:
    """Where the model's files are stored (the logged model's artifact folder)."""
    uri = source.version.source if source.version is not None else source.uri
    client = mlflow.MlflowClient()
    if match := _LOGGED.match(uri or ""):
        try:
            return client.get_logged_model(match["id"]).artifact_location
        except MlflowException:
            return uri
    if match := _RUN.match(uri or ""):
        return f"{client.get_run(match['run_id']).info.artifact_uri}/{match['path']}"
    return uri or source.uri


def _run_of(version: ModelVersion, uri: str) -> str:
    if not version.run_id:
        raise LookupError(f"{uri} (v{version.version}) has no source run to read its data from")
    return version.run_id


def _miss(client: mlflow.MlflowClient, name: str, what: str, store: str) -> str:
    """'no X in store' plus what does exist, and how to make it."""
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models(max_results=50))
        known = f"registered models: {', '.join(names)}" if names else "no registered models"
        return f"no registered model {name!r} in {store} ({known}); {HOW_TO_CREATE}"
    aliases = ", ".join(f"@{a}" for a in sorted(model.aliases)) or "none"
    return (f"registered model {name!r} has no {what} in {store} (aliases: {aliases}); "
            f"{HOW_TO_CREATE}")
