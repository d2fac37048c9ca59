"""Log a trained model to MLflow so that it can be loaded, served and exported alone.

The module is pickled (not MLflow 3's default ``pt2`` graph) on purpose: GradCAM needs the
real module structure for its hooks, and ``mlflow.pytorch.load_model`` then returns the same
``EmbeddingModel`` with its record (``zoo.record``: preprocessing, class names, recipes). Beside it,
``training.tracking.model_flavor`` adds a ``python_function`` flavor that MLflow's own tools call
(``mlflow.pyfunc.load_model``, ``mlflow models serve``): a TorchScript trace, loaded without
unpickling code. The ``zoo`` package travels with the model (``code_paths``), so neither
needs a checkout.
"""
from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import Model
from mlflow.models.model import ModelInfo
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import AnyType, Array, ColSpec, DataType, Schema, TensorSpec

import zoo
from training.tracking import model_flavor
from zoo import names
from zoo.data.preprocessing import Preprocessing
from zoo.data.table_encoding import decode
from zoo.models import EmbeddingModel
from zoo.quiet import quiet_loggers
from zoo.record import ModelRecord

log = logging.getLogger(__name__)

ARTIFACT_NAME = "model"
RUNTIME_PACKAGES = ("torch", "torchvision", "timm", "pytorch-metric-learning", "numpy", "pillow")


def runtime_requirements() -> list[str]:
    """Pinned requirements of the packages needed to unpickle and run the model."""
    reqs = []
    for name in RUNTIME_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            reqs.append(f"{name}=={metadata.version(name)}")
    return reqs


def model_signature(input_shape: tuple[int, ...], embedding_dim: int,
                    num_classes: int) -> ModelSignature:
    """Float32 batch in; named ``embedding`` and ``logits`` out."""
    f32 = np.dtype(np.float32)
    return ModelSignature(
        inputs=Schema([TensorSpec(f32, (-1, *input_shape), "input")]),
        outputs=Schema([
            TensorSpec(f32, (-1, embedding_dim), "embedding"),
            TensorSpec(f32, (-1, num_classes), "logits"),
        ]),
    )


def pyfunc_signature(pre: Preprocessing, num_classes: int) -> ModelSignature:
    """What ``zoo.pyfunc`` answers: one row per input with ``embedding`` (and ``logits``,
    ``label``, ``probability`` where the model classifies). Tabular models take their raw
    feature columns; image models take a preprocessed ndarray batch or a DataFrame ``image``
    column of encoded files, two forms one input schema cannot hold, so theirs is left open."""
    outputs = [ColSpec(Array(DataType.float), "embedding")]
    if num_classes:
        outputs += [ColSpec(Array(DataType.float), "logits"), ColSpec(DataType.string, "label"),
                    ColSpec(DataType.double, "probability")]
    return ModelSignature(inputs=row_schema(pre), outputs=Schema(outputs))


def row_schema(pre: Preprocessing) -> Schema | None:
    """A tabular model's raw columns by name: doubles, or for a table any type, optional (a
    code column may come as numbers or text, a flag as booleans, any value may be missing;
    ``zoo.pyfunc`` checks each value and says which is wrong); None for image models."""
    if pre.kind != "tabular" or not pre.feature_names:
        return None
    if pre.columns is None:
        return Schema([ColSpec(DataType.double, name) for name in pre.feature_names])
    return Schema([ColSpec(AnyType(), name, required=False) for name in pre.feature_names])


def input_example(example: torch.Tensor, pre: Preprocessing) -> Any:
    """Two inputs as ``zoo.pyfunc`` takes them: the preprocessed image batch, or the raw
    feature rows (the normalisation and a table's encoding undone) as a DataFrame."""
    x = example[:2].cpu().numpy().astype(np.float32)
    if pre.kind != "tabular":
        return x
    raw = x * np.asarray(pre.std, np.float32) + np.asarray(pre.mean, np.float32)
    if pre.columns is not None:
        return decode(raw, pre.table_columns)
    columns = pre.feature_names or [f"f{i}" for i in range(raw.shape[1])]
    return pd.DataFrame(raw.astype(np.float64), columns=columns)


def log_trained_model(
    model: EmbeddingModel, example: torch.Tensor, record: ModelRecord, metrics: dict[str, float]
) -> ModelInfo:
    """Log ``model`` (CPU, eval mode) with signature, input example and ``record`` (which
    becomes the model's own)."""
    model = model.cpu().eval()
    model.record = record
    full = record.to_dict()
    pre = full["preprocessing"]
    signature = pyfunc_signature(record.pre, model.num_classes)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for name, content in ((names.PREPROCESSING_FILE, pre),
                              (names.LABELS_FILE, record.class_names),
                              (names.RECORD_FILE, full)):
            path = Path(tmp) / name
            path.write_text(json.dumps(content, indent=2, default=str))
            files.append(str(path))
        # mlflow.pytorch warns that pickles run code when loaded: the python_function flavor
        # is the trace, and the module is loaded only from the tracking store one trusts.
        with quiet_loggers("mlflow.pytorch"):
            info = Model.log(
                artifact_path=None,
                name=ARTIFACT_NAME,
                flavor=model_flavor,
                flavor_name=model_flavor.FLAVOR_NAME,
                pytorch_model=model,
                example=example[:2].cpu().float().contiguous(),
                serialization_format="pickle",
                code_paths=[str(Path(zoo.__file__).parent)],
                signature=signature,
                input_example=input_example(example, record.pre),
                pip_requirements=runtime_requirements(),
                extra_files=files,
                metadata={names.MLMODEL_RECORD_KEY: full},
            )
    with contextlib.suppress(Exception):
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)},
                           model_id=info.model_id)
    return info
