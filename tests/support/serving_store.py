"""A store with trained, registered and exported models, and what the serving tests compare
answers against: the exported ONNX model run directly (``Reference``)."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime as ort
from PIL import Image
from sklearn.datasets import load_digits

from support.process import REPO
from support.store_template import seed_store
from training.config import TrainConfig
from training.pipeline.export import ExportConfig, export_model
from training.pipeline.run import dataset_name, train
from training.tracking.registration import register_best, runs_of_experiment
from zoo.data import Preprocessing, preprocess_images, preprocess_rows
from zoo.export.onnx_format import read_metadata

IMAGE_URI = "models:/zoo-digits@champion"
TABULAR_URI = "models:/zoo-emitters@champion"


def make_store(root: Path, configs: list[TrainConfig],
               env: dict[str, str] | None = None) -> dict[str, str]:
    """A store at ``root`` with each config trained, registered (``zoo-<data set>``) and
    exported; ``env`` is set while they train (and returned with the store's)."""
    root.mkdir(parents=True, exist_ok=True)
    seed_store(root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {**(env or {}), "MLFLOW_TRACKING_URI": uri}
    saved = {k: os.environ.get(k) for k in ("MLFLOW_EXPERIMENT_ID", *env)}
    os.environ.update(env)
    mlflow.set_tracking_uri(uri)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for cfg in configs:
            train(cfg)
            register_best(runs_of_experiment(cfg.tracking.experiment), "test_precision_at_1")
            name = dataset_name(cfg.data.source)
            export_model(ExportConfig(model_uri=f"models:/zoo-{name}@champion",
                                      formats="onnx", time_runtimes=False))
    finally:
        os.chdir(cwd)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        mlflow.set_tracking_uri(None)
    return {**env, "ZOO_CACHE_DIR": str(root / "cache"),
            "root": str(root)}


def store_env(store: dict[str, str], model_uri: str, gallery: str, **extra: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": store["MLFLOW_TRACKING_URI"], "ZOO_MODEL_URI": model_uri,
            "ZOO_CACHE_DIR": store["ZOO_CACHE_DIR"],
            "ZOO_GALLERY_DIR": str(Path(store["root"]) / gallery), **extra}


class Reference:
    """The exported ONNX model run directly: what every served answer must equal."""

    def __init__(self, store: dict[str, str], model_uri: str) -> None:
        mlflow.set_tracking_uri(store["MLFLOW_TRACKING_URI"])
        try:
            version = mlflow.MlflowClient().get_model_version_by_alias(
                *model_uri.removeprefix("models:/").split("@"))
            path = mlflow.artifacts.download_artifacts(
                f"runs:/{version.run_id}/export/model.onnx",
                dst_path=str(Path(store["root"]) / f"ref-{version.name}"))
        finally:
            mlflow.set_tracking_uri(None)
        self.version, self.run_id = str(version.version), version.run_id
        self.pre = Preprocessing.from_dict(read_metadata(Path(path))["preprocessing"])
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, {"input": x})))

    def images(self, pngs: list[bytes]) -> dict[str, np.ndarray]:
        return self(preprocess_images([Image.open(io.BytesIO(b)) for b in pngs], self.pre).numpy())

    def rows(self, rows: list[list[float]]) -> dict[str, np.ndarray]:
        return self(preprocess_rows(np.asarray(rows), self.pre).numpy())


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def digit_images() -> list[bytes]:
    digits = load_digits()
    return [png((digits.images[i] * 255 / 16).astype(np.uint8)) for i in range(0, 1700, 17)]


def files(pngs: list[bytes], field: str = "images") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (f"{i}.png", b, "image/png")) for i, b in enumerate(pngs)]


def clean_clone(dest: Path) -> Path:
    """The checkout's files as a fresh clone of this commit would hold them (tracked files, and
    new ones not ignored), without build outputs, the venv or the store."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


#: The store test_serving.py, test_bento.py and test_carry_ray.py serve from: resnet18 on
#: digits and a residual MLP on emitters, one epoch each, registered and exported.
SERVING_CONFIGS = (
    dict(model="resnet18", loss="arcface", data="digits", epochs=1, batch_size=64,
         embedding_dim=32, experiment="zoo-digits", plots=False),
    dict(model="residual_mlp", loss="arcface", data="emitters", epochs=1, batch_size=64,
         embedding_dim=16, experiment="zoo-emitters", plots=False))


def serving_store(tmp_path_factory, dest: Path) -> dict[str, str]:
    """A copy at ``dest`` of the store of ``SERVING_CONFIGS``, trained once for the whole test
    session (all pytest-xdist workers: the first to ask trains it under a lock in the folder
    the workers share, the others wait for it and copy it). Each caller gets its own copy,
    with every path the store holds moved to ``dest``, so what one module registers, enrolls
    or moves is never seen by another."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    template = shared / "trained-serving-store"
    with open(shared / "trained-serving-store.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (template / "complete").exists():
                shutil.rmtree(template, ignore_errors=True)  # a worker that died half-way
                make_store(template, [TrainConfig.of(**c) for c in SERVING_CONFIGS])
                (template / "complete").touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return copy_store(template, dest)


def copy_store(source: Path, dest: Path) -> dict[str, str]:
    """``make_store``'s store at ``source`` copied to ``dest``: every text in its database
    that names ``source`` (artifact locations, model version sources) names ``dest``."""
    import contextlib
    import sqlite3

    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("complete", "cache"))
    old, new = str(source), str(dest)
    with contextlib.closing(sqlite3.connect(dest / "mlflow.db")) as db, db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for column in db.execute(f"PRAGMA table_info('{table}')").fetchall():
                name, kind = column[1], column[2].upper()
                if any(t in kind for t in ("CHAR", "TEXT", "CLOB")):
                    db.execute(f'UPDATE "{table}" SET "{name}" = replace("{name}", ?, ?) '
                               f'WHERE instr("{name}", ?) > 0', (old, new, old))
        left = [(t, c[1]) for t in tables
                for c in db.execute(f"PRAGMA table_info('{t}')").fetchall()
                if db.execute(f'SELECT count(*) FROM "{t}" WHERE CAST("{c[1]}" AS TEXT) '
                              f'LIKE ?', (f"%{old}%",)).fetchone()[0]]
    assert not left, f"the copied store still names {old} in {left}"
    uri = f"sqlite:///{dest / 'mlflow.db'}"
    return {"MLFLOW_TRACKING_URI": uri, "ZOO_CACHE_DIR": str(dest / "cache"), "root": str(dest)}
