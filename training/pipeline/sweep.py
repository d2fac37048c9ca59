"""Every model × loss as nested runs of one parent run.

The parent logs a comparison table (CSV, Markdown), a models × losses heatmap and two
baselines computed on the same split (raw pixels and PCA), then registers the best child
(``zoo-<dataset>@champion``) and the best of each loss (``@<loss>-best``), and exports the
champion to ONNX, TorchScript and ``.pt2`` with a parity check (``training.pipeline.export``).
A failing combination is recorded and the sweep goes on; ``resume=<parent run id>`` runs only
what is missing or failed, with every parameter read from the parent run (``sweep_config``);
a resume that asks for other values than the parent's is refused (``check_resume``).

The command is ``python -m training.commands.sweep`` (the MLproject ``sweep``).
"""
from __future__ import annotations

import concurrent.futures as futures
import logging
import multiprocessing
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import mlflow
import torch
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from tqdm.auto import tqdm

from training.config import (FlatParams, TrainConfig, one_process_per_run, option,
                             params_of, part)
from training.pipeline import baselines, compare
from training.pipeline.export import ExportConfig, export_model
from training.pipeline.run import (RunResult, check_names, config_splits, dataset_name,
                                   load_config_data, train)
from training.pipeline.transfer import InitSource, architecture_conflicts, resolve_init
from training.tracking.probe import log_probe
from training.tracking.registration import (CHAMPION, DEFAULT_METRIC, RegistrationResult,
                                            metric_for, register_best, runs_of_sweep,
                                            selection_note)
from training.tracking.store import configure_tracking, log_params_once, training_run
from zoo import names
from zoo.data import LoadedData
from zoo.losses import LOSSES, needed_outputs
from zoo.models import CURATED_IMAGE_MODELS, models_for, training_outputs
from zoo.values import format_value, parse_value, unquote

log = logging.getLogger(__name__)



