"""A served model as one folder: the ONNX file, the PyTorch weights, the gallery and a manifest.

The server needs four things of a registered version: ``model.onnx`` (embeddings and classes,
what answers requests), the PyTorch module (GradCAM needs hooks and gradients; it answers
requests instead where the export timed it faster, serving/model/runtimes.py), the default
identification gallery, and what describes the version (URI, metrics, and the model's record:
preprocessing, classes, recipes). The
module is rebuilt from the export's ``weights/`` (a JSON recipe and a safetensors state
dict, ``zoo.models.rebuild``), never unpickled: whoever can write the tracking server's
artifacts must not be able to run code on the server. A bundle holds exactly these (no
pickle: the record comes from the logged model's metadata), so the same loading code serves
from the MLflow store (fetched into a cache once per version) and from a built Bento (packed
as a BentoML model), where no MLflow store exists. Fetching one from MLflow is
``mlflow_source.fetch``'s job; this module imports neither MLflow nor the training code.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from zoo import names
from zoo.record import ModelRecord

MANIFEST = "bundle.json"
ONNX_FILE = names.ONNX_FILE
GALLERY_DIR = names.GALLERY_DIR
WEIGHTS_DIR = names.WEIGHTS_DIR  # recipe.json + model.safetensors
BENTO_LABEL = "zoo-bundle"


@dataclass
class BundleInfo:
    """What ``GET /model`` says about the served version."""

    uri: str
    name: str  # registered model name (or the run's model name for runs:/ URIs)
    version: str | None
    alias: str | None
    run_id: str
    record: ModelRecord  # what the model is: preprocessing, classes, recipes (zoo.record)
    metrics: dict[str, float] = field(default_factory=dict)
    runtime: str | None = None  # the runtime the export timed as faster (zoo.runtime tag)
    timing: str | None = None  # the figures it chose by (zoo.runtime.timing, JSON)
    gate: str | None = None  # the gallery gate's verdict and figures (zoo.gate.figures, JSON)
    experiment_id: str | None = None  # the run's experiment (for its MLflow UI link)

    @property
    def key(self) -> str:
        """A file-name-safe identity of this version (gallery and cache folder names)."""
        base = f"{self.name}-v{self.version}" if self.version else f"run-{self.run_id}"
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", base)

    def run_url(self, tracking_uri: str | None) -> str | None:
        """The run's page in the MLflow UI when the store is an HTTP tracking server; None for
        a local store. Credentials in the URI are never repeated."""
        if not tracking_uri or not self.experiment_id:
            return None
        parts = urlsplit(tracking_uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        netloc = f"{host}:{parts.port}" if parts.port else host
        base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        return f"{base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def to_json(self) -> str:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["record"] = self.record.to_dict()
        return json.dumps(data, indent=2, default=str)

    @classmethod
    def from_json(cls, text: str) -> "BundleInfo":
        """A manifest; one written before records existed holds the untyped dict as
        ``meta``, which ``ModelRecord.from_dict`` reads as well."""
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        record = data.get("record") or data.get("meta")
        if not record:
            raise ValueError("the manifest holds no model record")
        values = {k: v for k, v in data.items() if k in known}
        return cls(**{**values, "record": ModelRecord.from_dict(record)})


@dataclass(frozen=True)
class Bundle:
    """A bundle folder, checked to hold every file the server reads."""

    path: Path
    info: BundleInfo

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILE

    @property
    def gallery_path(self) -> Path:
        return self.path / GALLERY_DIR

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_DIR

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Bundle":
        path = Path(path)
        for needed in (MANIFEST, ONNX_FILE):
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
        from zoo.models.rebuild import load_weights
        from zoo.names import RECIPE_FILE, WEIGHTS_FILE

        folder = self.weights_path
        if not ((folder / RECIPE_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()):
            raise LookupError(
                f"{self.info.uri} was exported without PyTorch weights (its bundle "
                f"{self.path} has no {WEIGHTS_DIR}/{RECIPE_FILE} and "
                f"{WEIGHTS_DIR}/{WEIGHTS_FILE}): export it again with "
                "`mlflow run . -e export --env-manager local "
                f"-P model_uri={self.info.uri}`, then restart the server (or rebuild the Bento)")
        try:
            return load_weights(folder)
        except Exception as exc:  # noqa: BLE001 - json, safetensors, timm and torch all raise
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            raise ValueError(f"the PyTorch weights of {self.info.uri} under {folder} cannot be "
                             f"loaded ({reason}); export the version again") from None
