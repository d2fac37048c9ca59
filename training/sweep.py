"""``python -m training.sweep``: every model × loss as nested runs of one parent run.

The parent logs a comparison table (CSV, Markdown), a models × losses heatmap and two
baselines computed on the same split (raw pixels and PCA), then registers the best child
(``zoo-<dataset>@champion``) and the best of each loss (``@<loss>-best``), and exports the
champion to ONNX, TorchScript and ``.pt2`` with a parity check (``training.export``). A failing
combination is recorded and the sweep goes on; ``resume=<parent run id>`` runs only what is
missing or failed.
"""
from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mlflow
import torch
from tqdm.auto import tqdm

from training import baselines, compare
from training.cli import run_cli
from training.config import TrainConfig, _f
from training.export import ExportConfig, export_model
from training.export_logging import EXPORTED_TAG
from training.registration import CHAMPION, RegistrationResult, register_best, runs_of_sweep
from training.run import RunResult, check_names, config_splits, dataset_name, load_config_data, train
from training.tracking import configure_tracking, log_params_once, training_run
from zoo.data import LoadedData
from zoo.losses import LOSSES
from zoo.models import CURATED_IMAGE_MODELS, models_for

log = logging.getLogger(__name__)

SWEEP_TAG = "zoo.sweep"


@dataclass
class SweepConfig(TrainConfig):
    """A grid of model × loss runs; every ``TrainConfig`` field is passed to each run."""

    epochs: int = _f(5, "training epochs of each combination")
    models: str = _f("all", "comma list of models (all: the curated image models, or the "
                            "tabular encoders on tabular data)")
    losses: str = _f("all", "comma list of losses (all: every loss in the catalogue)")
    metric: str = _f("test_precision_at_1", "metric that ranks the combinations")
    workers: int = _f(2, "combinations trained at once, each in its own process with its "
                         "share of the cores (2 measured faster than 1 on 2 cores)")
    resume: Optional[str] = _f(None, "parent run id of a sweep to complete (auto: a new sweep)")
    force: bool = _f(False, "move the champion alias even to a worse model")
    register: bool = _f(True, "register the best child in the model registry")
    export: bool = _f(True, "export the champion to ONNX, TorchScript and .pt2 with a parity "
                            "check (when registering)")

    #: TrainConfig fields a sweep sets per child rather than taking from the user.
    PER_CHILD = ("model", "loss")

    def grid(self, data_kind: str) -> list[tuple[str, str]]:
        """The (model, loss) combinations, models outermost."""
        models = _names(self.models, default=list(CURATED_IMAGE_MODELS) if data_kind == "image"
                        else models_for(data_kind))
        losses = _names(self.losses, default=LOSSES.names())
        return [(m, l) for m in models for l in losses]

    def child(self, model: str, loss: str) -> TrainConfig:
        """The TrainConfig of one combination."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{**fields, "model": model, "loss": loss})

    def sweep_params(self) -> dict[str, str]:
        return {k: v for k, v in self.to_params().items() if k not in self.PER_CHILD}


def _names(spec: str, default: list[str]) -> list[str]:
    if spec.strip().lower() in ("", "all"):
        return list(default)
    return [s.strip() for s in spec.split(",") if s.strip()]


@dataclass
class Outcome:
    """One combination's result (or error)."""

    model: str
    loss: str
    run_id: str | None
    metrics: dict[str, float]
    error: str | None = None


def run_sweep(cfg: SweepConfig) -> list[Outcome]:
    """Train the grid, compare, register; returns every combination's outcome."""
    configure_tracking()
    name = dataset_name(cfg.data)
    data = load_config_data(cfg)
    grid = cfg.grid(data.kind)
    for model, loss in grid:
        check_names(cfg.child(model, loss))
    tags = {SWEEP_TAG: "parent", "zoo.dataset": name, "zoo.metric": cfg.metric}
    with training_run(f"sweep-{name}", cfg.experiment or f"zoo-{name}", tags,
                      run_id=cfg.resume) as parent:
        parent_id = parent.info.run_id
        _note_resume(cfg)
        log_params_once({**cfg.sweep_params(), "grid_size": str(len(grid))} if not cfg.resume
                        else {"grid_size": str(len(grid))})
        done = _finished_children(parent_id) if cfg.resume else {}
        todo = [(m, l) for m, l in grid if (m, l) not in done]
        log.info("sweep %s: %d combinations on %s, %d already finished, %d to train, %d worker(s)",
                 parent_id, len(grid), name, len(done), len(todo), cfg.workers)
        outcomes = list(done.values()) + _train_all(cfg, todo, parent_id, data)
        rows = [_row(o) for o in outcomes] + _baseline_rows(cfg, data)
        _log_comparison(rows, cfg.metric)
        failed = [o for o in outcomes if o.error]
        mlflow.log_metrics({"combinations_finished": float(len(outcomes) - len(failed)),
                            "combinations_failed": float(len(failed))})
        print(f"\nsweep {parent_id} on {name}, ranked by {cfg.metric}:\n")
        print(compare.format_table(compare.comparison_table(rows, cfg.metric)))
        if cfg.register and len(failed) < len(outcomes):
            result = register_best(runs_of_sweep(parent_id), cfg.metric, force=cfg.force)
            print("\n" + result.summary())
            if cfg.export:
                _export_champion(result, data)
        if failed:
            print(f"\n{len(failed)} of {len(outcomes)} combinations failed:")
            for o in failed:
                print(f"  {o.model}-{o.loss}: {o.error}")
            print(f"re-run only those with: mlflow run . -e sweep -P resume={parent_id}")
        if outcomes and len(failed) == len(outcomes):
            raise RuntimeError(f"every combination failed (first: {failed[0].error})")
        return outcomes