@dataclass
class SweepConfig(FlatParams):
    """A grid of model × loss runs: every training parameter (``train``) is each run's, but
    the model and loss, which each child sets."""

    WHAT = "sweep"
    #: Set per child, so not parameters of the sweep.
    PER_CHILD = ("model", "loss")

    train: TrainConfig = part(TrainConfig, hidden=PER_CHILD, epochs=5)
    models: str = option("all", "comma list of models (all: the curated image models, or the "
                            "tabular encoders on tabular data)")
    losses: str = option("all", "comma list of losses (all: every loss in the catalogue)")
    metric: str = option("auto", "metric that ranks the combinations and picks the champion (auto: "
                             "the monitor at each run's kept epoch, best_val_map_at_r by "
                             "default; without a validation split its test counterpart, and "
                             "the table says selection used test)")
    workers: int = option(2, "combinations trained at once, each in its own process with its "
                         "share of the cores (2 measured faster than 1 on 2 cores)")
    backend: str = option("local", "where the combinations train: local (worker processes on this "
                               "machine) or ray (Ray tasks: a local Ray instance, or the cluster "
                               "at RAY_ADDRESS)", ("local", "ray"))
    task_cpus: int = option(0, "backend=ray: CPUs each task asks for (0: this machine's cores / "
                           "workers)")
    task_gpus: float = option(0.0, "backend=ray: GPUs each task asks for (e.g. 1 on a GPU cluster)")
    resume: Optional[str] = option(None, "parent run id of a sweep to complete (auto: a new sweep)")
    force: bool = option(False, "move the champion alias even to a worse model")
    register: bool = option(True, "register the best child in the model registry")
    export: bool = option(True, "export the champion to ONNX, TorchScript and .pt2 with a parity "
                            "check (when registering)")
    seeds: Optional[str] = option(None, "comma list of split seeds: each combination is trained "
                                  "once per seed and the table shows mean ± std over them "
                                  "(auto: just seed)")

    def __post_init__(self) -> None:
        one_process_per_run(self.train, "a sweep trains `workers` combinations at once, one "
                                        "process each")

    def combinations(self, data_kind: str, init: InitSource | None = None
                     ) -> list[tuple[str, str]]:
        """The (model, loss) combinations, models outermost; those that cannot train together
        (a reconstruction loss on a model that does not reconstruct) are left out, and with
        ``losses=all`` the autoencoders train with the reconstruction losses only. With an
        ``init`` model, ``models=all`` is that model's; other models named are refused."""
        models = _names(self.models, default=list(CURATED_IMAGE_MODELS) if data_kind == "image"
                        else models_for(data_kind))
        if init is not None:
            models = _init_models(self.models, models, init)
        losses = _names(self.losses, default=LOSSES.names())
        grid, skipped = [], []
        for model in models:
            for loss in losses:
                provided, needed = training_outputs(model), needed_outputs(loss)
                if provided and not needed and self.losses.strip().lower() in ("", "all"):
                    continue  # by default an autoencoder trains with its own losses only
                (grid if needed <= provided else skipped).append((model, loss))
        if skipped:
            log.info("left out %d combination(s) of a reconstruction loss with a model that "
                     "does not give what it reads: %s", len(skipped),
                     ", ".join(f"{m}-{loss}" for m, loss in skipped))
        if not grid:
            raise ValueError(f"no model of {models} can train with any loss of {losses}: "
                             "elbo needs vae, sparse_recon vae or sae")
        return grid

    @property
    def ranking_metric(self) -> str:
        """What ``metric`` ranks by (``auto`` resolved from the monitor and the split)."""
        if self.metric.strip().lower() in ("", DEFAULT_METRIC):
            return metric_for(self.train.optim.monitor, self.train.data.val_fraction > 0)
        return self.metric

    def seed_list(self) -> list[int]:
        """The split seeds every combination is trained on."""
        if not (self.seeds or "").strip():
            return [self.train.data.seed]
        try:
            seeds = [int(s) for s in self.seeds.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"seeds={self.seeds!r} is not a comma list of integers") from None
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds={self.seeds!r} repeats a seed")
        return seeds

    def jobs(self, data_kind: str, init: InitSource | None = None) -> list[Job]:
        """Every (model, loss, seed) to train: the grid, once per seed."""
        return [Job(m, loss, s) for m, loss in self.combinations(data_kind, init)
                for s in self.seed_list()]

    def child(self, model: str, loss: str, seed: int | None = None) -> TrainConfig:
        """The TrainConfig of one combination (on one seed)."""
        return self.train.replace(model=model, loss=loss,
                                  seed=self.train.data.seed if seed is None else seed)

    def sweep_params(self) -> dict[str, str]:
        return self.to_params()


#: What a resume may set anew: how the combinations run, never what they are.
RESUME_MAY_CHANGE = ("resume", "workers", "backend", "task_cpus", "task_gpus", "device",
                     "num_threads", "loader_workers")


def parent_run(run_id: str) -> Run:
    """The parent run of the sweep ``resume`` names; an error that says what it is else."""
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException as exc:
        raise ValueError(f"resume={run_id}: no such run in {mlflow.get_tracking_uri()} "
                         f"({exc.message})") from None
    if run.data.tags.get(names.SWEEP_TAG) != "parent":
        raise ValueError(f"resume={run_id} is not a sweep's parent run (tag "
                         f"{names.SWEEP_TAG}=parent); a single run resumes with -e train -P "
                         "resume_run=<run id>")
    return run


def parent_config(run: Run) -> SweepConfig:
    """The sweep ``run`` is the parent of, from its parameters (``mlflow run``'s quotes
    undone, ``zoo.resolved.<param>`` where it logged ``auto``, its preset applied as it was;
    a parameter added since takes its default)."""
    known = {p.name for p in params_of(SweepConfig)}
    values = {k: unquote(v) for k, v in run.data.params.items()}
    values.update({k[len(names.RESOLVED_PREFIX):]: v for k, v in run.data.tags.items()
                   if k.startswith(names.RESOLVED_PREFIX)})
    values = {k: v for k, v in values.items() if k in known}
    return SweepConfig.from_dict({**values, "resume": run.info.run_id})


def sweep_config(values: dict[str, Any]) -> SweepConfig:
    """The sweep a command line asks for. With ``resume``, the sweep it resumes: every
    parameter read from its parent run, the given ones on top (``run_sweep`` refuses those
    that differ from the parent's)."""
    resume = parse_value(Optional[str], values.get("resume"), "resume")
    if not resume:
        return SweepConfig.from_dict(values)
    configure_tracking()
    return parent_config(parent_run(resume)).replace(**values)


