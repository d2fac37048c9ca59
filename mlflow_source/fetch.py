"""A registered version's files from the MLflow store: the bundle the server loads (fetched
into a cache once per version), the logged model's weights, and its record.

Fetching is atomic: files are downloaded into a temporary folder that is renamed into place
last, so an interrupted download is never mistaken for a bundle.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import mlflow

from mlflow_source.store import use_store
from mlflow_source.uris import ModelSource, resolve_model
from zoo import names
from zoo.export.bundle import GALLERY_DIR, MANIFEST, ONNX_FILE, WEIGHTS_DIR, Bundle, BundleInfo
from zoo.names import RECIPE_FILE, WEIGHTS_FILE
from zoo.record import ModelRecord

log = logging.getLogger(__name__)

#: The run metrics ``GET /model`` reports.
_METRIC_PREFIXES = ("test_", names.EXPORT_METRIC_PREFIX, "open_")


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
        gate=tags.get(names.GATE_FIGURES_TAG),
        experiment_id=run.info.experiment_id,
    )
    dest = cache_root / f"{info.key}-{source.run_id[:12]}"
    artifacts = f"runs:/{source.run_id}/{names.EXPORT_DIR}"
    if (dest / MANIFEST).exists():
        bundle = Bundle.open(dest)
        bundle.info.uri, bundle.info.alias = model_uri, source.alias
        bundle.info.runtime, bundle.info.timing = info.runtime, info.timing
        bundle.info.gate = info.gate
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
