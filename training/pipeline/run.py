"""One model × loss run: data → model → fit → test metrics, plots and model in MLflow."""
from __future__ import annotations

import dataclasses
import logging
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from torch import nn

from training.config import TrainConfig, channel_values, comma_list
from training.engine.checkpoint import RECORD_KEY as CHECKPOINT_RECORD_KEY
from training.engine.checkpoint import RunCheckpoints
from training.engine.distributed import World, checksum, current_world, process_group
from training.engine.evaluation import build_head, calibrate_scale, embed
from training.engine.loop import History, fit, pick_device
from training.engine.step import AuxiliaryLoss
from training.pipeline.transfer import InitSource, Start, apply_init, resolve_start
from training.tracking import plots
from training.tracking.model_logging import log_trained_model
from training.tracking.store import configure_tracking, log_params_once, training_run
from zoo import names
from zoo.data import LoadedData, Splits, load_data, split_data
from zoo.faces.chips import FaceReport
from zoo.data.preprocessing import DEFAULT_INTERPOLATION, Preprocessing
from zoo.record import ModelRecord
from zoo.losses import EmbeddingLoss, check_loss, create_loss
from zoo.metrics import confusion_matrix, evaluate
from zoo.models import (MODELS, TIMM_OPTIONS, TIMM_PREFIX, EmbeddingModel, create_model,
                        model_modality, models_for)

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished run produced."""

    run_id: str
    metrics: dict[str, float]
    model_uri: str | None
    history: History


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def dataset_name(data: str) -> str:
    """``digits`` → ``digits``; ``../shared/data/orl_faces`` → ``orl_faces``; ``x.csv`` → ``x``."""
    spec = data.split(":", 1)[1] if data.startswith(("folder:", "csv:")) else data
    path = Path(spec)
    if len(path.parts) > 1 or path.suffix or path.exists():
        return path.resolve().stem if path.suffix else path.resolve().name
    return spec


def load_config_data(cfg: TrainConfig) -> LoadedData:
    """The data set a config names, at its image size, channels and resize filter."""
    return load_data(cfg.data.source, image_size=cfg.data.image_size, channels=cfg.data.channels,
                     seed=cfg.data.seed, label_column=cfg.data.label_column,
                     interpolation=cfg.data.interpolation or DEFAULT_INTERPOLATION,
                     categorical_columns=comma_list(cfg.data.categorical_columns),
                     faces=cfg.data.faces, faces_missing=cfg.data.faces_missing)


def load_recorded_data(cfg: TrainConfig, record: ModelRecord) -> LoadedData:
    """The data set a config names, read as the model's record says its inputs are read (its
    size, channels, resize filter and face stage), as the server reads them; the config says
    where the data is and how it is labelled."""
    pre = record.pre
    image: dict[str, Any] = {}
    if pre.kind == "image":
        height, width = pre.input_size[1:]
        image = dict(image_size=height if height == width else (height, width),
                     channels=pre.channels, interpolation=pre.interpolation,
                     faces=record.faces if record.faces is not None else "none")
    return load_data(cfg.data.source, seed=cfg.data.seed, label_column=cfg.data.label_column,
                     categorical_columns=comma_list(cfg.data.categorical_columns),
                     faces_missing=cfg.data.faces_missing, **image)


def config_splits(cfg: TrainConfig, data: LoadedData, pre: Preprocessing | None = None
                  ) -> Splits:
    """The deterministic split a config names (the same for every run with the same seed),
    normalised by ``pre`` (a trained model's mean, std and table columns) when given, else by
    the config's mean and std when set, else by the training split's."""
    if pre is not None:
        mean, std = pre.mean, pre.std
    else:
        mean, std = channel_values(cfg.data.mean, "mean"), channel_values(cfg.data.std, "std")
    columns = pre.table_columns if pre is not None and pre.columns is not None else None
    return split_data(data, seed=cfg.data.seed, val_fraction=cfg.data.val_fraction,
                      test_fraction=cfg.data.test_fraction, open_set=cfg.data.open_set,
                      mean=mean, std=std, columns=columns)


def check_names(cfg: TrainConfig) -> None:
    """Fail fast on an unknown model or loss, before any data is read."""
    if not cfg.model.name.startswith(TIMM_PREFIX):
        MODELS.get(cfg.model.name)
    check_loss(cfg.loss.name)


def check_modality(cfg: TrainConfig, data: LoadedData) -> None:
    """An image model cannot read rows, nor a tabular model images: say which to use."""
    wanted = model_modality(cfg.model.name)
    if wanted != data.kind:
        raise ValueError(
            f"model {cfg.model.name!r} takes {wanted} data but {cfg.data.source!r} is "
            f"{data.kind} data; "
            f"use one of: {', '.join(models_for(data.kind))}"
        )


#: Builds extra loss terms from the run's splits, model, loss and device (distillation).
AuxFactory = Callable[[Splits, EmbeddingModel, EmbeddingLoss, torch.device], AuxiliaryLoss]


def train(
    cfg: TrainConfig,
    *,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    data: LoadedData | None = None,
    run_name: str | None = None,
    aux: AuxFactory | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    params: dict[str, str] | None = None,
) -> RunResult:
    """Train one model × loss combination and log everything to MLflow.

    With ``parent_run_id`` the run is a nested child of that run (a sweep's combination);
    ``data`` reuses an already loaded data set (it must have been loaded from ``cfg``);
    ``aux`` adds loss terms that need the input batch (a teacher's, when distilling);
    ``on_epoch(epoch, metrics)`` is called after each epoch is logged (a tuner's pruning);
    ``params`` are logged beside the config's (a distillation's teacher and weights).
    ``cfg.execution.resume_run`` continues that run from its last checkpoint, with its own config.
    Ctrl-C or SIGTERM ends the run KILLED with its checkpoint kept and raises
    ``TrainingInterrupted``, whose message says how to resume.

    Under torchrun (``nproc`` > 1) every process calls this: rank 0 runs it as above, the
    others train their share of each step and leave MLflow alone.
    """
    world = current_world()
    check_world(cfg, world, parent_run_id=parent_run_id, aux=aux)
    device = world.place(pick_device(cfg.execution.device))
    with process_group(world, device):
        if world.is_main:
            return _train_main(cfg, world, device, parent_run_id=parent_run_id, tags=tags,
                               data=data, run_name=run_name, aux=aux, on_epoch=on_epoch,
                               params=params)
        return _train_replica(cfg, world, device)


def check_world(cfg: TrainConfig, world: World, *, parent_run_id: str | None,
                aux: AuxFactory | None) -> None:
    """``nproc`` > 1 needs torchrun, and is for single runs (not sweep children or students)."""
    if world.distributed and (parent_run_id or aux):
        raise ValueError("data-parallel training (torchrun) is for single runs (-e train); a "
                         "sweep trains `workers` combinations at once instead")
    if cfg.execution.nproc > 1 and not world.distributed:
        raise ValueError(f"nproc={cfg.execution.nproc} trains with {cfg.execution.nproc} "
                         "processes, started by torchrun: use "
                         f"`python -m training.commands.train --nproc {cfg.execution.nproc} ...`, "
                         f"`mlflow run . -e train -P nproc={cfg.execution.nproc}` or `torchrun "
                         f"--nproc_per_node={cfg.execution.nproc} -m training.commands.train ...` "
                         "(a sweep or distillation runs in one process each)")
    if world.distributed:
        cfg.execution.nproc = world.size  # what torchrun started, whatever the parameter said


def _train_main(cfg: TrainConfig, world: World, device: torch.device, *,
                parent_run_id: str | None, tags: dict[str, str] | None,
                data: LoadedData | None, run_name: str | None,
                aux: AuxFactory | None,
                on_epoch: Callable[[int, dict[str, float]], None] | None,
                params: dict[str, str] | None = None) -> RunResult:
    configure_tracking()
    resume_id, state = cfg.execution.resume_run, None
    if resume_id:
        cfg, state = resume_point(resume_id)
        if cfg.execution.nproc != world.size:  # the learning rate and batches depend on it
            raise ValueError(f"resume_run={resume_id} trained with nproc={cfg.execution.nproc}: "
                             "resume it with the same number of processes "
                             f"(-P nproc={cfg.execution.nproc})")
        world.broadcast((cfg, state))  # the other processes resume from the same point
    seed_and_threads(cfg)
    init, from_init = apply_init(cfg)  # the init model's architecture, before the run is named
    name = dataset_name(cfg.data.source)
    run_tags = {names.MODEL_TAG: cfg.model.name, names.LOSS_TAG: cfg.loss.name,
                names.DATASET_TAG: name,
                **({names.PRESET_TAG: cfg.preset} if cfg.preset != "none" else {}),
                **({names.INIT_TAG: cfg.model.init} if cfg.model.init else {}), **(tags or {})}
    progress: dict[str, Any] = {"epoch": int(state["epoch"]) if state else 0}
    try:
        with training_run(run_name or f"{cfg.model.name}-{cfg.loss.name}",
                          cfg.tracking.experiment or f"zoo-{name}",
                          run_tags, parent_run_id=parent_run_id, run_id=resume_id) as run:
            progress["run_id"] = run.info.run_id
            wrapper = os.environ.get("MLFLOW_RUN_ID")
            if resume_id and not parent_run_id and wrapper not in (None, resume_id):
                # under `mlflow run -P resume_run=...`: the run mlflow made says where it went
                mlflow.MlflowClient().set_tag(wrapper, names.RESUMED_TAG, resume_id)
            return _train_in_run(cfg, run, name, data, aux, state, progress, world, device,
                                 on_epoch, init, from_init, params or {})
    except KeyboardInterrupt as exc:
        if "run_id" not in progress:
            raise
        raise TrainingInterrupted(progress["run_id"], progress["epoch"], cfg.execution.checkpoint,
                                  exc, nproc=world.size) from None


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a run: the run is KILLED, its last checkpoint kept."""

    def __init__(self, run_id: str, epoch: int, checkpointed: bool,
                 cause: KeyboardInterrupt, nproc: int = 1) -> None:
        self.run_id, self.epoch = run_id, epoch
        self.exit_code = getattr(cause, "exit_code", 130)
        if checkpointed and epoch > 0:
            how = (f"its checkpoint of epoch {epoch} is kept; resume it with: mlflow run . -e "
                   f"train --env-manager local -P resume_run={run_id}"
                   + (f" -P nproc={nproc}" if nproc > 1 else ""))
        else:
            how = "no epoch had finished, so there is no checkpoint to resume from"
        super().__init__(f"interrupted: run {run_id} is KILLED; {how}")


def resume_point(run_id: str) -> tuple[TrainConfig, dict[str, Any]]:
    """The config a stopped run was trained with, and its newest checkpoint."""
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        raise ValueError(f"resume_run={run_id}: no such run in {mlflow.get_tracking_uri()}"
                         ) from None
    if run.info.status == "FINISHED":
        raise ValueError(f"resume_run={run_id}: that run is FINISHED; there is nothing to resume")
    if names.TEACHER_TAG in run.data.tags:
        raise ValueError(f"resume_run={run_id} is a distillation run, whose teacher a resumed "
                         "run would not have; train the student again")
    checkpoints = RunCheckpoints(run_id)
    try:
        state = checkpoints.latest()
    finally:
        checkpoints.close()
    recorded = state.pop(CHECKPOINT_RECORD_KEY, None)
    if recorded:  # the config the run trained with, as its checkpoint records it
        cfg = TrainConfig.from_recipe(ModelRecord.from_dict(recorded).recipe)
    else:  # a checkpoint written before checkpoints carried the record
        log.info("checkpoint of run %s carries no model record: reading the run's parameters",
                 run_id)
        cfg = TrainConfig.from_run(run.data.params, run.data.tags)
    log.info("resuming run %s (%s) after epoch %d", run_id, run.info.run_name, state["epoch"])
    return cfg, state


def _train_replica(cfg: TrainConfig, world: World, device: torch.device) -> RunResult:
    """A process other than rank 0 of a data-parallel run: the same model on the same split,
    its share of every step, and no MLflow (rank 0 sends the resumed config and state)."""
    try:
        return _train_share(cfg, world, device)
    except KeyboardInterrupt as exc:  # rank 0 says what became of the run
        stopped = KeyboardInterrupt(f"process {world.rank} of {world.size} stopped")
        stopped.exit_code = getattr(exc, "exit_code", 130)  # type: ignore[attr-defined]
        raise stopped from None


def _train_share(cfg: TrainConfig, world: World, device: torch.device) -> RunResult:
    cfg, state = world.broadcast(None) if cfg.execution.resume_run else (cfg, None)
    seed_and_threads(cfg)
    splits, model, loss_fn, _ = prepare(cfg)
    # its own augmentation and dropout draws; the weights are rank 0's (DDP copies them to
    # every process before the first step)
    torch.manual_seed(cfg.training_seed * 1_000_003 + world.rank)
    history = fit(model, loss_fn, splits.train, splits.val, cfg, device,
                  len(splits.class_names), resume=state, world=world)
    replica_digests(model, loss_fn, world)
    return RunResult(world.broadcast(""), {}, None, history)


def seed_and_threads(cfg: TrainConfig) -> None:
    """The run's random seed and torch's CPU threads, before anything is built."""
    seed_everything(cfg.training_seed)
    if cfg.execution.num_threads > 0:
        torch.set_num_threads(cfg.execution.num_threads)


def prepare(cfg: TrainConfig, data: LoadedData | None = None, init: InitSource | None = None
            ) -> tuple[Splits, EmbeddingModel, EmbeddingLoss, Start]:
    """The config's split of ``data`` (loaded when None, or when read with another resize
    filter than the starting weights want) and a model and loss, from scratch or from the
    weights ``pretrained`` or ``init`` name, after the names and modality are checked."""
    check_names(cfg)
    start = resolve_start(cfg, init)
    if data is None or not read_as_config(data, cfg):
        data = load_config_data(cfg)
    check_modality(cfg, data)
    splits = config_splits(cfg, data)
    return (splits, *build_model_and_loss(cfg, splits, start), start)


def read_as_config(data: LoadedData, cfg: TrainConfig) -> bool:
    """Whether images were read as ``cfg`` reads them: its resize filter, and its size,
    channels and face stage (which follow each model's own input in a sweep)."""
    if data.kind != "image":
        return True
    if data.interpolation != (cfg.data.interpolation or DEFAULT_INTERPOLATION):
        return False
    if (data.faces is None) != (cfg.data.faces == "none"):
        return False
    shape = tuple(getattr(data.x, "shape", ())[1:])
    size = cfg.data.image_size
    return not shape or shape == (cfg.data.channels, size, size)


def replica_digests(model: EmbeddingModel, loss_fn: EmbeddingLoss, world: World) -> list[str]:
    """Every process's digest of its final model and loss weights, in rank order."""
    return world.gather(checksum(nn.ModuleDict({"model": model, "loss": loss_fn})))


def check_replicas(model: EmbeddingModel, loss_fn: EmbeddingLoss, world: World) -> None:
    """Every process must end with the same weights; tag their digests on the run."""
    digests = replica_digests(model, loss_fn, world)
    mlflow.set_tag(names.DDP_CHECKSUMS_TAG, ",".join(digests))
    if len(set(digests)) > 1:
        raise RuntimeError(f"the {world.size} data-parallel processes ended with different "
                           f"weights ({', '.join(digests)}): a DDP bug; please report it")


def build_model_and_loss(cfg: TrainConfig, splits: Splits, start: Start | None = None
                         ) -> tuple[EmbeddingModel, EmbeddingLoss]:
    """The model and loss a config names, sized for its split, with the starting weights."""
    num_classes = len(splits.class_names)
    model = create_model(
        cfg.model.name, num_classes, cfg.model.embedding_dim, in_chans=cfg.data.channels,
        image_size=cfg.data.image_size, num_features=splits.train.x.shape[1],
        feature_groups=splits.preprocessing.feature_groups, dropout=cfg.model.dropout,
        stage=cfg.model.stage, grid=cfg.model.grid, parts=cfg.model.parts,
        cnn_branch=cfg.model.cnn_branch, transformer_branch=cfg.model.transformer_branch,
        weights=start.weights if start is not None else None, **architecture_options(cfg),
    )
    if start is not None:
        start.apply(model)
    loss_fn = create_loss(cfg.loss.name, num_classes, cfg.model.embedding_dim,
                          **cfg.loss.options(),
                          parts=cfg.model.grid * cfg.model.grid if cfg.model.parts else 1)
    return model, loss_fn


def trained_record(model: EmbeddingModel, cfg: TrainConfig, splits: Splits, dataset: str,
                   run_id: str) -> ModelRecord:
    """The record of ``model`` trained by ``cfg`` on ``splits``: its architecture's record
    (build recipe, lineage) completed with the preprocessing, the training recipe (what
    export, evaluate, distill and resume rebuild the config from), data set, loss and run."""
    record = model.record
    return record.with_(
        preprocessing=splits.preprocessing, recipe=cfg.params(), dataset=dataset,
        loss=cfg.loss.name, run_id=run_id, open_class_names=tuple(splits.open_class_names),
        faces=splits.faces,
        lineage=dataclasses.replace(record.lineage, init=cfg.model.init or None))


def _train_in_run(cfg: TrainConfig, run: mlflow.ActiveRun, name: str, data: LoadedData | None,
                  aux: AuxFactory | None, state: dict[str, Any] | None,
                  progress: dict[str, Any], world: World, device: torch.device,
                  on_epoch: Callable[[int, dict[str, float]], None] | None,
                  init: InitSource | None = None, from_init: tuple[str, ...] = (),
                  params: dict[str, str] | None = None) -> RunResult:
    resolved = (*cfg.preset_changed, *from_init)
    if cfg.data.auto_input:
        log.info("%s (auto: %s's own input)", ", ".join(
            f"{k}={cfg.param(k)}" for k in cfg.data.auto_input), cfg.model.name)
    logged = {**cfg.to_params(), **(params or {})}
    if state is None:
        log_params_once(logged, resolved_keys=resolved)
    splits, model, loss_fn, start = prepare(cfg, data, init)
    num_classes = len(splits.class_names)
    if state is None:
        # what the starting weights made of mean, std and interpolation
        log_params_once({**cfg.to_params(), **(params or {})}, resolved_keys=resolved)
        log_params_once(describe(splits, model, device, world))
        start.log()
        if splits.face_report is not None:
            log_face_report(splits.face_report)
    # what the model is: written into every checkpoint (resume reads it) and onto the model
    record = trained_record(model, cfg, splits, name, run.info.run_id)
    model.record = record
    log.info("training %s with %s on %s (%d classes, %d/%d/%d samples) on %s",
             cfg.model.name, cfg.loss.name, name, num_classes, len(splits.train), len(splits.val),
             len(splits.test), device)

    checkpoints = RunCheckpoints(run.info.run_id) if cfg.execution.checkpoint else None

    def logged(epoch: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics(metrics, step=epoch)
        if on_epoch is not None:
            on_epoch(epoch, metrics)

    def save(checkpoint: dict[str, Any]) -> None:
        checkpoints.save({**checkpoint, CHECKPOINT_RECORD_KEY: record.to_dict()})
        progress["epoch"] = int(checkpoint["epoch"])

    try:
        history = fit(model, loss_fn, splits.train, splits.val, cfg, device, num_classes,
                      on_epoch=logged,
                      aux=aux(splits, model, loss_fn, device) if aux else None,
                      on_checkpoint=save if checkpoints else None, resume=state, world=world)
    finally:
        if checkpoints is not None:
            checkpoints.close()
    if world.distributed:
        check_replicas(model, loss_fn, world)
        world.broadcast(run.info.run_id)

    metrics, test_emb, test_logits = test_metrics(model, loss_fn, splits, device, num_classes,
                                                   cfg.data.tta, prototypes=cfg.optim.epochs == 0)
    metrics.update(best_epoch=float(history.best_epoch), train_time_s=history.train_time_s,
                   **kept_validation(history))
    mlflow.log_metrics(metrics)
    log_figures(history, splits, test_emb, test_logits, cfg.data.seed, cfg.tracking.plots)
    model_uri = None
    if cfg.tracking.log_model:
        info = log_trained_model(model, splits.test.x[torch.arange(min(2, len(splits.test)))],
                                 record, metrics)
        model_uri = info.model_uri
        mlflow.set_tag(names.MODEL_URI_TAG, model_uri)
    if checkpoints is not None:
        checkpoints.delete()
    summary = {k: round(v, 4) for k, v in metrics.items() if k in SUMMARY_KEYS}
    log.info("run %s finished: %s", run.info.run_id, summary)
    return RunResult(run.info.run_id, metrics, model_uri, history)


def log_face_report(report: FaceReport) -> None:
    """What the face stage found: counts as metrics, the photos without a face as a file."""
    mlflow.log_metrics(report.metrics())
    if report.missing:
        mlflow.log_text("\n".join(report.missing) + "\n", names.FACES_MISSING_ARTIFACT)


def kept_validation(history: History) -> dict[str, float]:
    """The validation metrics of the epoch whose weights the run kept, as ``best_val_*``
    (what a sweep ranks by: the test split stays an honest estimate of the winner)."""
    if history.untrained:  # epochs=0: the starting weights are what the run keeps
        return {f"best_{k}": v for k, v in history.untrained.items() if k.startswith("val_")}
    if not history.best_epoch or history.best_epoch > len(history.epochs):
        return {}
    kept = history.epochs[history.best_epoch - 1]
    return {f"best_{k}": v for k, v in kept.items() if k.startswith("val_")}


SUMMARY_KEYS = ("test_accuracy", "test_precision_at_1", "test_map_at_r", "test_nmi",
                "open_precision_at_1", "open_map_at_r", "open_tar_at_far_1e-3",
                "open_dir_at_far_1e-2", "train_time_s")


def architecture_options(cfg: TrainConfig) -> dict[str, Any]:
    """The timm options a config changes from the model's own (the rest are not passed, so
    models that lack an option still build when it is left alone)."""
    options = {k: cfg.param(k) for k in TIMM_OPTIONS if cfg.param(k) not in (None, 0.0)}
    if cfg.model.width_multiplier != 1.0:
        options["width_multiplier"] = cfg.model.width_multiplier
    return options


def describe(splits: Splits, model: torch.nn.Module, device: torch.device,
             world: World = World()) -> dict[str, str]:
    """Facts of the run that are not configuration, logged as parameters."""
    return {
        "num_classes": str(len(splits.class_names)),
        "train_samples": str(len(splits.train)),
        "val_samples": str(len(splits.val)),
        "test_samples": str(len(splits.test)),
        "open_classes": str(len(splits.open_class_names)),
        "num_parameters": str(sum(p.numel() for p in model.parameters())),
        "device_used": str(device),
        "world_size": str(world.size),
    }


def test_metrics(
    model, loss_fn, splits: Splits, device: torch.device, num_classes: int, tta: str = "none",
    prototypes: bool = False,
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor | None]:
    """Attach the final classifier (temperature-calibrated on val), then test (and open) metrics.
    ``prototypes``: the head is the classes' mean embeddings (``epochs=0``: no loss trained).

    Returns the metrics and the test embeddings and logits (the figures reuse them).
    """
    head = build_head(model, loss_fn, splits.train, device, num_classes, tta, prototypes)
    model.set_head(None)
    scale = None
    if len(splits.val):  # without a validation split the head keeps its trained scale
        val_emb, _ = embed(model, splits.val.x, device, tta=tta)
        scale = calibrate_scale(head, val_emb, splits.val.y)
    model.set_head(head.to(device))
    test_emb, test_logits = embed(model, splits.test.x, device, tta=tta)
    metrics = evaluate(test_emb, splits.test.y, test_logits, prefix="test_")
    if scale is not None:
        metrics["classifier_scale"] = scale
    if splits.open is not None and len(splits.open):
        open_emb, _ = embed(model, splits.open.x, device, tta=tta)
        metrics.update(evaluate(open_emb, splits.open.y, None, prefix="open_"))
    return metrics, test_emb, test_logits


def log_figures(history: History, splits: Splits, test_emb: torch.Tensor,
                test_logits: torch.Tensor | None, seed: int, figures: bool = True) -> None:
    """Curves, confusion matrix and embedding map (when ``figures``), history.json and
    metrics.json as run artifacts."""
    if figures:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            if history.epochs:  # epochs=0 trains none
                plots.plot_curves(history.epochs, out / names.CURVES_PLOT)
            if test_logits is not None:
                matrix = confusion_matrix(test_logits, splits.test.y, len(splits.class_names))
                plots.plot_confusion(matrix, splits.class_names, out / names.CONFUSION_PLOT)
            plots.plot_embedding_map(test_emb.numpy(), splits.test.y.numpy(),
                                     splits.class_names, out / names.EMBEDDING_PLOT, seed=seed)
            mlflow.log_artifacts(str(out), artifact_path=names.PLOTS_DIR)
    mlflow.log_dict({"history": history.epochs, "best_epoch": history.best_epoch,
                     "stopped_early": history.stopped_early}, names.HISTORY_ARTIFACT)
    run = mlflow.MlflowClient().get_run(mlflow.active_run().info.run_id)
    mlflow.log_dict(run.data.metrics, names.METRICS_ARTIFACT)
