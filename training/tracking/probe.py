"""The probe a sweep logs on its parent run: embeddings of a sample of its data under
``zoo.probe`` (a fixed function of the inputs, nothing trained), which ``-e recommend``
reads back to find the swept data sets most like a new one."""
from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np
import torch

from zoo.data import LoadedData, Table
from zoo import names
from zoo.probe import PROBE_VERSION, probe

PROBE_SAMPLES = 512


def probe_sample(data: LoadedData, samples: int = PROBE_SAMPLES, seed: int = 0) -> np.ndarray:
    """The probe embeddings of up to ``samples`` inputs of ``data`` (a seeded draw)."""
    n = len(data)
    pick = np.sort(np.random.default_rng(seed).choice(n, min(n, samples), replace=False))
    x = data.x[torch.from_numpy(pick)]
    if isinstance(x, Table):  # encoded with the sample's own columns: a fixed function of it
        x = x.encoded(x.fit())
    return probe(x, data.kind)


def log_probe(data: LoadedData) -> None:
    """Log the data's probe embeddings to the active run (a sweep's parent)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(names.PROBE_ARTIFACT).name
        np.savez(path, embeddings=probe_sample(data), kind=data.kind,
                 num_classes=data.num_classes, name=data.name)
        mlflow.log_artifact(str(path), str(Path(names.PROBE_ARTIFACT).parent))
    mlflow.set_tag(names.PROBE_TAG, PROBE_VERSION)
