"""A served model as one folder: the ONNX file, the PyTorch weights, the gallery and a manifest.

The server needs four things of a registered version: ``model.onnx`` (embeddings and classes,
what answers requests), the PyTorch module (GradCAM needs hooks and gradients; it answers
requests instead where the export timed it faster, serving/runtimes.py), the default
identification gallery, and what describes the version (URI, metrics, preprocessing). The
module is rebuilt from the export's ``weights/`` (a JSON recipe and a safetensors state
dict, ``zoo.models.rebuild``), never unpickled: whoever can write the tracking server's
artifacts must not be able to run code on the server. A
bundle holds exactly these, so the same loading code serves from the MLflow store (fetched
into a cache once per version) and from a built Bento (packed as a BentoML model), where no
MLflow store exists.

Fetching is atomic: files are downloaded into a temporary folder that is renamed into place
last, so an interrupted download is never mistaken for a bundle.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "bundle.json"
ONNX_FILE = "model.onnx"
PYTORCH_DIR = "pytorch"
GALLERY_DIR = "gallery"
WEIGHTS_DIR = "weights"  # training.tracking.layout.WEIGHTS_DIR: recipe.json + model.safetensors
BENTO_LABEL = "zoo-bundle"
_METRIC_PREFIXES = ("test_", "export_", "open_")


@dataclass
class BundleInfo:
    """What ``GET /model`` says about the served version."""

    uri: str
    name: str  # registered model name (or the run's model name for runs:/ URIs)
    version: str | None
    alias: str | None
    run_id: str
    metrics: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # the model's zoo_meta
    runtime: str | None = None  # the runtime the export timed as faster (zoo.runtime tag)
    timing: str | None = None  # the figures it chose by (zoo.runtime.timing, JSON)

    @property
    def key(self) -> str:
        """A file-name-safe identity of this version (gallery and cache folder names)."""
        base = f"{self.name}-v{self.version}" if self.version else f"run-{self.run_id}"
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", base)

    @property
    def preprocessing(self) -> dict[str, Any]:
        return dict(self.meta.get("preprocessing") or {})

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.preprocessing.get("class_names", [])]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    @classmethod
    def from_json(cls, text: str) -> "BundleInfo":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


@dataclass(frozen=True)
class Bundle:
    """A bundle folder, checked to hold every file the server reads."""

    path: Path
    info: BundleInfo

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILE

    @property
    def pytorch_path(self) -> Path:
        return self.path / PYTORCH_DIR

    @property
    def gallery_path(self) -> Path:
        return self.path / GALLERY_DIR

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_DIR

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Bundle":
        path = Path(path)
        for needed in (MANIFEST, ONNX_FILE, PYTORCH_DIR):
            if not (path / needed).exists():
                raise FileNotFoundError(f"model bundle {path} has no {needed}: "
                                        "not a bundle, or an interrupted copy")
        try:
            info = BundleInfo.from_json((path / MANIFEST).read_text())
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path / MANIFEST} is not a valid bundle manifest: {exc}") from None
        return cls(path, info)

    def load_pytorch(self) -> Any:
        """The eager ``EmbeddingModel`` (CPU, eval mode) for GradCAM and the PyTorch runtime,
        rebuilt from ``weights/recipe.json`` with ``weights/model.safetensors`` loaded
        strictly: nothing is unpickled. ``LookupError`` when the version was exported
        without them."""
        from zoo.models.rebuild import RECIPE_FILE, WEIGHTS_FILE, load_weights

        folder = self.weights_path
        if not ((folder / RECIPE_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()):
            raise LookupError(
                f"{self.info.uri} was exported without PyTorch weights (its bundle "
                f"{self.path} has no {WEIGHTS_DIR}/{RECIPE_FILE} and "
                f"{WEIGHTS_DIR}/{WEIGHTS_FILE}): export it again with `mlflow run . -e export --env-manager local "
                f"-P model_uri={self.info.uri}`, then restart the server (or rebuild the Bento)")
        try:
            return load_weights(folder)
        except Exception as exc:  # noqa: BLE001 - json, safetensors, timm and torch all raise
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            raise ValueError(f"the PyTorch weights of {self.info.uri} under {folder} cannot be "
                             f"loaded ({reason}); export the version again") from None


def fetch_bundle(model_uri: str, cache_root: Path) -> Bundle:
    """The bundle of ``model_uri`` from the MLflow store, downloaded once per version.

    Raises ``LookupError`` when the URI names nothing (the message says what was looked for
    and how to create it) and when the version has not been exported.
    """
    import mlflow

    from training.tracking.layout import ARTIFACT_DIR, EXPORTED_TAG
    from training.tracking.model_source import resolve_model
    from training.tracking.store import configure_tracking

    configure_tracking()
    client = mlflow.MlflowClient()
    source = resolve_model(model_uri, client)
    run = client.get_run(source.run_id)
    version = source.version
    if version is not None and (version.tags or {}).get(EXPORTED_TAG) != "true":
        raise LookupError(
            f"{source.describe()} is registered but not exported (no {EXPORTED_TAG}=true tag): "
            f"run `mlflow run . -e export --env-manager local -P model_uri={model_uri}`")
    info = BundleInfo(
        uri=model_uri, name=version.name if version else run.data.tags.get("zoo.model", "model"),
        version=str(version.version) if version else None, alias=source.alias,
        run_id=source.run_id,
        metrics={k: v for k, v in sorted(run.data.metrics.items()) if k.startswith(_METRIC_PREFIXES)},
        **_runtime_tags(version.tags if version else run.data.tags),
    )
    dest = cache_root / f"{info.key}-{source.run_id[:12]}"
    artifacts = f"runs:/{source.run_id}/{ARTIFACT_DIR}"
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
                f"{source.describe()} has no {ARTIFACT_DIR}/{ONNX_FILE} ({type(exc).__name__}): "
                f"run `mlflow run . -e export --env-manager local -P model_uri={model_uri}`"
            ) from None
        try:
            mlflow.artifacts.download_artifacts(f"{artifacts}/{GALLERY_DIR}", dst_path=str(tmp))
        except Exception:  # noqa: BLE001 - an older export without a gallery: start empty
            log.warning("%s has no exported gallery; /identify starts empty", source.describe())
        mlflow.artifacts.download_artifacts(source.load_uri, dst_path=str(tmp / PYTORCH_DIR))
        info.meta = _meta_of(tmp / PYTORCH_DIR)
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


def _runtime_tags(tags: dict[str, str] | None) -> dict[str, str | None]:
    """The export's runtime choice and its figures from the version's (or run's) tags."""
    from zoo.export.runtime_timing import RUNTIME_TAG, TIMING_TAG

    tags = tags or {}
    return {"runtime": tags.get(RUNTIME_TAG), "timing": tags.get(TIMING_TAG)}


def _download_weights(artifacts: str, folder: Path, what: str) -> bool:
    """``export/weights`` into ``folder/weights``; an older export has none (GradCAM is then
    unavailable, and says how to export again): warn and go on."""
    import mlflow

    from zoo.models.rebuild import RECIPE_FILE, WEIGHTS_FILE

    target = folder / WEIGHTS_DIR
    try:
        mlflow.artifacts.download_artifacts(f"{artifacts}/{WEIGHTS_DIR}", dst_path=str(folder))
    except Exception:  # noqa: BLE001 - any store error means the same: no weights
        pass
    if (target / RECIPE_FILE).is_file() and (target / WEIGHTS_FILE).is_file():
        return True
    shutil.rmtree(target, ignore_errors=True)
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


def _meta_of(model_dir: Path) -> dict[str, Any]:
    """The model's ``zoo_meta`` from the MLflow model folder (``MLmodel`` metadata)."""
    import yaml

    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text()) or {}
    meta = (mlmodel.get("metadata") or {}).get("zoo")
    if not meta:
        raise ValueError(f"{model_dir / 'MLmodel'} has no zoo metadata: not a model-zoo model")
    return dict(meta)
