"""The embedded SQLite store under several writers at once: nothing is lost, nothing fails."""
from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import mlflow

WORKERS, STEPS = 4, 250


def _log_hard(uri: str, worker: int) -> str:
    """A sweep worker's life at a high rate: open the (new) store, make the experiment and a
    run, log metrics one by one and in batches, read them back, set tags, finish."""
    os.environ["MLFLOW_TRACKING_URI"] = uri
    from training.tracking.store import configure_tracking, ensure_experiment

    configure_tracking()
    client = mlflow.MlflowClient()
    run = client.create_run(ensure_experiment("stress"), run_name=f"worker-{worker}")
    run_id = run.info.run_id
    for step in range(STEPS):
        client.log_metric(run_id, "loss", float(step), step=step)
        if step % 10 == 0:
            client.log_batch(run_id, metrics=[
                mlflow.entities.Metric(f"part_{k}", float(step + k), 0, step) for k in range(5)])
            client.set_tag(run_id, f"tag_{step}", str(worker))
            client.get_metric_history(run_id, "loss")
    client.set_terminated(run_id)
    return run_id


def test_four_workers_on_a_new_store_lose_no_metric_point(tmp_path: Path) -> None:
    """Without the store's preparation, 4 processes opening a new SQLite store at once fail
    in MLflow's schema migration ('table _alembic_tmp_metrics already exists')."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    with multiprocessing.get_context("spawn").Pool(WORKERS) as pool:
        run_ids = pool.starmap(_log_hard, [(uri, w) for w in range(WORKERS)])
    client = mlflow.MlflowClient(uri)
    assert len(set(run_ids)) == WORKERS
    for run_id in run_ids:
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run_id, "loss")
        assert sorted(m.step for m in history) == list(range(STEPS))
        for k in range(5):
            assert len(client.get_metric_history(run_id, f"part_{k}")) == STEPS // 10
        assert sum(key.startswith("tag_") for key in run.data.tags) == STEPS // 10
