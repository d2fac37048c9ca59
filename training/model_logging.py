"""Log a trained model to MLflow so that it can be loaded, served and exported alone.

The model is pickled (not MLflow 3's default ``pt2`` graph) on purpose: the server needs
the real module structure for GradCAM hooks, and ``mlflow.pytorch.load_model`` then returns
the same ``EmbeddingModel`` with its preprocessing and class names in ``zoo_meta``. The
``zoo`` package travels with the model (``code_paths``), so unpickling needs no checkout.
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
import torch
from mlflow.models.model import ModelInfo
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

import zoo
from zoo.models import EmbeddingModel
from zoo.quiet import quiet_loggers

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


def model_signature(input_shape: tuple[int, ...], embedding_dim: int, num_classes: int) -> ModelSignature:
    """Float32 batch in; named ``embedding`` and ``logits`` out."""
    f32 = np.dtype(np.float32)
    return ModelSignature(
        inputs=Schema([TensorSpec(f32, (-1, *input_shape), "input")]),
        outputs=Schema([
            TensorSpec(f32, (-1, embedding_dim), "embedding"),
            TensorSpec(f32, (-1, num_classes), "logits"),
        ]),
    )


def log_trained_model(
    model: EmbeddingModel, example: torch.Tensor, meta: dict[str, Any], metrics: dict[str, float]
) -> ModelInfo:
    """Log ``model`` (CPU, eval mode) with signature, input example and its metadata."""
    model = model.cpu().eval()
    model.zoo_meta.update(meta)
    pre = meta["preprocessing"]
    signature = model_signature(tuple(pre["input_size"]), model.embedding_dim,
                                len(pre["class_names"]))
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for name, content in (("preprocessing.json", pre),
                              ("labels.json", pre["class_names"]),
                              ("zoo_meta.json", model.zoo_meta)):
            path = Path(tmp) / name
            path.write_text(json.dumps(content, indent=2, default=str))
            files.append(str(path))
        # mlflow.pytorch's pyfunc wrapper wants one tensor out; ours returns a dict, so its
        # serving-input check ("Failed to validate serving input example") is noise here.
        with quiet_loggers("mlflow.pytorch", "mlflow.models.model"):
            info = mlflow.pytorch.log_model(
                model,
                name=ARTIFACT_NAME,
                serialization_format="pickle",
                code_paths=[str(Path(zoo.__file__).parent)],
                signature=signature,
                input_example=example[:2].cpu().numpy().astype(np.float32),
                pip_requirements=runtime_requirements(),
                extra_files=files,
                metadata={"zoo": json.loads(json.dumps(model.zoo_meta, default=str))},
            )
    with contextlib.suppress(Exception):
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)},
                           model_id=info.model_id)
    return info
