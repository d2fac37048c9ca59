"""Beyond one machine: a real ``mlflow server`` over HTTP, trained into, registered and
exported there, and served from there.

- On a SQLite backend store: a sweep of two models as Ray tasks.
- On a PostgreSQL backend store (``ZOO_TEST_POSTGRES_URI``,
  ``postgresql://user:password@host:port/database``, which ``make test`` sets to a throwaway
  server): one run trained, registered and exported in process, in a database of its own
  that the test creates there.
"""
from __future__ import annotations

import os
import subprocess
import uuid
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from support.mlflow_process import mlflow_process
from zoo import names

POSTGRES = os.environ.get("ZOO_TEST_POSTGRES_URI", "")


def _fresh_database(uri: str) -> str:
    """An empty database beside ``uri``'s: MLflow's schema in a database of its own."""
    import psycopg

    name = f"zoo_tracking_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(uri, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{uri.rsplit('/', 1)[0]}/{name}"


@pytest.mark.slow
def test_ray_sweep_registers_exports_and_serves_through_a_tracking_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = f"sqlite:///{tmp_path / 'server.db'}"
    with mlflow_process("server", "--backend-store-uri", store, "--artifacts-destination",
                        str(tmp_path / "server-artifacts"), "--workers", "1") as url:
        env = {**os.environ, "MLFLOW_TRACKING_URI": url, "OMP_NUM_THREADS": "1"}
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "RAY_ADDRESS"):
            env.pop(var, None)
        proc = subprocess.run(
            [sys.executable, "-m", "training.commands.sweep", "--backend", "ray",
             "--data", "emitters",
             "--models", "residual_mlp,ft_transformer", "--losses", "arcface",
             "--epochs", "1", "--embedding_dim", "16", "--plots", "false",
             "--experiment", "server-sweep"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "ranked by best_val_map_at_r" in proc.stdout  # the default: validation
        assert "[2/2]" in proc.stdout  # the progress lines of the two Ray tasks
        # nothing was written beside the working directory: all went to the server
        assert not (tmp_path / "mlruns").exists()

        api = f"{url}/api/2.0/mlflow"
        exp = requests.get(f"{api}/experiments/get-by-name",
                           params={"experiment_name": "server-sweep"}).json()["experiment"]
        runs = requests.post(f"{api}/runs/search",
                             json={"experiment_ids": [exp["experiment_id"]]}).json()["runs"]
        tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
        [parent] = [r for r, t in zip(runs, tags) if t.get(names.SWEEP_TAG) == "parent"]
        parent_id = parent["info"]["run_id"]
        children = [r for r, t in zip(runs, tags) if t.get("mlflow.parentRunId") == parent_id]
        assert len(children) == 2
        assert all(c["info"]["status"] == "FINISHED" for c in children)
        assert {(t[names.MODEL_TAG], t[names.LOSS_TAG]) for t in tags if names.MODEL_TAG in t
                and t.get("mlflow.parentRunId") == parent_id} == {
            ("residual_mlp", "arcface"), ("ft_transformer", "arcface")}
        files = requests.get(f"{api}/artifacts/list",
                             params={"run_id": parent_id, "path": "comparison"}).json()["files"]
        assert {"comparison/comparison.csv", "comparison/comparison.md",
                "comparison/heatmap.png"} <= {f["path"] for f in files}
        alias = requests.get(f"{api}/registered-models/alias",
                             params={"name": "zoo-emitters", "alias": "champion"}).json()
        version = alias["model_version"]
        assert version["run_id"] in {c["info"]["run_id"] for c in children}
        assert {"key": names.EXPORTED_TAG, "value": "true"} in version.get("tags", [])

        # the serving side loads the exported champion from the same server
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        from mlflow_source.fetch import fetch_bundle
        from serving.model.served import ServedModel
        from serving.settings import ServeSettings

        bundle = fetch_bundle("models:/zoo-emitters@champion", tmp_path / "cache")
        assert bundle.info.run_id == version["run_id"]
        served = ServedModel(bundle, ServeSettings(threads=1, workers=1))
        rows = np.random.default_rng(0).normal(size=(3, 12)).astype(np.float32)
        out = served.run(rows)
        assert out["embedding"].shape == (3, 16)
        assert np.allclose(np.linalg.norm(out["embedding"], axis=1), 1, atol=1e-4)
        # /model links the run's page in this server's UI (the page at /ui shows the link)
        assert served.describe()["run_url"] == (f"{url.rstrip('/')}/#/experiments/"
                                                f"{exp['experiment_id']}/runs/{version['run_id']}")


@pytest.mark.slow
def test_a_postgresql_backed_tracking_server_trains_registers_exports_and_serves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not POSTGRES:
        pytest.skip("set ZOO_TEST_POSTGRES_URI to run against a PostgreSQL backend store "
                    "(make test starts a throwaway one where PostgreSQL is installed)")
    import mlflow

    from serving.model.served import ServedModel
    from mlflow_source.fetch import fetch_bundle
    from serving.settings import ServeSettings
    from training.config import TrainConfig
    from training.pipeline.export import ExportConfig, export_model
    from training.pipeline.run import train
    from training.tracking.registration import register_best, runs_of_experiment

    store = _fresh_database(POSTGRES)
    with mlflow_process("server", "--backend-store-uri", store, "--artifacts-destination",
                        str(tmp_path / "server-artifacts"), "--workers", "1") as url:
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.chdir(tmp_path)
        mlflow.set_tracking_uri(url)
        try:
            result = train(TrainConfig.of(model="residual_mlp", loss="arcface", data="emitters",
                                          epochs=1, embedding_dim=16, plots=False,
                                          experiment="pg-store"))
            registered = register_best(runs_of_experiment("pg-store"), "test_precision_at_1")
            export_model(ExportConfig(model_uri="models:/zoo-emitters@champion", formats="onnx",
                                      time_runtimes=False))
            version = mlflow.MlflowClient().get_model_version_by_alias("zoo-emitters",
                                                                       "champion")
            bundle = fetch_bundle("models:/zoo-emitters@champion", tmp_path / "cache")
        finally:
            mlflow.set_tracking_uri(None)  # (which also unsets MLFLOW_TRACKING_URI)
        assert registered.champion_moved and version.run_id == result.run_id
        assert version.tags[names.EXPORTED_TAG] == "true" and bundle.info.run_id == result.run_id
        assert not (tmp_path / "mlruns").exists()  # everything went to the server
        served = ServedModel(bundle, ServeSettings(threads=1, workers=1))
        rows = np.random.default_rng(0).normal(size=(3, 12)).astype(np.float32)
        assert served.run(rows)["embedding"].shape == (3, 16)
    # the runs, the version and its tags are rows of that PostgreSQL database
    import psycopg

    with psycopg.connect(store) as connection:
        tags = dict(connection.execute(
            "SELECT key, value FROM model_version_tags WHERE name = 'zoo-emitters'").fetchall())
    assert tags[names.EXPORTED_TAG] == "true"
