"""Train a student on a registered teacher's outputs.

The student's loss is its own (hard-label) loss plus ``kd_weight`` times the KL divergence
between temperature-softened teacher and student class probabilities (Hinton et al.,
scaled by T² so its gradients keep their size as T grows) plus ``embedding_weight`` times the
squared distance between the teacher's embedding and the student's, through a learned
linear projection when their widths differ. The data, split and input size default to the
teacher's, so the teacher never saw the student's validation or test images.

The student's run records its teacher: tags ``zoo.teacher`` (the URI as given),
``zoo.teacher_version``, ``zoo.teacher_run_id`` and ``zoo.teacher_model``.

The command is ``python -m training.commands.distill`` (the MLproject ``distill``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.config import (SPLIT_FIELDS, FlatParams, TrainConfig, build, internal,
                             one_process_per_run, option, part)
from training.engine.step import AuxiliaryLoss
from training.pipeline.export import source_config
from training.pipeline.run import RunResult, train
from training.tracking.model_source import load_source
from training.tracking.store import configure_tracking
from zoo import names
from zoo.data import Preprocessing, Splits
from zoo.losses import EmbeddingLoss
from zoo.models import EmbeddingModel
from zoo.values import UNSET_WORDS

log = logging.getLogger(__name__)

#: Fields that default to the teacher's run (None: the teacher's value).
FROM_TEACHER = ("data", "image_size", "channels", "seed", "val_fraction", "test_fraction",
                "open_set", "label_column", "faces", "faces_missing")


@dataclass
class DistillConfig(FlatParams):
    """A student's training config (``train``), its teacher and the weights of the
    distillation terms. The split and input parameters left unset (``FROM_TEACHER``) are
    the teacher's, so the student trains on the split the teacher was trained on."""

    WHAT = "distillation"

    train: TrainConfig = part(TrainConfig, preset_skip=FROM_TEACHER,
                              model="mobilenetv3_small_100")
    teacher: str = option("models:/zoo-digits@champion", "teacher model URI "
                          "(models:/<name>@<alias>, models:/<name>/<version>, ...)")
    kd_weight: float = option(1.0, "weight of the KL divergence to the teacher's softened class "
                                   "probabilities (0: off)")
    kd_temperature: float = option(4.0, "softmax temperature of the KL term")
    embedding_weight: float = option(1.0, "weight of the squared distance to the teacher's "
                                          "embedding (0: off)")
    #: The ``FROM_TEACHER`` parameters not given (or given as auto): the teacher's values.
    inherit: tuple[str, ...] = internal(FROM_TEACHER)

    def __post_init__(self) -> None:
        one_process_per_run(self.train, "a student trains in one process, beside its teacher")
        if self.kd_temperature <= 0:
            raise ValueError(f"kd_temperature must be > 0, got {self.kd_temperature}")
        for name in ("kd_weight", "embedding_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "DistillConfig":
        """Built from flat parameters; those of ``FROM_TEACHER`` left out or ``auto`` are
        the teacher's."""
        unset = {name for name in FROM_TEACHER if values.get(name) is None or (
            isinstance(values[name], str) and values[name].strip().lower() in UNSET_WORDS)}
        cfg = build(cls, {k: v for k, v in values.items() if k not in unset}, cls.WHAT)
        cfg.inherit = tuple(name for name in FROM_TEACHER if name in unset)
        return cfg

    def distill_params(self) -> dict[str, str]:
        """The distillation's own parameters, logged on the student's run."""
        return {k: v for k, v in self.to_params().items() if k not in self.train.params()}

    def with_teacher_defaults(self, teacher: TrainConfig) -> TrainConfig:
        """The student's training config, every parameter it left unset the teacher's."""
        return self.train.replace(**{name: teacher.param(name) for name in self.inherit})


class Distiller(AuxiliaryLoss):
    """The teacher's terms of the student's loss; the teacher itself is frozen."""

    def __init__(self, teacher: nn.Module, student_loss: EmbeddingLoss, student_dim: int,
                 cfg: DistillConfig, student_input: Preprocessing,
                 teacher_input: Preprocessing) -> None:
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.student_loss = [student_loss]  # a list: not a submodule, trained by the loop
        teacher_dim = int(teacher.embedding_dim)
        self.project = (nn.Identity() if teacher_dim == student_dim
                        else nn.Linear(student_dim, teacher_dim, bias=False))
        self.temperature = cfg.kd_temperature
        self.weights = {name: w for name, w in (("kd", cfg.kd_weight),
                                                ("embedding", cfg.embedding_weight)) if w > 0}
        self.teacher_size = tuple(teacher_input.input_size[1:])
        rescale = (student_input.mean != teacher_input.mean
                   or student_input.std != teacher_input.std)
        self.renormalise = (
            [torch.tensor(v, dtype=torch.float32) for v in (
                student_input.std, student_input.mean, teacher_input.mean,
                teacher_input.std)]
            if rescale else None
        )

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.teacher.eval()  # the teacher's BatchNorm statistics never move
        return self

    def teacher_view(self, x: torch.Tensor) -> torch.Tensor:
        """The student's batch as the teacher's preprocessing would have made it."""
        if self.renormalise is not None:  # per channel (images) or per feature (rows)
            shape = (1, -1, *([1] * (x.dim() - 2)))
            std_s, mean_s, mean_t, std_t = (t.to(x).view(shape) for t in self.renormalise)
            x = ((x * std_s + mean_s) - mean_t) / std_t
        if x.dim() == 4 and tuple(x.shape[-2:]) != self.teacher_size:
            x = F.interpolate(x, size=self.teacher_size, mode="bilinear", align_corners=False,
                              antialias=True)
        return x

    def forward(self, x: torch.Tensor, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            taught = self.teacher(self.teacher_view(x))
        terms = {}
        student = out["embedding"].float()
        if "kd" in self.weights:
            t = self.temperature
            logits = self.student_loss[0].logits(student)
            terms["kd"] = F.kl_div(F.log_softmax(logits / t, dim=1),
                                   F.log_softmax(taught["logits"].float() / t, dim=1),
                                   log_target=True, reduction="batchmean") * t * t
        if "embedding" in self.weights:
            projected = F.normalize(self.project(student), dim=1)
            terms["embedding"] = (projected - taught["embedding"].float()).pow(2).sum(1).mean()
        return terms


def load_teacher(uri: str) -> tuple[EmbeddingModel, TrainConfig, dict[str, str]]:
    """The teacher module, its training config and the tags that record it on the student."""
    source, run, teacher = load_source(uri)
    tags = {names.TEACHER_TAG: uri, names.TEACHER_RUN_TAG: source.run_id,
            names.TEACHER_MODEL_TAG: teacher.record.model}
    if source.version is not None:
        tags[names.TEACHER_VERSION_TAG] = str(source.version.version)
        tags[names.TEACHER_REGISTERED_TAG] = source.version.name
    log.info("teacher: %s", source.describe())
    return teacher, source_config(source, run, teacher), tags


def distiller_factory(teacher: EmbeddingModel, cfg: DistillConfig, student: TrainConfig):
    """What ``train`` calls once the student's splits, model and loss exist."""

    def build(splits: Splits, model: EmbeddingModel, loss_fn: EmbeddingLoss,
              device: torch.device) -> Distiller:
        taught = teacher.record.class_names
        if taught != list(splits.class_names):
            raise ValueError(
                f"the teacher was trained on classes {taught[:5]}... but the "
                f"student's data {student.data.source!r} has {splits.class_names[:5]}...: "
                "distil on the teacher's data (leave data=auto)")
        if cfg.kd_weight > 0 and not loss_fn.has_classes:
            raise ValueError("kd_weight > 0 needs student class logits, and loss "
                             f"{student.loss.name!r} has no class weights: use a "
                             "classification-style loss or kd_weight=0")
        return Distiller(teacher, loss_fn, student.model.embedding_dim, cfg,
                         splits.preprocessing, teacher.record.pre)

    return build


def distill(cfg: DistillConfig) -> RunResult:
    """Train ``cfg.train``'s model against the teacher; the run is tagged with the teacher's
    version."""
    configure_tracking()
    teacher, teacher_cfg, tags = load_teacher(cfg.teacher)
    student = cfg.with_teacher_defaults(teacher_cfg)
    changed = [n for n in SPLIT_FIELDS if student.param(n) != teacher_cfg.param(n)]
    if changed:
        log.warning("the student's %s differ from the teacher's: the teacher may have trained "
                    "on the student's validation or test samples", ", ".join(changed))
    if not (cfg.kd_weight or cfg.embedding_weight):
        log.warning("kd_weight and embedding_weight are both 0: this trains without the teacher")
    return train(student, tags=tags, run_name=f"{student.model.name}-{student.loss.name}-distilled",
                 aux=distiller_factory(teacher, cfg, student),
                 params=cfg.distill_params())