def _export_champion(result: RegistrationResult, data: LoadedData) -> None:
    """Export the champion unless it is an earlier, already exported version.

    A champion that moved was trained in this sweep, so its parity check reuses the loaded
    data; an older one is checked on its own run's data.
    """
    version = mlflow.MlflowClient().get_model_version(result.name, result.champion_version)
    if not result.champion_moved and (version.tags or {}).get(EXPORTED_TAG) == "true":
        log.info("champion %s v%s is already exported", result.name, version.version)
        return
    print()
    export_model(ExportConfig(model_uri=f"models:/{result.name}@{CHAMPION}"),
                 data=data if result.champion_moved else None)


def _note_resume(cfg: SweepConfig) -> None:
    """Under ``mlflow run`` with resume, the run mlflow made stays empty: say where the work went."""
    own = os.environ.get("MLFLOW_RUN_ID")
    if cfg.resume and own and own != cfg.resume:
        mlflow.MlflowClient().set_tag(own, "zoo.resumed", cfg.resume)


def _finished_children(parent_id: str) -> dict[tuple[str, str], Outcome]:
    """FINISHED children of a sweep, by (model, loss): they are not trained again."""
    done: dict[tuple[str, str], Outcome] = {}
    try:
        children = runs_of_sweep(parent_id)
    except ValueError:  # stopped before its first child: nothing to skip
        return done
    for run in children:
        model, loss = run.data.tags.get("zoo.model"), run.data.tags.get("zoo.loss")
        if run.info.status == "FINISHED" and model and loss:
            done[(model, loss)] = Outcome(model, loss, run.info.run_id, dict(run.data.metrics))
    return done


def _train_all(cfg: SweepConfig, todo: list[tuple[str, str]], parent_id: str,
               data: LoadedData) -> list[Outcome]:
    """Train the combinations in this process (workers=1) or in a pool of processes."""
    if not todo:
        return []
    bar = tqdm(total=len(todo), desc="sweep", unit="run", position=0, dynamic_ncols=True)
    outcomes: list[Outcome] = []
    started = time.perf_counter()

    def done(outcome: Outcome) -> None:
        outcomes.append(outcome)
        bar.update(1)
        status = "failed" if outcome.error else f"{cfg.metric}={outcome.metrics.get(cfg.metric, float('nan')):.4f}"
        bar.write(f"[{len(outcomes)}/{len(todo)}] {outcome.model}-{outcome.loss}: {status} "
                  f"({time.perf_counter() - started:.0f}s elapsed)")

    if cfg.workers <= 1:
        for model, loss in todo:
            bar.set_postfix_str(f"{model}-{loss}")
            done(_train_one(cfg.child(model, loss), parent_id, data))
    else:
        threads = max(1, (os.cpu_count() or 1) // cfg.workers)
        context = multiprocessing.get_context("spawn")  # no forked torch/MLflow state
        with futures.ProcessPoolExecutor(cfg.workers, mp_context=context,
                                         initializer=_init_worker, initargs=(threads,)) as pool:
            jobs = [pool.submit(_train_one, cfg.child(m, l), parent_id, None) for m, l in todo]
            for job in futures.as_completed(jobs):
                done(job.result())
    bar.close()
    return outcomes


def _init_worker(threads: int) -> None:
    """Each worker gets its share of the cores and no inherited ``mlflow run`` run id."""
    os.environ.pop("MLFLOW_RUN_ID", None)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)


def _train_one(cfg: TrainConfig, parent_id: str, data: LoadedData | None) -> Outcome:
    """One child run; an error is recorded (the run is already FAILED), not raised."""
    try:
        result: RunResult = train(cfg, parent_run_id=parent_id, data=data,
                                  tags={SWEEP_TAG: parent_id})
        return Outcome(cfg.model, cfg.loss, result.run_id, result.metrics)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - one failure must not stop the sweep
        log.warning("%s-%s failed: %s", cfg.model, cfg.loss, exc)
        run = mlflow.last_active_run()
        return Outcome(cfg.model, cfg.loss, run.info.run_id if run else None, {},
                       error=f"{type(exc).__name__}: {exc}".splitlines()[0])


def _row(o: Outcome) -> compare.Row:
    return compare.Row(model=o.model, loss=o.loss, status="FAILED" if o.error else "FINISHED",
                       metrics=o.metrics, run_id=o.run_id, error=o.error)


def _baseline_rows(cfg: SweepConfig, data: LoadedData) -> list[compare.Row]:
    """Pixels and PCA on the children's split, logged on the parent as ``baseline_*``."""
    splits = config_splits(cfg, data)
    rows = []
    for name in baselines.BASELINES:
        metrics = baselines.baseline_metrics(splits, name)
        mlflow.log_metrics({f"baseline_{name}_{k}": v for k, v in metrics.items()
                            if v == v})  # NaN-free
        rows.append(compare.Row(model=name, loss="-", status="baseline", metrics=metrics))
    return rows


def _log_comparison(rows: list[compare.Row], metric: str) -> None:
    table = compare.comparison_table(rows, metric)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        compare.write_tables(table, folder)
        compare.plot_heatmap(rows, metric, folder / "heatmap.png")
        mlflow.log_artifacts(str(folder), artifact_path="comparison")


def main(argv: list[str] | None = None) -> int:
    return run_cli(run_sweep, SweepConfig, argv)


if __name__ == "__main__":
    sys.exit(main())