def check_resume(cfg: SweepConfig, parent: Run) -> None:
    """Refuse a resume that asks for another sweep than the one it resumes (its grid,
    epochs, data or any other parameter but ``RESUME_MAY_CHANGE``), naming both values."""
    theirs = parent_config(parent)
    differ = [p.name for p in params_of(SweepConfig) if p.name not in RESUME_MAY_CHANGE
              and _comparable(cfg.param(p.name)) != _comparable(theirs.param(p.name))]
    if differ:
        was = "; ".join(f"{n}={format_value(theirs.param(n))}" for n in differ)
        now = "; ".join(f"{n}={format_value(cfg.param(n))}" for n in differ)
        raise ValueError(f"resume={parent.info.run_id} is the sweep of {was}, not {now}: a "
                         "resume takes every parameter from the sweep it resumes (only "
                         f"{', '.join(RESUME_MAY_CHANGE[1:])} may change): leave "
                         f"{'it' if len(differ) == 1 else 'them'} out, or start a new sweep")


def _comparable(value: Any) -> Any:
    """Comma lists compare without the spaces around their commas."""
    return ",".join(s.strip() for s in value.split(",")) if isinstance(value, str) else value


def _init_models(spec: str, models: list[str], init: InitSource) -> list[str]:
    """The models a sweep from ``init`` trains: the init model's own architecture. Each
    other model named is refused with one line; none left is an error."""
    own = init.config.model.name
    if spec.strip().lower() in ("", "all"):
        return [own]
    for model in models:
        if model != own:
            line = (f"{model}: refused: init={init.uri} is a {own} model, whose weights "
                    f"{model} cannot start from")
            print(line)
    if own not in models:
        raise ValueError(f"none of models={spec} can start from init={init.uri}, a {own} model: "
                         f"use models={own} (or all)")
    return [own]


def _names(spec: str, default: list[str]) -> list[str]:
    if spec.strip().lower() in ("", "all"):
        return list(default)
    return [s.strip() for s in spec.split(",") if s.strip()]


@dataclass(frozen=True)
class Job:
    """One child run of a sweep: a model × loss combination on one split seed."""

    model: str
    loss: str
    seed: int

    def __str__(self) -> str:
        return f"{self.model}-{self.loss}"


@dataclass
class Outcome:
    """One child's result (or error)."""

    job: Job
    run_id: str | None
    metrics: dict[str, float]
    error: str | None = None

    @property
    def model(self) -> str:
        return self.job.model

    @property
    def loss(self) -> str:
        return self.job.loss


