"""The parts of a training config, each a small dataclass that checks itself: what is
trained on (data), what is trained (model), against what (loss), how (optim), where
(execution) and what is recorded (tracking). ``TrainConfig`` composes them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from training.config.params import check_choices, internal, option
from zoo.faces.stage import FACE_MODES, MISSING_POLICIES
from zoo.native import GENERIC, native_input
from zoo.values import is_false_word

#: How the peak learning rate grows with the number of data-parallel processes (each takes
#: its own ``batch_size`` samples per step, so one step sees ``nproc x batch_size``).
LR_SCALING = ("linear", "sqrt", "none")
#: ``faces`` left to follow the model ("none" is a face stage choice, so not None)
AUTO = "auto"
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")


def at_least(part: object, minimum: int, *names: str) -> None:
    """Each of ``names`` is ``minimum`` or more: 1 for counts and sizes, 0 for strengths."""
    for name in names:
        value = getattr(part, name)
        if value is not None and value < minimum:
            bound = f"at least {minimum}" if minimum else ">= 0"
            raise ValueError(f"{name} must be {bound}, got {value}")


def channel_values(text: str | None, name: str = "mean") -> list[float] | None:
    """``"0.5,0.5,0.5"`` → ``[0.5, 0.5, 0.5]``; None stays None."""
    if text is None:
        return None
    try:
        return [float(v) for v in str(text).replace(" ", "").strip("[]()").split(",") if v]
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a comma list of numbers") from None


def comma_list(text: str | None) -> list[str] | None:
    """``"a, b"`` → ``["a", "b"]``; None or empty stays None."""
    names = [v.strip() for v in str(text or "").split(",") if v.strip()]
    return names or None


@dataclass
class DataConfig:
    """The data, its split, and how its samples reach the model."""

    source: str = option("digits", "data source name, a folder-per-class image tree, or a .csv "
                                    "or .parquet table", param="data")
    label_column: str = option("label", "label column of a CSV or Parquet table")
    categorical_columns: Optional[str] = option(None, "comma list of a table's numeric columns "
                                                      "that hold categories (text columns "
                                                      "always do)")
    seed: int = option(0, "seed of the split (and, unless init_seed is set, of the "
                          "initialisation, batches and augmentation)")
    val_fraction: float = option(0.15, "fraction of each class held out for validation")
    test_fraction: float = option(0.2, "fraction of each class held out for the test metrics")
    open_set: float = option(0.0, "fraction of classes never trained on, evaluated as open_* "
                                  "metrics")
    image_size: Optional[int] = option(None, "images are resized to image_size x image_size "
                                             "(auto: the model's own input, e.g. dlib_resnet's "
                                             "150 px chips, iresnet's 112; else 32)")
    channels: Optional[int] = option(None, "image channels, grey images replicated (auto: the "
                                           "model's own, else 3)")
    mean: Optional[str] = option(None, "image normalisation mean per channel, comma list (auto: "
                                       "the pretrained or init model's, else fitted on the "
                                       "training split)")
    std: Optional[str] = option(None, "normalisation std per channel, comma list (auto: as mean)")
    interpolation: Optional[str] = option(None, "image resize filter: bilinear, bicubic, "
                                                "nearest, lanczos, box or hamming (auto: the "
                                                "pretrained or init model's, else bilinear)")
    augment: str = option("light", "image augmentation: light or strong jitter of the resized "
                                   "batch, or photo (image folders: a random-resized crop of "
                                   "each original file, flip and colour jitter, as timm trains "
                                   "on photos)", ("none", "light", "strong", "photo"))
    hflip: bool = option(False, "random horizontal flips (good for faces, wrong for digits)")
    loader_workers: Optional[int] = option(None, "processes that decode a folder read lazily "
                                                 "(too big to preload) ahead of the training "
                                                 "step (auto: one per core, at most 8; 0: in "
                                                 "the training process)")
    tta: str = option("none", "test-time augmentation of validation and test embeddings: flip "
                              "averages each image with its mirror (images only)",
                      ("none", "flip"))
    faces: str = option(AUTO, "the face stage on a folder of photos: align finds each photo's "
                                "faces, takes five landmarks and warps the largest face to dlib's "
                                "face-chip template at image_size (the faces extra); the model "
                                "records it and every server applies it (auto: the model's "
                                "own on a folder of photos: align for dlib_resnet; else none)",
                      (AUTO, *FACE_MODES))
    faces_missing: str = option("whole", "faces=align, a photo with no face found: whole (align "
                                         "the whole image), skip (leave it out) or fail",
                                MISSING_POLICIES)
    #: The input fields left to ``auto`` that ``resolve_input`` filled (state, not a parameter).
    auto_input: tuple[str, ...] = internal(())

    def __post_init__(self) -> None:
        check_choices(self)
        at_least(self, 1, "image_size", "channels")
        if self.loader_workers is not None and self.loader_workers < 0:
            raise ValueError(f"loader_workers must be >= 0, got {self.loader_workers}")
        if self.open_set is not None and not 0 <= self.open_set < 1:
            raise ValueError(f"open_set must be in [0, 1), got {self.open_set}")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation={self.interpolation!r} is not one of "
                             f"{', '.join(INTERPOLATIONS)}")
        for name in ("mean", "std"):
            values = channel_values(getattr(self, name), name)
            if values is not None and name == "std" and min(values) <= 0:
                raise ValueError(f"std must be > 0 per channel, got {getattr(self, name)}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("set mean and std together (one value per channel each), or "
                             "neither")

    def resolve_input(self, model: str) -> None:
        """Fill ``image_size``, ``channels`` and ``faces`` left unset from the input ``model``
        declares (``zoo.native``), else the generic one; a value set stays (the family warns
        where it differs). The face stage follows the model only on a folder of photos, the
        one kind of data it applies to."""
        own = native_input(model) or GENERIC
        filled = []
        for name in ("image_size", "channels", "faces"):
            if getattr(self, name) in (None, AUTO):
                value = getattr(own, name)
                if name == "faces" and not self.photo_folder:
                    value = GENERIC.faces
                setattr(self, name, value)
                filled.append(name)
        self.auto_input = tuple(filled)
        if self.faces != "none" and self.augment == "photo":
            raise ValueError("augment=photo crops the original files, not the aligned face "
                             "chips: use augment=light or strong with faces=align")

    @property
    def photo_folder(self) -> bool:
        """Whether the data is a folder (of photos, maybe faces), not a data set or table."""
        prefix, sep, rest = self.source.partition(":")
        return Path(rest if sep and prefix == "folder" else self.source).expanduser().is_dir()


@dataclass
class ModelConfig:
    """The architecture, and the weights it starts from."""

    name: str = option("resnet18", "model name (python -m zoo list) or timm/<any timm model>",
                       param="model")
    embedding_dim: int = option(128, "embedding width")
    stage: Optional[int] = option(None, "image models: the timm feature stage the embedding is "
                                        "read from (python -m zoo stages MODEL; auto: the whole "
                                        "network)")
    grid: int = option(1, "image models: average-pool the feature map to grid x grid cells, "
                          "concatenated before the neck (keeps where features are; 1: global "
                          "pool)")
    parts: bool = option(False, "with grid > 1: one embedding and one loss per grid cell, the "
                                "normalised parts concatenated (part-based model, PCB)")
    width_multiplier: float = option(1.0, "image models: scale the channels the way timm offers "
                                          "it (mobilenetv3 by name, bottleneck resnets by base "
                                          "width, convnext by dims)")
    act_layer: Optional[str] = option(None, "image models: activation passed to timm (relu, "
                                            "silu, gelu, hard_swish, ...; auto: the model's own)")
    norm_layer: Optional[str] = option(None, "image models: normalisation passed to timm "
                                             "(batchnorm, groupnorm, layernorm2d, ...; auto: "
                                             "the model's own)")
    drop_rate: float = option(0.0, "image models: timm's dropout before its (empty) head")
    drop_path_rate: float = option(0.0, "image models: stochastic depth (timm's "
                                        "drop_path_rate)")
    dropout: float = option(0.0, "dropout before the embedding layer")
    cnn_branch: str = option("convnextv2_atto", "model=hybrid: the timm CNN branch")
    transformer_branch: str = option("swinv2_tiny_window8_256", "model=hybrid: the timm SwinV2 "
                                                                "branch (built for image_size)")
    pretrained: Optional[str] = option(None, "start from pretrained weights: true (a timm "
                                             "backbone: timm's own, from the Hugging Face hub "
                                             "cache, HF_HUB_OFFLINE honoured; dlib_resnet: "
                                             "dlib's face model from the faces extra's package) "
                                             "or a checkpoint file (.safetensors, .pth, .bin; "
                                             "dlib_resnet: a dlib .dat); auto: from scratch")
    init: Optional[str] = option(None, "start from a zoo model trained earlier "
                                       "(models:/<name>@<alias>, models:/<name>/<version> or "
                                       "runs:/<id>/model): its architecture, preprocessing and "
                                       "backbone and neck weights; new classes get a new loss "
                                       "and head")

    def __post_init__(self) -> None:
        if isinstance(self.pretrained, str) and is_false_word(self.pretrained):
            self.pretrained = None
        at_least(self, 1, "embedding_dim", "grid")
        at_least(self, 0, "drop_rate", "drop_path_rate")
        if self.parts and self.grid < 2:
            raise ValueError("parts=true embeds each grid cell on its own: set grid >= 2")
        if self.parts and self.embedding_dim % (self.grid * self.grid):
            raise ValueError(f"parts=true splits embedding_dim={self.embedding_dim} into "
                             f"{self.grid * self.grid} equal parts: use a multiple of "
                             f"{self.grid * self.grid}")
        if self.pretrained and self.width_multiplier != 1.0:
            raise ValueError(f"pretrained weights are for the model's own width; "
                             f"width_multiplier={self.width_multiplier} would not fit them")
        if self.pretrained and self.init:
            raise ValueError("pretrained and init both name the starting weights: give one "
                             "(init already carries the weights its model started from)")

    @property
    def fine_tuning(self) -> bool:
        """Whether the run starts from trained weights (pretrained or init)."""
        return bool(self.pretrained or self.init)


@dataclass
class LossConfig:
    """The loss and its own knobs (None: the loss's default)."""

    name: str = option("arcface", "loss name (python -m zoo list)", param="loss")
    margin: Optional[float] = option(None, "margin of margin/triplet losses (auto: the loss "
                                           "default)")
    scale: Optional[float] = option(None, "logit scale of margin losses (auto: the loss "
                                          "default)")
    temperature: Optional[float] = option(None, "temperature of supcon/ntxent (auto: the loss "
                                                "default)")
    miner: str = option("semihard", "triplet miner", ("semihard", "batch_hard", "all"))
    kl_weight: Optional[float] = option(None, "elbo: weight of the KL term (beta; auto: 1.0)")
    sparsity: Optional[float] = option(None, "sparse_recon: weight of the L1 on the code "
                                             "(auto: 0.001)")
    samples_per_class: int = option(4, "K of the class-balanced P x K batches of pair losses")

    def __post_init__(self) -> None:
        check_choices(self)

    def options(self) -> dict[str, object]:
        """The knobs as ``create_loss`` keywords (None: the loss's own default)."""
        return {"margin": self.margin, "scale": self.scale, "temperature": self.temperature,
                "miner": self.miner, "kl_weight": self.kl_weight, "sparsity": self.sparsity}


#: What the fine-tuning controls become when a run starts from trained weights: the new
#: neck and head train alone for an epoch first (linear probing, then fine-tuning: Kumar et
#: al. 2022, LP-FT; FastReID's freeze_iters), and the pretrained backbone learns at a tenth of
#: the new layers' rate (discriminative fine-tuning: Howard & Ruder 2018). Layer-wise decay
#: (BEiT, MAE: 0.65-0.75 for ViTs) stays off unless asked for.
FINE_TUNING_DEFAULTS = {"freeze_epochs": 1, "backbone_lr": 0.1, "lr_decay": 1.0}
FROM_SCRATCH_DEFAULTS = {"freeze_epochs": 0, "backbone_lr": 1.0, "lr_decay": 1.0}


@dataclass
class OptimConfig:
    """The optimisation: schedule, regularisers, the epoch kept, fine-tuning controls."""

    epochs: int = option(15, "training epochs (the best validation epoch is kept; 0: train "
                             "nothing and evaluate the starting weights, e.g. pretrained=true)")
    batch_size: int = option(32, "samples per batch (P classes x samples_per_class for pair "
                                 "losses)")
    lr: float = option(4e-3, "peak learning rate of AdamW (the new layers' when fine-tuning)")
    weight_decay: float = option(0.05, "AdamW weight decay")
    schedule: str = option("cosine", "learning-rate schedule after warm-up",
                           ("cosine", "onecycle"))
    warmup_epochs: float = option(1.0, "linear warm-up length in epochs (cosine schedule)")
    grad_clip: float = option(5.0, "max gradient norm (0 disables clipping)")
    patience: int = option(0, "stop after this many epochs without a better monitor value (0: "
                              "off)")
    monitor: str = option("val_map_at_r", "validation metric that picks the best epoch (ties: "
                                          "the later one) and drives early stopping; none: keep "
                                          "the last epoch")
    freeze_epochs: Optional[int] = option(None, "epochs the neck and head train alone, the "
                                                "backbone and its BatchNorm statistics frozen "
                                                "(auto: 1 when pretrained or init is set, "
                                                "else 0)")
    backbone_lr: Optional[float] = option(None, "the backbone's learning rate as a factor of lr "
                                                "(auto: 0.1 when pretrained or init is set, "
                                                "else 1)")
    lr_decay: Optional[float] = option(None, "layer-wise learning-rate decay of timm backbones "
                                             "in (0, 1]: each layer down gets this factor more "
                                             "(timm's param_groups_layer_decay; auto: 1, off)")
    lr_scaling: str = option("linear", "how lr grows with nproc (linear: lr x nproc, sqrt, "
                                       "none)", LR_SCALING)
    ema_decay: float = option(0.0, "exponential moving average of the weights, validated, "
                                   "tested and logged in place of the raw weights (0: off; "
                                   "e.g. 0.998)")
    ema_warmup: bool = option(True, "ramp the EMA decay up over the first steps (timm's "
                                    "warm-up), so a short run is not held back by its initial "
                                    "weights")
    sam_rho: float = option(0.0, "sharpness-aware minimisation radius around AdamW (0: off; "
                                 "e.g. 0.05); each step costs two forward/backward passes")
    lookahead: bool = option(False, "Lookahead around the optimiser (k=5 fast steps, "
                                    "alpha=0.5)")
    grad_centralization: bool = option(False, "subtract each weight gradient's per-output mean "
                                              "before the step (gradient centralisation)")
    mix: str = option("none", "mix pairs of training samples (classification-style losses "
                              "only; cutmix for images)", ("none", "mixup", "cutmix"))
    mix_alpha: float = option(1.0, "Beta(alpha, alpha) of the mixing ratio")

    def __post_init__(self) -> None:
        check_choices(self)
        at_least(self, 1, "batch_size")
        at_least(self, 0, "epochs", "sam_rho", "mix_alpha")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.mix != "none" and self.mix_alpha <= 0:
            raise ValueError(f"mix={self.mix} needs mix_alpha > 0, got {self.mix_alpha}")

    def resolve_fine_tuning(self, fine_tuning: bool) -> None:
        """Fill the fine-tuning controls left to ``auto`` and check them."""
        defaults = FINE_TUNING_DEFAULTS if fine_tuning else FROM_SCRATCH_DEFAULTS
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.freeze_epochs < 0:
            raise ValueError(f"freeze_epochs must be >= 0, got {self.freeze_epochs}")
        if self.backbone_lr < 0:
            raise ValueError(f"backbone_lr must be >= 0 (a factor of lr), got {self.backbone_lr}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay}")


@dataclass
class ExecutionConfig:
    """Where and how the run executes: devices, processes, seeds of the run, checkpoints."""

    init_seed: Optional[int] = option(None, "seed of the initialisation, batch order and "
                                            "augmentation (auto: seed); ensemble members on one "
                                            "split differ in it")
    amp: str = option("auto", "mixed precision: auto (on with CUDA), on, off",
                      ("auto", "on", "off"))
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    num_threads: int = option(0, "torch CPU threads (0: torch's default)")
    nproc: int = option(1, "data-parallel processes started with torchrun (DDP: gloo on CPU, "
                           "NCCL with one GPU each); each takes batch_size samples per step")
    checkpoint: bool = option(True, "write a resumable checkpoint every epoch (logged to the "
                                    "run under checkpoints/, deleted when the run finishes)")
    resume_run: Optional[str] = option(None, "id of a run that stopped (killed, failed, Ctrl-C) "
                                             "to continue from its last checkpoint, in that same "
                                             "run and with that run's parameters")

    def __post_init__(self) -> None:
        check_choices(self)
        at_least(self, 1, "nproc")


@dataclass
class TrackingConfig:
    """What the run records in MLflow beyond its parameters and metrics."""

    experiment: Optional[str] = option(None, "MLflow experiment when run directly (auto: "
                                             "zoo-<dataset>); under `mlflow run` use "
                                             "--experiment-name")
    log_model: bool = option(True, "log the trained model to MLflow")
    plots: bool = option(True, "log the learning curves, confusion matrix and t-SNE embedding "
                               "map (about 3 s per run on a small test split)")
