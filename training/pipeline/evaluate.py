"""Evaluate registered models, alone or as an ensemble.

Every model is run on the test (and open-set) split of the run that trained it, optionally
with flip test-time augmentation. The run's recipe says which data and how it is split; the
model's record says how its inputs are read (size, channels, resize filter, face stage,
normalisation), as the server reads them, so what is scored is what would be served. Given
``data`` with other classes than the model was trained on, the evaluation is zero-shot: every
sample of that data counts as a class the model never saw, read with the model's own
preprocessing, and scored by the retrieval, clustering and verification metrics (``open_*``):
how a face model trained on one set of people does on another. Several models form an
ensemble: their logits are averaged, and their L2-normalised embeddings are concatenated
and divided by √n, so the ensemble's cosine similarity between two samples is the mean of
the members' similarities. (Averaging the vectors themselves would mix embedding spaces
that separate trainings leave unaligned; with one shared space the two agree in ranking.)
The metrics are logged under the same names as a training run's (``test_*``, ``open_*``).

The command is ``python -m training.commands.evaluate`` (the MLproject ``evaluate``).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Optional

import mlflow
import torch
import torch.nn.functional as F

from training.config import SPLIT_FIELDS, FlatParams, check_choices, option
from training.engine.evaluation import embed
from training.engine.loop import pick_device
from training.pipeline.export import source_config, source_splits
from training.pipeline.run import SUMMARY_KEYS, dataset_name, load_recorded_data
from training.tracking.model_source import load_source
from training.tracking.store import configure_tracking, log_params_once, training_run
from zoo import names
from zoo.data import LoadedData, Split, Table
from zoo.data.images import ImageSet
from zoo.data.preprocessing import normalise, preprocess_rows
from zoo.metrics import evaluate

log = logging.getLogger(__name__)


@dataclass
class EvaluateConfig(FlatParams):
    """Which models, on what data, with which test-time augmentation."""

    WHAT = "evaluate"

    model_uri: str = option("models:/zoo-digits@champion",
                            "model URI, or a comma list of them: two "
                            "or more are evaluated as an ensemble")
    data: Optional[str] = option(None, "data to evaluate on (auto: the models' own test split): "
                                 "the training data where it is now, if it has moved, or a "
                                 "data set of other classes, evaluated zero-shot (every sample "
                                 "unseen)")
    tta: str = option("none", "test-time augmentation: flip averages each image with its mirror",
                  ("none", "flip"))
    batch_size: int = option(256, "samples per forward pass")
    experiment: Optional[str] = option(None, "MLflow experiment (auto: the first model's)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")

    def __post_init__(self) -> None:
        if not self.uris:
            raise ValueError("model_uri is empty: give one or more model URIs, comma separated")
        check_choices(self)

    @property
    def uris(self) -> list[str]:
        return [u.strip() for u in self.model_uri.split(",") if u.strip()]



@dataclass
class Member:
    """One loaded model with its run's config and the splits it is evaluated on (zero-shot:
    no test split, and all of the new data as the open one)."""

    uri: str
    model: torch.nn.Module
    config: Any
    test: Split | None
    open: Split | None
    tags: dict[str, str]
    zero_shot: bool = False


def load_member(uri: str, data: str | None) -> Member:
    source, run, model = load_source(uri)
    cfg = source_config(source, run, model)
    version = f"v{source.version.version}" if source.version is not None else source.run_id
    tags = {"experiment_id": run.info.experiment_id, "version": version,
            "dataset": dataset_name(cfg.data.source)}
    if not data:
        splits = source_splits(cfg, model, recorded=True)
        return Member(uri, model, cfg, splits.test, splits.open, tags)
    cfg = cfg.replace(data=data)
    record = model.record
    loaded = load_recorded_data(cfg, record)
    if sorted(loaded.class_names) == sorted(record.class_names + list(record.open_class_names)):
        splits = source_splits(cfg, model, loaded, recorded=True)  # the training data, moved
        return Member(uri, model, cfg, splits.test, splits.open, tags)
    return Member(uri, model, cfg, None, unseen_split(loaded, model), tags, zero_shot=True)


def unseen_split(data: LoadedData, model: torch.nn.Module) -> Split:
    """All of ``data``, normalised as the model's training data was (its own mean and std,
    never the new data's)."""
    pre = model.record.pre
    if data.kind != pre.kind:
        raise ValueError(f"the model takes {pre.kind} data but {data.name!r} is {data.kind} data")
    if pre.kind == "tabular" and list(data.feature_names or []) != list(pre.feature_names or []):
        raise ValueError(f"{data.name!r} has features {data.feature_names} but the model was "
                         f"trained on {pre.feature_names}")
    if isinstance(data.x, ImageSet):
        x = data.x.normalised(pre.mean, pre.std)
    elif isinstance(data.x, Table):  # the model's own columns: its categories, its medians
        x = preprocess_rows(data.x.frame, pre)
    else:
        x = normalise(data.x, pre.mean, pre.std)
    return Split(x, data.y, torch.arange(len(data)))