def run_sweep(cfg: SweepConfig) -> list[Outcome]:
    """Train the grid, compare, register; returns every combination's outcome."""
    configure_tracking()
    if cfg.resume:
        check_resume(cfg, parent_run(cfg.resume))
    name = dataset_name(cfg.train.data.source)
    init = resolve_init(cfg.train.model.init) if cfg.train.model.init else None
    if init is not None:
        conflicts = [c for c in architecture_conflicts(cfg.train, init)
                     if not c.startswith("model=")]
        if conflicts:
            raise ValueError(f"init={cfg.train.model.init} is a {init.config.model.name} model; "
                             f"its sweep cannot train with {', '.join(conflicts)}: "
                             "leave those unset")
    data = load_config_data(cfg.train)
    jobs = cfg.jobs(data.kind, init)
    for model, loss in dict.fromkeys((job.model, job.loss) for job in jobs):
        check_names(cfg.child(model, loss))
    several_seeds = len(cfg.seed_list()) > 1
    tags = {names.SWEEP_TAG: "parent", names.DATASET_TAG: name,
            names.METRIC_TAG: cfg.ranking_metric}
    started: dict[str, str] = {}
    try:
        return _sweep_in_run(cfg, name, data, jobs, several_seeds, tags, started)
    except KeyboardInterrupt as exc:
        if "parent" not in started:
            raise
        raise SweepInterrupted(started["parent"], exc) from None


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a sweep: the parent and the running children are KILLED."""

    def __init__(self, parent_id: str, cause: KeyboardInterrupt) -> None:
        self.exit_code = getattr(cause, "exit_code", 130)
        super().__init__(f"interrupted: sweep {parent_id} is KILLED; its finished runs and the "
                         "checkpoints of the stopped ones are kept; resume it with: mlflow run . "
                         f"-e sweep --env-manager local -P resume={parent_id}")


def _sweep_in_run(cfg: SweepConfig, name: str, data: LoadedData, jobs: list[Job],
                  several_seeds: bool, tags: dict[str, str],
                  started: dict[str, str]) -> list[Outcome]:
    with training_run(f"sweep-{name}", cfg.train.tracking.experiment or f"zoo-{name}", tags,
                      run_id=cfg.resume) as parent:
        parent_id = parent.info.run_id
        started["parent"] = parent_id
        _note_resume(cfg)
        log_params_once({**cfg.sweep_params(), "grid_size": str(len(jobs))} if not cfg.resume
                        else {"grid_size": str(len(jobs))})
        if not cfg.resume:
            log_probe(data)  # what the data looks like, for `-e recommend` on new data
        done, stopped = _children_by_job(parent_id) if cfg.resume else ({}, {})
        todo = [job for job in jobs if job not in done]
        if stopped:
            log.info("%d stopped run(s) continue from their checkpoints", len(stopped))
        log.info("sweep %s: %d runs on %s, %d already finished, %d to train, %d worker(s)",
                 parent_id, len(jobs), name, len(done), len(todo), cfg.workers)
        outcomes = list(done.values()) + _train_all(cfg, todo, parent_id, data, several_seeds,
                                                    stopped)
        runs = [_row(o) for o in outcomes]
        baseline_rows = _baseline_rows(cfg, data)
        rows = compare.mean_over_seeds(runs) + baseline_rows
        metric = cfg.ranking_metric
        _log_comparison(rows, runs + baseline_rows, metric)
        failed = [o for o in outcomes if o.error]
        mlflow.log_metrics({"combinations_finished": float(len(outcomes) - len(failed)),
                            "combinations_failed": float(len(failed))})
        over = f" (mean ± std over seeds {cfg.seeds})" if several_seeds else ""
        print(f"\nsweep {parent_id} on {name}, ranked by {metric}{over} "
              f"({selection_note(metric)}):\n")
        print(compare.format_table(compare.comparison_table(rows, metric)))
        if cfg.register and len(failed) < len(outcomes):
            result = register_best(runs_of_sweep(parent_id), metric, force=cfg.force)
            print("\n" + result.summary())
            if cfg.export:
                _export_champion(result, None if several_seeds else data)
        if failed:
            print(f"\n{len(failed)} of {len(outcomes)} combinations failed:")
            for o in failed:
                print(f"  {_label(o.job, several_seeds)}: {o.error}")
            print("re-run only those with: mlflow run . -e sweep --env-manager local -P "
                  f"resume={parent_id}")
        if outcomes and len(failed) == len(outcomes):
            raise RuntimeError(f"every combination failed (first: {failed[0].error})")
        return outcomes


def _export_champion(result: RegistrationResult, data: LoadedData | None) -> None:
    """Export the champion unless it is an earlier, already exported version.

    A champion that moved was trained in this sweep, so its parity check reuses the loaded
    data (``data``; None when the sweep ran several seeds, whose data may differ); an older
    one is checked on its own run's data.
    """
    version = mlflow.MlflowClient().get_model_version(result.name, result.champion_version)
    if not result.champion_moved and (version.tags or {}).get(names.EXPORTED_TAG) == "true":
        log.info("champion %s v%s is already exported", result.name, version.version)
        return
    print()
    export_model(ExportConfig(model_uri=f"models:/{result.name}@{CHAMPION}"),
                 data=data if result.champion_moved else None)


def _note_resume(cfg: SweepConfig) -> None:
    """Under ``mlflow run`` with resume, the run mlflow made stays empty: say where the work
    went."""
    own = os.environ.get("MLFLOW_RUN_ID")
    if cfg.resume and own and own != cfg.resume:
        mlflow.MlflowClient().set_tag(own, names.RESUMED_TAG, cfg.resume)


def _children_by_job(parent_id: str) -> tuple[dict[Job, Outcome], dict[Job, str]]:
    """A sweep's FINISHED children by (model, loss, seed), which are not trained again, and
    the stopped ones (KILLED, or left RUNNING by a killed process) that have a checkpoint,
    which continue from it."""
    done: dict[Job, Outcome] = {}
    stopped: dict[Job, str] = {}
    try:
        children = runs_of_sweep(parent_id)
    except ValueError:  # stopped before its first child: nothing to skip
        return done, stopped
    client = mlflow.MlflowClient()
    for run in sorted(children, key=lambda r: r.info.start_time or 0):
        model, loss = run.data.tags.get(names.MODEL_TAG), run.data.tags.get(names.LOSS_TAG)
        seed = run.data.params.get("seed")
        if not (model and loss and seed is not None):
            continue
        job = Job(model, loss, int(float(seed)))
        if run.info.status == "FINISHED":
            done[job] = Outcome(job, run.info.run_id, dict(run.data.metrics))
        elif run.info.status in ("KILLED", "RUNNING") and client.list_artifacts(
                run.info.run_id, names.CHECKPOINT_DIR):
            stopped[job] = run.info.run_id
    return done, {job: run_id for job, run_id in stopped.items() if job not in done}


def _label(job: Job, several_seeds: bool) -> str:
    """A child's run name: ``<model>-<loss>``, with ``-seed<N>`` when there are several."""
    return f"{job}-seed{job.seed}" if several_seeds else str(job)


