"""``TrainConfig``: the single source of truth for every training parameter.

The CLI (``python -m training.commands.train``), the ``MLproject`` entry points (generated from this
class by ``python -m training.mlproject``) and the MLflow run parameters all come from
these fields, so a default changes in exactly one place.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, get_type_hints

from training.presets import apply_preset, preset_fields, preset_names
from zoo.values import base_type, format_value, is_false_word, parse_value


#: How the peak learning rate grows with the number of data-parallel processes (each takes
#: its own ``batch_size`` samples per step, so one step sees ``nproc x batch_size``).
LR_SCALING = ("linear", "sqrt", "none")


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """One model × loss training run."""

    #: Fields a preset leaves alone in this class (a sweep sets model and loss per child).
    PRESET_SKIP: ClassVar[tuple[str, ...]] = ()
    #: Why ``nproc`` > 1 is refused, for entry points whose runs train in one process each
    #: (empty: data-parallel training is allowed).
    ONE_PROCESS_PER_RUN: ClassVar[str] = ""

    preset: str = _f("none", "a named recipe that fills in the parameters left at their "
                             "defaults (docs/results.md)", preset_names())
    model: str = _f("resnet18", "model name (python -m zoo list) or timm/<any timm model>")
    loss: str = _f("arcface", "loss name (python -m zoo list)")
    data: str = _f("digits", "data source name, a folder-per-class image tree, or a .csv file")
    epochs: int = _f(15, "training epochs (the best validation epoch is kept)")
    batch_size: int = _f(32, "samples per batch (P classes x samples_per_class for pair losses)")
    lr: float = _f(4e-3, "peak learning rate of AdamW (the new layers' when fine-tuning)")
    weight_decay: float = _f(0.05, "AdamW weight decay")
    embedding_dim: int = _f(128, "embedding width")
    stage: Optional[int] = _f(None, "image models: the timm feature stage the embedding is read "
                                    "from (python -m zoo stages MODEL; auto: the whole network)")
    grid: int = _f(1, "image models: average-pool the feature map to grid x grid cells, "
                      "concatenated before the neck (keeps where features are; 1: global pool)")
    parts: bool = _f(False, "with grid > 1: one embedding and one loss per grid cell, the "
                            "normalised parts concatenated (part-based model, PCB)")
    width_multiplier: float = _f(1.0, "image models: scale the channels the way timm offers it "
                                      "(mobilenetv3 by name, bottleneck resnets by base width, "
                                      "convnext by dims)")
    act_layer: Optional[str] = _f(None, "image models: activation passed to timm (relu, silu, "
                                        "gelu, hard_swish, ...; auto: the model's own)")
    norm_layer: Optional[str] = _f(None, "image models: normalisation passed to timm "
                                         "(batchnorm, groupnorm, layernorm2d, ...; auto: the "
                                         "model's own)")
    drop_rate: float = _f(0.0, "image models: timm's dropout before its (empty) head")
    drop_path_rate: float = _f(0.0, "image models: stochastic depth (timm's drop_path_rate)")
    pretrained: Optional[str] = _f(None, "start the timm backbone from pretrained weights: true "
                                         "(timm's own, from the Hugging Face hub cache; "
                                         "HF_HUB_OFFLINE honoured) or a checkpoint file "
                                         "(.safetensors, .pth, .bin); auto: from scratch")
    init: Optional[str] = _f(None, "start from a zoo model trained earlier (models:/<name>@<alias>, "
                                   "models:/<name>/<version> or runs:/<id>/model): its "
                                   "architecture, preprocessing and backbone and neck weights; "
                                   "new classes get a new loss and head")
    freeze_epochs: Optional[int] = _f(None, "epochs the neck and head train alone, the backbone "
                                            "and its BatchNorm statistics frozen (auto: 1 when "
                                            "pretrained or init is set, else 0)")
    backbone_lr: Optional[float] = _f(None, "the backbone's learning rate as a factor of lr (auto: "
                                            "0.1 when pretrained or init is set, else 1)")
    lr_decay: Optional[float] = _f(None, "layer-wise learning-rate decay of timm backbones in "
                                         "(0, 1]: each layer down gets this factor more "
                                         "(timm's param_groups_layer_decay; auto: 1, off)")
    mean: Optional[str] = _f(None, "image normalisation mean per channel, comma list (auto: the "
                                   "pretrained or init model's, else fitted on the training split)")
    std: Optional[str] = _f(None, "normalisation std per channel, comma list (auto: as mean)")
    interpolation: Optional[str] = _f(None, "image resize filter: bilinear, bicubic, nearest, "
                                            "lanczos, box or hamming (auto: the pretrained or init "
                                            "model's, else bilinear)")
    cnn_branch: str = _f("convnextv2_atto", "model=hybrid: the timm CNN branch")
    transformer_branch: str = _f("swinv2_tiny_window8_256", "model=hybrid: the timm SwinV2 "
                                                            "branch (built for image_size)")
    image_size: int = _f(32, "images are resized to image_size x image_size")
    channels: int = _f(3, "image channels (grey images are replicated)")
    seed: int = _f(0, "seed of the split (and, unless init_seed is set, of the "
                      "initialisation, batches and augmentation)")
    init_seed: Optional[int] = _f(None, "seed of the initialisation, batch order and "
                                        "augmentation (auto: seed); ensemble members on one "
                                        "split differ in it")
    experiment: Optional[str] = _f(None, "MLflow experiment when run directly (auto: "
                                         "zoo-<dataset>); under `mlflow run` use --experiment-name")
    val_fraction: float = _f(0.15, "fraction of each class held out for validation")
    test_fraction: float = _f(0.2, "fraction of each class held out for the test metrics")
    open_set: float = _f(0.0, "fraction of classes never trained on, evaluated as open_* metrics")
    label_column: str = _f("label", "label column of a CSV source")
    schedule: str = _f("cosine", "learning-rate schedule after warm-up", ("cosine", "onecycle"))
    warmup_epochs: float = _f(1.0, "linear warm-up length in epochs (cosine schedule)")
    grad_clip: float = _f(5.0, "max gradient norm (0 disables clipping)")
    patience: int = _f(0, "stop after this many epochs without a better monitor value (0: off)")
    monitor: str = _f("val_map_at_r", "validation metric that picks the best epoch (ties: the "
                                      "later one) and drives early stopping; none: keep the "
                                      "last epoch")
    augment: str = _f("light", "image augmentation strength", ("none", "light", "strong"))
    hflip: bool = _f(False, "random horizontal flips (good for faces, wrong for digits)")
    margin: Optional[float] = _f(None, "margin of margin/triplet losses (auto: the loss default)")
    scale: Optional[float] = _f(None, "logit scale of margin losses (auto: the loss default)")
    temperature: Optional[float] = _f(None, "temperature of supcon/ntxent (auto: the loss default)")
    miner: str = _f("semihard", "triplet miner", ("semihard", "batch_hard", "all"))
    kl_weight: Optional[float] = _f(None, "elbo: weight of the KL term (beta; auto: 1.0)")
    sparsity: Optional[float] = _f(None, "sparse_recon: weight of the L1 on the code "
                                         "(auto: 0.001)")
    samples_per_class: int = _f(4, "K of the class-balanced P x K batches of pair losses")
    dropout: float = _f(0.0, "dropout before the embedding layer")
    ema_decay: float = _f(0.0, "exponential moving average of the weights, validated, tested and "
                               "logged in place of the raw weights (0: off; e.g. 0.998)")
    ema_warmup: bool = _f(True, "ramp the EMA decay up over the first steps (timm's warm-up), "
                                "so a short run is not held back by its initial weights")
    sam_rho: float = _f(0.0, "sharpness-aware minimisation radius around AdamW (0: off; "
                             "e.g. 0.05); each step costs two forward/backward passes")
    lookahead: bool = _f(False, "Lookahead around the optimiser (k=5 fast steps, alpha=0.5)")
    grad_centralization: bool = _f(False, "subtract each weight gradient's per-output mean "
                                          "before the step (gradient centralisation)")
    mix: str = _f("none", "mix pairs of training samples (classification-style losses only; "
                          "cutmix for images)", ("none", "mixup", "cutmix"))
    mix_alpha: float = _f(1.0, "Beta(alpha, alpha) of the mixing ratio")
    tta: str = _f("none", "test-time augmentation of validation and test embeddings: flip "
                          "averages each image with its mirror (images only)", ("none", "flip"))
    amp: str = _f("auto", "mixed precision: auto (on with CUDA), on, off", ("auto", "on", "off"))
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    num_threads: int = _f(0, "torch CPU threads (0: torch's default)")
    nproc: int = _f(1, "data-parallel processes started with torchrun (DDP: gloo on CPU, NCCL "
                       "with one GPU each); each takes batch_size samples per step")
    lr_scaling: str = _f("linear", "how lr grows with nproc (linear: lr x nproc, sqrt, none)",
                         LR_SCALING)
    log_model: bool = _f(True, "log the trained model to MLflow")
    plots: bool = _f(True, "log the learning curves, confusion matrix and t-SNE embedding map "
                           "(about 3 s per run on a small test split)")
    checkpoint: bool = _f(True, "write a resumable checkpoint every epoch (logged to the run "
                                "under checkpoints/, deleted when the run finishes)")
    resume_run: Optional[str] = _f(None, "id of a run that stopped (killed, failed, Ctrl-C) to "
                                         "continue from its last checkpoint, in that same run "
                                         "and with that run's parameters")

    def to_params(self) -> dict[str, str]:
        """Every field as an MLflow parameter string (None as ``auto``)."""
        return {k: format_value(v) for k, v in dataclasses.asdict(self).items()}

    @property
    def fine_tuning(self) -> bool:
        """Whether the run starts from trained weights (pretrained or init)."""
        return bool(self.pretrained or self.init)

    @property
    def training_seed(self) -> int:
        """What seeds the weights, batches and augmentation (not the split)."""
        return self.seed if self.init_seed is None else self.init_seed

    @property
    def preset_changed(self) -> tuple[str, ...]:
        """The fields whose value the preset set (see ``training.presets.preset_fields``)."""
        return preset_fields(self, skip=self.PRESET_SKIP)

    def as_applied(self, cls: type["TrainConfig"], **changes: Any) -> "TrainConfig":
        """This config's values (preset already applied) as a ``cls``, with ``changes``;
        the preset is recorded but not applied again (it would overwrite ``changes`` that
        happen to equal a default)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in dataclasses.asdict(self).items() if k in names}
        out = cls(**{**values, **changes, "preset": "none"})
        out.preset = self.preset
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from strings or typed values; unknown keys are an error that names them."""
        return config_from_dict(cls, values, "training")

    @classmethod
    def from_run(cls, params: dict[str, str], tags: dict[str, str]) -> "TrainConfig":
        """The config a run was trained with, from its parameters (other keys ignored) and
        its ``zoo.resolved.<param>`` tags (what ``auto`` or a preset made of a parameter
        that ``mlflow run`` had logged)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in params.items() if k in known}
        values.update({k[len(RESOLVED_PREFIX):]: v for k, v in tags.items()
                       if k.startswith(RESOLVED_PREFIX) and k[len(RESOLVED_PREFIX):] in known})
        return cls.from_dict(values)

    def __post_init__(self) -> None:
        apply_preset(self, skip=self.PRESET_SKIP)
        check_choices(self)
        for name in ("epochs", "batch_size", "embedding_dim", "image_size", "channels", "grid",
                     "nproc"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.nproc > 1 and self.ONE_PROCESS_PER_RUN:
            raise ValueError(f"nproc={self.nproc} is for single runs (-e train); "
                             f"{self.ONE_PROCESS_PER_RUN}")
        if self.open_set is not None and not 0 <= self.open_set < 1:
            raise ValueError(f"open_set must be in [0, 1), got {self.open_set}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        for name in ("sam_rho", "mix_alpha", "drop_rate", "drop_path_rate"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.parts and self.grid < 2:
            raise ValueError("parts=true embeds each grid cell on its own: set grid >= 2")
        if self.parts and self.embedding_dim % (self.grid * self.grid):
            raise ValueError(f"parts=true splits embedding_dim={self.embedding_dim} into "
                             f"{self.grid * self.grid} equal parts: use a multiple of "
                             f"{self.grid * self.grid}")
        if self.mix != "none" and self.mix_alpha <= 0:
            raise ValueError(f"mix={self.mix} needs mix_alpha > 0, got {self.mix_alpha}")
        check_fine_tuning(self)


#: What the fine-tuning controls become when a run starts from trained weights: the new
#: neck and head train alone for an epoch first (linear probing, then fine-tuning: Kumar et
#: al. 2022, LP-FT; FastReID's freeze_iters), and the pretrained backbone learns at a tenth of
#: the new layers' rate (discriminative fine-tuning: Howard & Ruder 2018). Layer-wise decay
#: (BEiT, MAE: 0.65-0.75 for ViTs) stays off unless asked for.
FINE_TUNING_DEFAULTS = {"freeze_epochs": 1, "backbone_lr": 0.1, "lr_decay": 1.0}
FROM_SCRATCH_DEFAULTS = {"freeze_epochs": 0, "backbone_lr": 1.0, "lr_decay": 1.0}
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")


def check_fine_tuning(cfg: Any) -> None:
    """Fill the fine-tuning controls left to ``auto`` and check all of them."""
    if isinstance(cfg.pretrained, str) and is_false_word(cfg.pretrained):
        cfg.pretrained = None
    defaults = FINE_TUNING_DEFAULTS if cfg.fine_tuning else FROM_SCRATCH_DEFAULTS
    for name, value in defaults.items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, value)
    if cfg.freeze_epochs < 0:
        raise ValueError(f"freeze_epochs must be >= 0, got {cfg.freeze_epochs}")
    if cfg.backbone_lr < 0:
        raise ValueError(f"backbone_lr must be >= 0 (a factor of lr), got {cfg.backbone_lr}")
    if not 0 < cfg.lr_decay <= 1:
        raise ValueError(f"lr_decay must be in (0, 1], got {cfg.lr_decay}")
    if cfg.pretrained and cfg.width_multiplier != 1.0:
        raise ValueError(f"pretrained weights are for the model's own width; "
                         f"width_multiplier={cfg.width_multiplier} would not fit them")
    if cfg.pretrained and cfg.init:
        raise ValueError("pretrained and init both name the starting weights: give one (init "
                         "already carries the weights its model started from)")
    if cfg.interpolation is not None and cfg.interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation={cfg.interpolation!r} is not one of "
                         f"{', '.join(INTERPOLATIONS)}")
    for name in ("mean", "std"):
        values = channel_values(getattr(cfg, name), name)
        if values is not None and name == "std" and min(values) <= 0:
            raise ValueError(f"std must be > 0 per channel, got {getattr(cfg, name)}")
    if (cfg.mean is None) != (cfg.std is None):
        raise ValueError("set mean and std together (one value per channel each), or neither")


