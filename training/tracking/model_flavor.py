"""The MLflow flavor of a zoo model: ``pytorch`` for the module, ``python_function`` that
MLflow's own tools can call.

``mlflow.pytorch`` saves the module (pickled, for ``mlflow.pytorch.load_model``) and
declares its own ``python_function`` flavor, which cannot call a model that returns a dict
of named outputs. ``save_model`` keeps the ``pytorch`` flavor and replaces the
``python_function`` one with ``zoo.pyfunc``: a TorchScript trace with the preprocessing in
the file (no pickled code to run), so ``mlflow.pyfunc.load_model(uri).predict(...)`` and
``mlflow models serve`` answer embeddings, logits and the top class for preprocessed
batches, encoded images or table rows. Beside them, ``weights/`` holds the module as a JSON
recipe and safetensors (``zoo.models.rebuild``), which ``init=`` and export load instead of
unpickling. ``Model.log(flavor=this module, ...)`` logs it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow.pytorch
import torch
from mlflow import pyfunc
from mlflow.models import Model
from mlflow.utils.environment import _CONDA_ENV_FILE_NAME, _PYTHON_ENV_FILE_NAME
from mlflow.utils.model_utils import MLMODEL_FILE_NAME

from zoo import names
from zoo import pyfunc as zoo_pyfunc
from zoo.export.torchscript_format import export_torchscript, save_torchscript
from zoo.models.rebuild import save_checked

log = logging.getLogger(__name__)

FLAVOR_NAME = "pytorch"  # what the MLflow UI lists the logged model as


def save_model(pytorch_model: torch.nn.Module, path: str, mlflow_model: Model | None = None,
               example: torch.Tensor | None = None, **kwargs: Any) -> None:
    """``mlflow.pytorch.save_model``, then the trace of ``pytorch_model`` on ``example``
    (a preprocessed batch of two or more) as the ``python_function`` flavor."""
    mlflow_model = mlflow_model if mlflow_model is not None else Model()
    mlflow.pytorch.save_model(pytorch_model, path, mlflow_model=mlflow_model, **kwargs)
    if example is not None:  # what init= and export load, so they need not unpickle
        why_not = save_checked(pytorch_model.eval(), Path(path) / names.WEIGHTS_DIR,
                               example)
        if why_not:
            log.info("no safetensors weights beside the logged module: %s (init= and export "
                     "will unpickle it)", why_not)
    folder = Path(path) / names.PYFUNC_DIR
    folder.mkdir()
    model = pytorch_model.eval()
    save_torchscript(export_torchscript(model, example), folder / names.TORCHSCRIPT_FILE,
                     model.record)
    code = mlflow_model.flavors[pyfunc.FLAVOR_NAME].get(pyfunc.CODE)
    pyfunc.add_to_model(mlflow_model, loader_module=zoo_pyfunc.__name__, data=names.PYFUNC_DIR,
                        code=code, conda_env=_CONDA_ENV_FILE_NAME,
                        python_env=_PYTHON_ENV_FILE_NAME)
    mlflow_model.save(str(Path(path) / MLMODEL_FILE_NAME))