def _train_all(cfg: SweepConfig, todo: list[Job], parent_id: str, data: LoadedData,
               several_seeds: bool, stopped: dict[Job, str]) -> list[Outcome]:
    """Train the combinations in this process (workers=1) or in a pool of processes."""
    if not todo:
        return []
    bar = tqdm(total=len(todo), desc="sweep", unit="run", position=0, dynamic_ncols=True)
    outcomes: list[Outcome] = []
    started = time.perf_counter()

    def done(outcome: Outcome) -> None:
        outcomes.append(outcome)
        bar.update(1)
        metric = cfg.ranking_metric
        status = ("failed" if outcome.error
                  else f"{metric}={outcome.metrics.get(metric, float('nan')):.4f}")
        bar.write(f"[{len(outcomes)}/{len(todo)}] {_label(outcome.job, several_seeds)}: {status} "
                  f"({time.perf_counter() - started:.0f}s elapsed)")

    if cfg.backend == "ray":
        _train_on_ray(cfg, todo, parent_id, several_seeds, stopped, done)
    elif cfg.workers <= 1:
        for job in todo:
            bar.set_postfix_str(_label(job, several_seeds))
            done(_train_one(cfg, job, parent_id, several_seeds,
                            data if job.seed == cfg.train.data.seed else None, stopped.get(job)))
    else:
        threads = max(1, (os.cpu_count() or 1) // cfg.workers)
        context = multiprocessing.get_context("spawn")  # no forked torch/MLflow state
        with futures.ProcessPoolExecutor(cfg.workers, mp_context=context,
                                         initializer=_init_worker, initargs=(threads,)) as pool:
            running = [pool.submit(_train_one, cfg, job, parent_id, several_seeds, None,
                                   stopped.get(job)) for job in todo]
            for future in futures.as_completed(running):
                done(future.result())
    bar.close()
    return outcomes


def _train_on_ray(cfg: SweepConfig, todo: list[Job], parent_id: str, several_seeds: bool,
                  stopped: dict[Job, str], done: Callable[[Outcome], None]) -> None:
    """Each combination as a Ray task (on the Ray instance at ``RAY_ADDRESS``, else a local
    one started for the sweep); every task logs its child run to this sweep's tracking URI."""
    import ray

    uri = mlflow.get_tracking_uri()
    address = os.environ.get("RAY_ADDRESS") or None
    if address and uri.startswith("sqlite"):
        log.warning("Ray tasks on other machines cannot write to the embedded store %s: set "
                    "MLFLOW_TRACKING_URI to a tracking server (README: scaling out)", uri)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    cpus = cfg.task_cpus or max(1, (os.cpu_count() or 1) // max(1, cfg.workers))
    log.info("ray: %s, %d CPU(s)%s per task", ray.cluster_resources(), cpus,
             f" and {cfg.task_gpus:g} GPU(s)" if cfg.task_gpus else "")
    task = ray.remote(num_cpus=cpus, num_gpus=cfg.task_gpus, max_retries=0)(_ray_task)
    here = str(Path.cwd())
    pending = {task.remote(cfg, job, parent_id, several_seeds, stopped.get(job), uri, cpus,
                           here): job for job in todo}
    try:
        while pending:
            [ready], _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready)
            try:
                outcome = ray.get(ready)
            except ray.exceptions.RayError as exc:  # the task's process died (out of memory...)
                outcome = Outcome(job, None, {}, error=f"{type(exc).__name__}: "
                                                       f"{str(exc).splitlines()[0]}")
            done(outcome)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started_here:
            ray.shutdown()


def _ray_task(cfg: SweepConfig, job: Job, parent_id: str, several_seeds: bool,
              resume_run: str | None, tracking_uri: str, threads: int, cwd: str) -> Outcome:
    """One child run in a Ray worker: the sweep's tracking URI, its working directory when
    this machine has it (relative data paths), its share of the cores, no progress bars."""
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    os.environ["TQDM_DISABLE"] = "1"
    if Path(cwd).is_dir():
        os.chdir(cwd)
    mlflow.set_tracking_uri(tracking_uri)
    _init_worker(threads)
    return _train_one(cfg, job, parent_id, several_seeds, None, resume_run)


def _init_worker(threads: int) -> None:
    """Each worker gets its share of the cores and no inherited ``mlflow run`` run id."""
    os.environ.pop("MLFLOW_RUN_ID", None)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)


