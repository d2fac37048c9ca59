"""The server's one MLflow-facing module: which registered version a model URI names, and
its bundle fetched from the store.

``models:/<name>@<alias>`` and ``models:/<name>/<version>`` name a registry version;
``models:/m-<id>`` (a logged model) and ``runs:/<run_id>/<path>`` name a run's model
without a version. A miss says what was looked for, what exists, and how to create it.

It imports MLflow and ``zoo`` only, never the training code, so ``bentoml serve`` from a
store and a built Bento (which does not import this module at all: its model is packed)
run with the server's code alone. Training resolves URIs through the same functions, so
the trainer and the server never disagree on what a URI names.

Fetching is atomic: files are downloaded into a temporary folder that is renamed into place
last, so an interrupted download is never mistaken for a bundle.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from serving.bundle import GALLERY_DIR, MANIFEST, ONNX_FILE, WEIGHTS_DIR, Bundle, BundleInfo
from zoo import names
from zoo.models.rebuild import RECIPE_FILE, WEIGHTS_FILE
from zoo.record import ModelRecord

log = logging.getLogger(__name__)

HOW_TO_CREATE = "train and register one with `mlflow run . -e sweep --env-manager local`"
#: The embedded store's folder: ``sqlite:///<cwd>/mlruns/mlflow.db``, artifacts beside it.
STORE_DIR = Path("mlruns")
#: The run metrics ``GET /model`` reports.
_METRIC_PREFIXES = ("test_", names.EXPORT_METRIC_PREFIX, "open_")

_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[\w-]+)$")
_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
_LOGGED = re.compile(r"^models:/(?P<id>m-[0-9A-Za-z]+)$")
_RUN = re.compile(r"^runs:/(?P<run_id>[0-9A-Za-z]+)/(?P<path>.+)$")


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


# --- the bundle of a version --------------------------------------------------------------

def fetch_bundle(model_uri: str, cache_root: Path) -> Bundle:
    """The bundle of ``model_uri`` from the MLflow store, downloaded once per version.

    Raises ``LookupError`` when the URI names nothing (the message says what was looked for
    and how to create it) and when the version has not been exported.
    """
    use_store()
    client = mlflow.MlflowClient()
    source = resolve_model(model_uri, client)
    run = client.get_run(source.run_id)
    version = source.version
    if version is not None and (version.tags or {}).get(names.EXPORTED_TAG) != "true":
        raise LookupError(
            f"{source.describe()} is registered but not exported (no {names.EXPORTED_TAG}=true "
            f"tag): run `mlflow run . -e export --env-manager local -P model_uri={model_uri}`")
    tags = (version.tags if version else run.data.tags) or {}
    info = BundleInfo(
        uri=model_uri,
        name=version.name if version else run.data.tags.get(names.MODEL_TAG, "model"),
        version=str(version.version) if version else None, alias=source.alias,
        run_id=source.run_id, record=_record_of(source),
        metrics={k: v for k, v in sorted(run.data.metrics.items())
                 if k.startswith(_METRIC_PREFIXES)},
        runtime=tags.get(names.RUNTIME_TAG), timing=tags.get(names.TIMING_TAG),
        experiment_id=run.info.experiment_id,
    )
    dest = cache_root / f"{info.key}-{source.run_id[:12]}"
    artifacts = f"runs:/{source.run_id}/{names.EXPORT_DIR}"
    if (dest / MANIFEST).exists():
        bundle = Bundle.open(dest)
        bundle.info.uri, bundle.info.alias = model_uri, source.alias
        bundle.info.runtime, bundle.info.timing = info.runtime, info.timing
        if not bundle.weights_path.exists():
            _add_weights(artifacts, dest, source.describe())  # fetched before an export had them
        return bundle
    cache_root.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s into %s", source.describe(), dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{info.key}-", dir=cache_root))
    try:
        try:
            mlflow.artifacts.download_artifacts(f"{artifacts}/{ONNX_FILE}", dst_path=str(tmp))
        except Exception as exc:  # noqa: BLE001 - any store error means the same to the user
            raise LookupError(
                f"{source.describe()} has no {names.EXPORT_DIR}/{ONNX_FILE} "
                f"({type(exc).__name__}): "
                f"run `mlflow run . -e export --env-manager local -P model_uri={model_uri}`"
            ) from None
        try:
            mlflow.artifacts.download_artifacts(f"{artifacts}/{GALLERY_DIR}", dst_path=str(tmp))
        except Exception:  # noqa: BLE001 - an older export without a gallery: start empty
            log.warning("%s has no exported gallery; /identify starts empty", source.describe())
        _download_weights(artifacts, tmp, source.describe())
        (tmp / MANIFEST).write_text(info.to_json())
        try:
            os.replace(tmp, dest)
        except OSError:  # another server fetched the same version meanwhile: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle.open(dest)


def download_weights(artifacts: str, folder: Path) -> Path | None:
    """``<artifacts>/weights`` (a recipe and safetensors, an export's or a logged model's)
    into ``folder/weights``, or None when it does not hold both files."""
    target = folder / WEIGHTS_DIR
    try:
        mlflow.artifacts.download_artifacts(f"{artifacts}/{WEIGHTS_DIR}", dst_path=str(folder))
    except Exception:  # noqa: BLE001 - any store error means the same: no weights
        pass
    if (target / RECIPE_FILE).is_file() and (target / WEIGHTS_FILE).is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    return None


def _download_weights(artifacts: str, folder: Path, what: str) -> bool:
    """``export/weights`` into ``folder/weights``; an older export has none (GradCAM is then
    unavailable, and says how to export again): warn and go on."""
    if download_weights(artifacts, folder) is not None:
        return True
    log.warning("%s was exported without PyTorch weights (%s/%s); GradCAM and the PyTorch "
                "runtime are unavailable until it is exported again", what, artifacts,
                WEIGHTS_DIR)
    return False


def _add_weights(artifacts: str, dest: Path, what: str) -> None:
    """Weights exported since a cached bundle was fetched, moved into it whole or not at all."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-weights-", dir=dest.parent))
    try:
        if _download_weights(artifacts, tmp, what):
            try:
                os.replace(tmp / WEIGHTS_DIR, dest / WEIGHTS_DIR)
            except OSError:  # another server added them meanwhile: use theirs
                pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def logged_record(source: ModelSource) -> ModelRecord | None:
    """The logged model's record from its ``MLmodel`` metadata, without downloading its
    weights or its pickle; None for a model the zoo did not log."""
    info = mlflow.models.get_model_info(source.load_uri)
    data = (info.metadata or {}).get(names.MLMODEL_RECORD_KEY)
    return ModelRecord.from_dict(data) if data else None


def _record_of(source: ModelSource) -> ModelRecord:
    """``logged_record``, which a served model must have."""
    record = logged_record(source)
    if record is None:
        raise ValueError(f"the logged model of {source.describe()} has no model-zoo record in "
                         "its MLmodel metadata: not a model-zoo model")
    return record
