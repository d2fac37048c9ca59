"""Beyond one machine: a 2 x 2 sweep as Ray tasks against a real ``mlflow server`` over HTTP,
registered and exported there, and served from there.

The server's backend store is SQLite by default; with ``ZOO_TEST_POSTGRES_URI`` set
(``postgresql://user:password@host:port/database``, an empty database) the same test runs
against a server on that PostgreSQL store too.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from support.mlflow_process import mlflow_process

POSTGRES = os.environ.get("ZOO_TEST_POSTGRES_URI", "")


def _backend_store(kind: str, tmp_path: Path) -> str:
    if kind == "postgres":
        if not POSTGRES:
            pytest.skip("set ZOO_TEST_POSTGRES_URI to run against a PostgreSQL backend store")
        return POSTGRES
    return f"sqlite:///{tmp_path / 'server.db'}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_ray_sweep_registers_exports_and_serves_through_a_tracking_server(
        kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _backend_store(kind, tmp_path)
    with mlflow_process("server", "--backend-store-uri", store, "--artifacts-destination",
                        str(tmp_path / "server-artifacts"), "--workers", "1") as url:
        env = {**os.environ, "MLFLOW_TRACKING_URI": url, "OMP_NUM_THREADS": "1"}
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "RAY_ADDRESS"):
            env.pop(var, None)
        proc = subprocess.run(
            [sys.executable, "-m", "training.commands.sweep", "--backend", "ray", "--data", "emitters",
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
        [parent] = [r for r, t in zip(runs, tags) if t.get("zoo.sweep") == "parent"]
        parent_id = parent["info"]["run_id"]
        children = [r for r, t in zip(runs, tags) if t.get("mlflow.parentRunId") == parent_id]
        assert len(children) == 2
        assert all(c["info"]["status"] == "FINISHED" for c in children)
        assert {(t["zoo.model"], t["zoo.loss"]) for t in tags if "zoo.model" in t
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
        assert {"key": "zoo.exported", "value": "true"} in version.get("tags", [])

        # the serving side loads the exported champion from the same server
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        from serving.bundle import fetch_bundle
        from serving.engine import ServedModel
        from serving.settings import ServeSettings

        bundle = fetch_bundle("models:/zoo-emitters@champion", tmp_path / "cache")
        assert bundle.info.run_id == version["run_id"]
        served = ServedModel(bundle, ServeSettings(threads=1, workers=1))
        rows = np.random.default_rng(0).normal(size=(3, 12)).astype(np.float32)
        out = served.run(rows)
        assert out["embedding"].shape == (3, 16)
        assert np.allclose(np.linalg.norm(out["embedding"], axis=1), 1, atol=1e-4)