def channel_values(text: str | None, name: str = "mean") -> list[float] | None:
    """``"0.5,0.5,0.5"`` → ``[0.5, 0.5, 0.5]``; None stays None."""
    if text is None:
        return None
    try:
        return [float(v) for v in str(text).replace(" ", "").strip("[]()").split(",") if v]
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a comma list of numbers") from None


def check_choices(config: Any) -> None:
    """Every field declared with ``choices`` holds one of them; else an error naming both."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        if choices and getattr(config, f.name) not in choices:
            raise ValueError(f"{f.name}={getattr(config, f.name)!r} is not one of "
                             f"{', '.join(choices)}")


def config_from_dict(cls: type, values: dict[str, Any], what: str) -> Any:
    """A config dataclass from CLI / MLproject strings or typed values, each parsed to its
    field's type; unknown keys are an error that names them (``what``: whose parameters)."""
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} parameter(s): {', '.join(unknown)}")
    return cls(**{k: parse_value(hints[k], v, k) for k, v in values.items()})


#: The fields that decide which samples are test samples (and which classes are unseen).
SPLIT_FIELDS = ("data", "seed", "val_fraction", "test_fraction", "open_set", "label_column")

#: Tags ``zoo.resolved.<param>`` hold what an ``auto`` parameter (or a preset) made of a
#: parameter that ``mlflow run`` had already logged.
RESOLVED_PREFIX = "zoo.resolved."


def field_types(config_cls: type = TrainConfig) -> dict[str, Any]:
    """Field name → base Python type (for the CLI and MLproject generator)."""
    return {k: base_type(v) for k, v in get_type_hints(config_cls).items()}


