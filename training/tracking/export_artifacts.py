"""Record an export in MLflow: files and figures on the training run, tags on the version.

The training run is reopened to log into it and then closed with the status and end time
it had, so an export never turns a FINISHED training run into a running or failed one.
"""
from __future__ import annotations

import contextlib
import logging
import math
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import mlflow
import numpy as np
from mlflow.models.model import ModelInfo

from training.tracking.model_logging import model_signature
from training.tracking.model_source import ModelSource
from zoo import names
from zoo.export import Parity
from zoo.quiet import quiet_loggers
from zoo.record import ModelRecord

log = logging.getLogger(__name__)

# Where a wheel of onnxruntime-gpu exists (it carries the CPU provider too); plain elsewhere.
GPU_WHEEL_MARKER = 'platform_system == "Linux" and platform_machine == "x86_64"'


@contextlib.contextmanager
def reopened_run(run_id: str) -> Iterator[mlflow.ActiveRun]:
    """Make ``run_id`` the active run, then restore its status and end time, even on error."""
    client = mlflow.MlflowClient()
    before = client.get_run(run_id).info
    run = mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None)
    try:
        yield run
    finally:
        mlflow.end_run()
        client.set_terminated(run_id, status=before.status, end_time=before.end_time)


def onnx_requirements() -> list[str]:
    """Pinned ONNX Runtime (the GPU wheel where there is one) for the logged ONNX model."""
    reqs = []
    with contextlib.suppress(metadata.PackageNotFoundError):
        reqs.append(f"onnx=={metadata.version('onnx')}")
    version = None
    for dist in ("onnxruntime-gpu", "onnxruntime"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            version = version or metadata.version(dist)
    if version:
        reqs += [f"onnxruntime-gpu=={version}; {GPU_WHEEL_MARKER}",
                 f"onnxruntime=={version}; not ({GPU_WHEEL_MARKER})"]
    return reqs


def parity_metrics(parities: list[Parity]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for parity in parities:
        metrics.update(parity.metrics(names.EXPORT_METRIC_PREFIX))
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


def log_parity(parities: list[Parity], report: dict[str, Any]) -> None:
    """Figures as metrics of the active run, the whole report as ``export/parity.json``."""
    mlflow.log_metrics(parity_metrics(parities))
    mlflow.log_dict(report, f"{names.EXPORT_DIR}/{names.PARITY_ARTIFACT}")


def log_files(files: dict[str, Path], record: ModelRecord,
              example: np.ndarray) -> ModelInfo | None:
    """The exported files under ``export/`` and the ONNX file as an MLflow ``onnx`` model."""
    for path in files.values():
        mlflow.log_artifact(str(path), artifact_path=names.EXPORT_DIR)
    if "onnx" not in files:
        return None
    import onnx  # here: the server imports this module, and onnx takes a second to import

    shape = record.input_size if record.preprocessing else tuple(example.shape[1:])
    signature = model_signature(shape, record.embedding_dim or -1, len(record.class_names) or -1)
    # Providers are chosen where the model is loaded; CPU is what every machine has.
    with quiet_loggers("mlflow.models.model", "mlflow.onnx"):
        return mlflow.onnx.log_model(
            onnx.load(str(files["onnx"])), name=names.ONNX_MODEL_NAME, signature=signature,
            input_example=example, pip_requirements=onnx_requirements(),
            onnx_execution_providers=["CPUExecutionProvider"], save_as_external_data=False,
            metadata={names.MLMODEL_RECORD_KEY: record.to_dict()},
        )


def log_weights(folder: Path) -> None:
    """``model.safetensors`` and ``recipe.json`` under ``export/weights/`` of the active run."""
    mlflow.log_artifacts(str(folder), f"{names.EXPORT_DIR}/{names.WEIGHTS_DIR}")


def tag_version(source: ModelSource, parities: list[Parity], files: dict[str, str],
                error: str | None) -> None:
    """Parity figures as version tags; ``zoo.exported`` only when every check passed."""
    if source.version is None:
        return
    client = mlflow.MlflowClient()
    name, number = source.version.name, str(source.version.version)
    tags = {k: f"{v:.6g}" for k, v in parity_metrics(parities).items()}
    if error is None:
        tags.update({names.EXPORTED_TAG: "true", **files})
    else:
        tags[names.EXPORT_ERROR_TAG] = error[:5000]
    for key, value in tags.items():
        client.set_model_version_tag(name, number, key, value)
    stale = (names.EXPORTED_TAG,) if error is not None else (names.EXPORT_ERROR_TAG,)
    for key in stale:
        if key in (client.get_model_version(name, number).tags or {}):
            client.delete_model_version_tag(name, number, key)