def check_same_split(members: list[Member]) -> None:
    """Members must share the data and split, or their test samples differ."""
    first = members[0]
    if any(m.zero_shot != first.zero_shot for m in members):
        raise ValueError("data holds the training classes of some members and not of others: "
                         "an ensemble is evaluated on one kind of split")
    if first.zero_shot:
        return
    for other in members[1:]:
        for name in SPLIT_FIELDS:
            a, b = first.config.param(name), other.config.param(name)
            if a != b:
                raise ValueError(f"{first.uri} was trained with {name}={a!r} but {other.uri} with "
                                 f"{name}={b!r}: an ensemble needs one data set and split")
        if not torch.equal(first.test.y, other.test.y):
            raise ValueError(f"{first.uri} and {other.uri} see different test samples")


def combined_outputs(members: list[Member], split: str, cfg: EvaluateConfig,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ensemble's embedding (concatenated, /√n) and mean logits on one split."""
    embs, logits = [], []
    for member in members:
        data = getattr(member, split)
        emb, logit = embed(member.model.to(device), data.x, device, cfg.batch_size, tta=cfg.tta)
        embs.append(F.normalize(emb, dim=1))
        if logit is not None:
            logits.append(logit)
    emb = torch.cat(embs, dim=1) / math.sqrt(len(embs))
    mean_logits = torch.stack(logits).mean(0) if len(logits) == len(members) else None
    return emb, mean_logits


def evaluate_models(cfg: EvaluateConfig) -> dict[str, float]:
    """Load, check, embed, score and log; returns the metrics."""
    configure_tracking()
    device = pick_device(cfg.device)
    members = [load_member(uri, cfg.data) for uri in cfg.uris]
    check_same_split(members)
    first = members[0]
    if cfg.tta != "none" and (first.open if first.zero_shot else first.test).x.dim() != 4:
        raise ValueError(f"tta={cfg.tta} flips images; these models take tabular rows")
    name = dataset_name(first.config.data.source)
    if first.zero_shot:  # a run about the new data, in its own experiment
        experiment = cfg.experiment or f"zoo-{name}"
        kind = "zero-shot"
    else:
        experiment = cfg.experiment or mlflow.MlflowClient().get_experiment(
            first.tags["experiment_id"]).name
        kind = "ensemble" if len(members) > 1 else "evaluate"
    models = "+".join(m.model.record.model for m in members)
    tags = {names.DATASET_TAG: name, names.EVALUATION_TAG: kind,
            names.MEMBERS_TAG: ",".join(cfg.uris),
            names.MODEL_TAG: models,
            names.LOSS_TAG: "+".join(m.model.record.loss or "?" for m in members),
            **({names.TRAINED_ON_TAG: ",".join(sorted({m.tags["dataset"] for m in members}))}
               if first.zero_shot else {})}
    run_name = f"zero-shot-{models}" if first.zero_shot else f"{kind}-{len(members)}"
    with training_run(run_name, experiment, tags):
        log_params_once({f.name: str(getattr(cfg, f.name))
                         for f in dataclasses.fields(cfg)})
        log_params_once({f"member_{i}": f"{m.uri} ({m.tags['version']})"
                         for i, m in enumerate(members)})
        metrics: dict[str, float] = {}
        if not first.zero_shot:
            emb, logits = combined_outputs(members, "test", cfg, device)
            metrics = evaluate(emb, first.test.y, logits, prefix="test_")
        if first.open is not None and len(first.open):
            open_emb, _ = combined_outputs(members, "open", cfg, device)
            metrics.update(evaluate(open_emb, first.open.y, None, prefix="open_"))
        mlflow.log_metrics(metrics)
    summary = {k: round(v, 4) for k, v in metrics.items() if k in SUMMARY_KEYS}
    if first.zero_shot:
        print(f"zero-shot: {models} ({', '.join(cfg.uris)}) on {name}, all "
              f"{len(first.open)} samples of {len(first.open.y.unique())} classes it never saw: "
              f"{summary}")
    else:
        print(f"{kind} of {len(members)} on {name} ({len(first.test)} test samples): {summary}")
    return metrics