def _train_one(cfg: SweepConfig, job: Job, parent_id: str, several_seeds: bool,
               data: LoadedData | None, resume_run: str | None = None) -> Outcome:
    """One child run (or the continuation of a stopped one); an error is recorded (the run
    is already FAILED), not raised."""
    child = cfg.child(job.model, job.loss, job.seed)
    if resume_run:
        child.execution.resume_run = resume_run
    try:
        result: RunResult = train(child,
                                  parent_run_id=parent_id, data=data,
                                  run_name=_label(job, several_seeds),
                                  tags={names.SWEEP_TAG: parent_id})
        return Outcome(job, result.run_id, result.metrics)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - one failure must not stop the sweep
        log.warning("%s failed: %s", _label(job, several_seeds), exc)
        run = mlflow.last_active_run()
        return Outcome(job, run.info.run_id if run else None, {},
                       error=f"{type(exc).__name__}: {exc}".splitlines()[0])


def _row(o: Outcome) -> compare.Row:
    return compare.Row(model=o.model, loss=o.loss, status="FAILED" if o.error else "FINISHED",
                       metrics=o.metrics, run_id=o.run_id, error=o.error, seed=o.job.seed)


def _baseline_rows(cfg: SweepConfig, data: LoadedData) -> list[compare.Row]:
    """Pixels and PCA on each seed's split (the children's), averaged over the seeds and
    logged on the parent as ``baseline_<name>_<metric>``."""
    per_seed = []
    for seed in cfg.seed_list():
        child = cfg.child(cfg.train.model.name, cfg.train.loss.name, seed)
        # synthetic sources draw their samples from the seed too
        splits = config_splits(child, data if seed == cfg.train.data.seed
                               else load_config_data(child))
        per_seed += [compare.Row.baseline(name, baselines.baseline_metrics(splits, name), seed)
                     for name in baselines.BASELINES]
    rows = compare.mean_over_seeds(per_seed)
    for row in rows:
        mlflow.log_metrics({f"baseline_{row.model}_{k}": v for k, v in row.metrics.items()
                            if v == v})  # NaN-free
    return rows


def _log_comparison(rows: list[compare.Row], runs: list[compare.Row], metric: str) -> None:
    """The table of ``rows`` (one per combination) and the heatmap of every run."""
    table = compare.comparison_table(rows, metric)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        compare.write_tables(table, folder, note=f"Ranked by {metric}: {selection_note(metric)}.")
        compare.plot_heatmap(runs, metric, folder / names.HEATMAP_PLOT)
        mlflow.log_artifacts(str(folder), artifact_path=names.COMPARISON_DIR)
