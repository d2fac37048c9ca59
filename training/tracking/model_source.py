"""Loading a registered or logged model for training's commands (export, evaluate, distill,
``init=``), and what it was trained with.

Which version and run a URI names is decided by ``mlflow_source.uris.resolve_model``, the
same function the server uses, so the two never disagree.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow

from mlflow_source.fetch import download_weights, logged_record
from mlflow_source.uris import ModelSource, logged_model_location, resolve_model
from training.config import TrainConfig
from zoo import names
from zoo.names import DEFAULT_MODEL_URI
from zoo.record import ModelRecord, record_of

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_MODEL_URI", "ModelFileError", "ModelSource", "artifact_location",
           "load_pytorch_model", "load_source", "model_record", "resolve_model",
           "training_config"]

log = logging.getLogger(__name__)

def load_source(uri: str) -> tuple[ModelSource, mlflow.entities.Run, torch.nn.Module]:
    """Resolve ``uri``, fetch its training run, and load its module on the CPU in eval mode."""
    source = resolve_model(uri)
    run = mlflow.MlflowClient().get_run(source.run_id)
    model = load_pytorch_model(source.load_uri, f"the model of {source.describe()}",
                               artifact_location(source))
    return source, run, model


def model_record(source: ModelSource, model: Any = None) -> ModelRecord | None:
    """The model's record: from the loaded module, or without loading any weights from its
    MLmodel metadata (None for a model the zoo did not log)."""
    return record_of(model) if model is not None else logged_record(source)


def training_config(source: ModelSource, run: mlflow.entities.Run,
                    model: Any = None) -> TrainConfig:
    """What the model was trained with, as the model itself records it (its recipe: data,
    split seed and fractions, open-set share, preprocessing, architecture). Models logged
    before they carried a recipe fall back to their run's parameters and resolved tags."""
    record = model_record(source, model)
    if record is not None and record.recipe:
        return TrainConfig.from_recipe(record.recipe)
    log.info("%s carries no training recipe (logged before models recorded one): reading "
             "its run's parameters", source.describe())
    return TrainConfig.from_run(run.data.params, run.data.tags)


class ModelFileError(RuntimeError):
    """A logged model whose files are missing or damaged; the message names where."""


def load_pytorch_model(location: str, what: str, files: str | None = None) -> torch.nn.Module:
    """The logged module on the CPU in eval mode: rebuilt from its recipe and safetensors
    weights (``weights/`` beside it) when it has them, so no pickle runs; else, for a model
    logged before it had them, ``mlflow.pytorch.load_model``, which unpickles it. A missing
    or damaged file is a ``ModelFileError`` naming ``files`` (where the model's files are)."""
    rebuilt = _load_weights(files or location, what)
    if rebuilt is not None:
        return rebuilt
    log.warning("%s has no safetensors weights (logged before models had them): unpickling "
                "its module, which runs whatever code the pickle names; load models only from "
                "a store you trust", what)
    try:
        return mlflow.pytorch.load_model(location, map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001 - torch, zipfile, pickle and mlflow all raise
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0].split(". ")[0][:300]
        raise ModelFileError(f"{what} cannot be loaded: its files under {files or location} are "
                             f"missing, damaged or not a model-zoo module ({reason}); train "
                             "and register it again, or point the alias at another version"
                             ) from None


def _load_weights(files: str, what: str) -> torch.nn.Module | None:
    """The module from ``<files>/weights`` (recipe + safetensors); None when there are none."""
    from zoo.models.rebuild import load_weights

    with tempfile.TemporaryDirectory() as tmp:
        folder = download_weights(files, Path(tmp))
        if folder is None:
            return None
        try:
            return load_weights(folder)
        except Exception as exc:  # noqa: BLE001 - safetensors, JSON and the rebuild all raise
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            raise ModelFileError(f"{what} cannot be loaded: its weights under {files}/"
                                 f"{names.WEIGHTS_DIR} are damaged ({reason}); train and "
                                 "register it again, or point the alias at another version"
                                 ) from None


def artifact_location(source: ModelSource) -> str:
    """Where the model's files are stored (the logged model's artifact folder)."""
    uri = source.version.source if source.version is not None else source.uri
    return logged_model_location(uri, mlflow.MlflowClient()) or uri or source.uri
