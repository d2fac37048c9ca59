"""A folder too big for the preload budget, end to end: `mlflow run -e train` reads it lazily
through decoding workers, then the model is registered, exported and served over HTTP."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import httpx
import mlflow
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from support.process import REPO, Server
from training.pipeline.export import ExportConfig, export_model
from training.tracking.registration import register_best, runs_of_experiment
from zoo import names
from zoo.data import Preprocessing, preprocess_images
from zoo.export.onnx_format import read_metadata

pytestmark = pytest.mark.slow

CLASSES, PER_CLASS, SIZE = 3, 16, 32
#: 48 images at 3x32x32 take 147,456 bytes as uint8: 0.05 MiB (52,428 bytes) does not hold them.
BUDGET_MB = "0.05"


def photos(root: Path) -> Path:
    """JPEGs of several sizes, a colour and a stripe per class (larger than they are trained at)."""
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        (root / f"kind{c}").mkdir(parents=True)
        for i in range(PER_CLASS):
            h, w = (int(v) for v in rng.integers(48, 96, size=2))
            pixels = rng.normal(90, 25, size=(h, w, 3))
            pixels[:, :, c] += 100
            pixels[:, (c * w) // CLASSES:((c + 1) * w) // CLASSES] += 60
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                root / f"kind{c}" / f"{i}.jpg", quality=90)
    return root


def test_a_folder_beyond_the_budget_trains_exports_and_serves(tracking_uri: str,
                                                               tmp_path: Path) -> None:
    folder = photos(tmp_path / "photos")
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "ZOO_PRELOAD_MB": BUDGET_MB,
           # MLproject commands call `python`: the one running the tests
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "mlflow"), "run", str(REPO), "-e", "train",
         "--env-manager", "local", "--experiment-name", "zoo-photos",
         "-P", f"data={folder}", "-P", "model=resnet18", "-P", "epochs=2", "-P", "batch_size=8",
         "-P", f"image_size={SIZE}", "-P", "embedding_dim=16", "-P", "loader_workers=2",
         "-P", "plots=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "decoding lazily on access" in done.stderr

    runs = runs_of_experiment("zoo-photos")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    client = mlflow.MlflowClient()
    waits = client.get_metric_history(runs[0].info.run_id, "data_wait_s")
    assert [m.step for m in waits] == [1, 2] and all(m.value >= 0 for m in waits)
    assert "test_precision_at_1" in runs[0].data.metrics
    assert runs[0].data.params["loader_workers"] == "2"

    register_best(runs, "test_precision_at_1")
    export_model(ExportConfig(model_uri="models:/zoo-photos@champion", formats="onnx",
                              time_runtimes=False))
    version = client.get_model_version_by_alias("zoo-photos", "champion")
    onnx_path = mlflow.artifacts.download_artifacts(
        f"runs:/{version.run_id}/{names.EXPORT_DIR}/{names.ONNX_FILE}",
        dst_path=str(tmp_path / "ref"))
    pre = Preprocessing.from_dict(read_metadata(Path(onnx_path))["preprocessing"])
    assert pre.input_size == (3, SIZE, SIZE)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])

    sample = [folder / f"kind{c}" / "0.jpg" for c in range(CLASSES)]
    expected = session.run(["embedding"], {"input": preprocess_images(
        [Image.open(p) for p in sample], pre).numpy()})[0]
    server_env = {"MLFLOW_TRACKING_URI": tracking_uri,
                  "ZOO_MODEL_URI": "models:/zoo-photos@champion",
                  "ZOO_CACHE_DIR": str(tmp_path / "cache"),
                  "ZOO_GALLERY_DIR": str(tmp_path / "gallery"),
                  "ZOO_WORKERS": "1"}
    with Server("serving.service:ZooService", server_env) as server:
        got = httpx.post(f"{server.url}/embed", timeout=60, files=[
            ("images", (p.name, io.BytesIO(p.read_bytes()), "image/jpeg")) for p in sample])
    assert got.status_code == 200, got.text
    embeddings = np.asarray(got.json()["embeddings"])
    assert embeddings.shape == (CLASSES, 16)
    assert np.abs(embeddings - expected).max() <= 1e-5
