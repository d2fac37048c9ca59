"""``python -m training.evaluate``: evaluate registered models, alone or as an ensemble.

Every model is run on the test (and open-set) split of the run that trained it, rebuilt from
that run's parameters, optionally with flip test-time augmentation. Several models form an
ensemble: their logits are averaged, and their L2-normalised embeddings are concatenated
and divided by √n, so the ensemble's cosine similarity between two samples is the mean of
the members' similarities. (Averaging the vectors themselves would mix embedding spaces
that separate trainings leave unaligned; with one shared space the two agree in ranking.)
The metrics are logged under the same names as a training run's (``test_*``, ``open_*``).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import sys
from dataclasses import dataclass
from typing import Any, Optional

import mlflow
import torch
import torch.nn.functional as F

from training.cli import run_cli
from training.config import _f, check_choices, config_from_dict
from training.distill import SPLIT_FIELDS
from training.export import source_config, source_splits
from training.loop import embed, pick_device
from training.model_source import load_source
from training.run import SUMMARY_KEYS, dataset_name
from training.tracking import configure_tracking, log_params_once, training_run
from zoo.data import Split
from zoo.metrics import evaluate

log = logging.getLogger(__name__)


@dataclass
class EvaluateConfig:
    """Which models, on what data, with which test-time augmentation."""

    model_uris: str = _f("models:/zoo-digits@champion", "comma list of model URIs; two or "
                                                        "more are evaluated as an ensemble")
    data: str = _f("", "where the models' training data is now, if it has moved")
    tta: str = _f("none", "test-time augmentation: flip averages each image with its mirror",
                  ("none", "flip"))
    batch_size: int = _f(256, "samples per forward pass")
    experiment: Optional[str] = _f(None, "MLflow experiment (auto: the first model's)")
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")

    def __post_init__(self) -> None:
        if not self.uris:
            raise ValueError("model_uris is empty: give one or more model URIs, comma separated")
        check_choices(self)

    @property
    def uris(self) -> list[str]:
        return [u.strip() for u in self.model_uris.split(",") if u.strip()]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "EvaluateConfig":
        return config_from_dict(cls, values, "evaluate")


@dataclass
class Member:
    """One loaded model with its run's config and the splits it is evaluated on."""

    uri: str
    model: torch.nn.Module
    config: Any
    test: Split
    open: Split | None
    tags: dict[str, str]


def load_member(uri: str, data: str) -> Member:
    source, run, model = load_source(uri)
    cfg = source_config(run, data)
    splits = source_splits(cfg, model)
    version = f"v{source.version.version}" if source.version is not None else source.run_id
    return Member(uri, model, cfg, splits.test, splits.open,
                  {"experiment_id": run.info.experiment_id, "version": version})


def check_same_split(members: list[Member]) -> None:
    """Members must share the data and split, or their test samples differ."""
    first = members[0]
    for other in members[1:]:
        for name in SPLIT_FIELDS:
            a, b = getattr(first.config, name), getattr(other.config, name)
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
    if cfg.tta != "none" and members[0].test.x.dim() != 4:
        raise ValueError(f"tta={cfg.tta} flips images; these models take tabular rows")
    first = members[0]
    name = dataset_name(first.config.data)
    experiment = cfg.experiment or mlflow.MlflowClient().get_experiment(
        first.tags["experiment_id"]).name
    kind = "ensemble" if len(members) > 1 else "evaluate"
    tags = {"zoo.dataset": name, "zoo.evaluation": kind, "zoo.members": ",".join(cfg.uris),
            "zoo.model": "+".join(str(m.model.zoo_meta.get("model", "?")) for m in members),
            "zoo.loss": "+".join(str(m.model.zoo_meta.get("loss", "?")) for m in members)}
    with training_run(f"{kind}-{len(members)}", experiment, tags):
        log_params_once({f.name: str(getattr(cfg, f.name))
                         for f in dataclasses.fields(cfg)})
        log_params_once({f"member_{i}": f"{m.uri} ({m.tags['version']})"
                         for i, m in enumerate(members)})
        emb, logits = combined_outputs(members, "test", cfg, device)
        metrics = evaluate(emb, first.test.y, logits, prefix="test_")
        if first.open is not None and len(first.open):
            open_emb, _ = combined_outputs(members, "open", cfg, device)
            metrics.update(evaluate(open_emb, first.open.y, None, prefix="open_"))
        mlflow.log_metrics(metrics)
    summary = {k: round(v, 4) for k, v in metrics.items() if k in SUMMARY_KEYS}
    print(f"{kind} of {len(members)} on {name} ({len(first.test)} test samples): {summary}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    return run_cli(evaluate_models, EvaluateConfig, argv)


if __name__ == "__main__":
    sys.exit(main())
