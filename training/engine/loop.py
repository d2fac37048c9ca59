"""The training loop: AdamW, warm-up + cosine (or OneCycle), clipping, AMP, early stopping.

Data arrive preloaded as tensors (or a lazy image set with the same indexing), so a batch
is an index tensor: no per-sample decoding on every epoch, no DataLoader workers to feed.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from training.config import TrainConfig
from training.engine.checkpoint import FORMAT as CHECKPOINT_FORMAT, restore_rng, rng_state
from training.engine.distributed import World, unused_parameters, wrap
from training.engine.input_pipeline import EpochInput, default_loader_workers
from training.engine.mixing import MixedBatch, mix_batch
from training.engine.evaluation import validate
from training.engine.optim import (Optimizer, centralize_gradients, frozen_norm_stats,
                                     make_optimizer)
from training.engine.param_groups import backbone_groups, param_groups
from training.engine.step import AuxiliaryLoss, TrainStep
from zoo.data import ImageAugment, PKBatchSampler, Split, batch_to
from zoo.data.photo import photo_view
from zoo.losses import EmbeddingLoss
from zoo.metrics import higher_is_better
from zoo.models import EmbeddingModel

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]

#: timm's EMA warm-up exponent for runs of thousands of steps (decay 0.99 after ~460 steps)
EMA_WARMUP_POWER = 0.75


@dataclass
class History:
    """Per-epoch metrics, the best epoch and how training ended."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float = float("nan")
    stopped_early: bool = False
    train_time_s: float = 0.0  # wall time of the epochs (training and validation), resumes too
    untrained: dict[str, float] = field(default_factory=dict)  # epochs=0: the start's validation


def pick_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} asked for, but CUDA is not available here")
    return device


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU has it, else fp16; None when AMP is off (always off on CPU)."""
    if cfg.execution.amp == "off" or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def make_augment(cfg: TrainConfig) -> ImageAugment | None:
    """``light``: small affine jitter; ``strong``: larger jitter plus random erasing;
    ``photo`` happens as the files are read (``zoo.data.photo``), not on the batch."""
    if cfg.data.augment in ("none", "photo"):
        return None
    if cfg.data.augment == "strong":
        return ImageAugment.preset("faces", hflip=cfg.data.hflip, strength=1.5)
    return ImageAugment.preset("default", hflip=cfg.data.hflip)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: linear warm-up then cosine to 1% of peak, or OneCycle."""
    total = max(1, cfg.optim.epochs * steps_per_epoch)
    if cfg.optim.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total
        )
    warmup = min(total - 1, int(cfg.optim.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return 0.01 + 0.99 * step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batches(
    split: Split, cfg: TrainConfig, loss_fn: EmbeddingLoss, epoch: int, world: World = World(),
) -> Iterator[torch.Tensor]:
    """Index batches: class-balanced P×K for pair losses, a seeded shuffle otherwise.

    Data-parallel, each process gets its own share (``DistributedSampler``, or every
    ``nproc``-th P×K batch), the same number of batches on every process.
    """
    n = len(split)
    if loss_fn.needs_pk_batches:
        sampler = PKBatchSampler(
            split.y, batch_size=cfg.optim.batch_size, k=cfg.loss.samples_per_class,
            seed=cfg.training_seed, num_replicas=world.size, rank=world.rank,
        )
        sampler.set_epoch(epoch)
        for idx in sampler:
            yield torch.as_tensor(idx, dtype=torch.long)
        return
    if world.distributed:
        shares = DistributedSampler(range(n), num_replicas=world.size, rank=world.rank,
                                    shuffle=True, seed=cfg.training_seed, drop_last=True)
        shares.set_epoch(epoch)
        order = torch.as_tensor(list(shares), dtype=torch.long)
    else:
        gen = torch.Generator().manual_seed(cfg.training_seed * 1000 + epoch)
        order = torch.randperm(n, generator=gen)
    n = len(order)
    size = min(cfg.optim.batch_size, n)
    # Drop the ragged tail: a batch of 1 breaks BatchNorm and adds noise.
    for start in range(0, n - size + 1, size):
        yield order[start:start + size]


def steps_per_epoch(split: Split, cfg: TrainConfig, loss_fn: EmbeddingLoss,
                    world: World = World()) -> int:
    """How many batches one epoch has on each process (for the schedule and progress bar)."""
    if loss_fn.needs_pk_batches:
        return max(1, len(split) // (cfg.optim.batch_size * world.size))
    share = len(split) // world.size
    return max(1, share // min(cfg.optim.batch_size, share))


def check_methods(cfg: TrainConfig, model: EmbeddingModel, loss_fn: EmbeddingLoss,
                  device: torch.device) -> None:
    """Refuse combinations that cannot work, naming the parameter to change."""
    missing = loss_fn.reads_outputs - getattr(model, "training_outputs", frozenset())
    if missing:
        raise ValueError(f"loss {cfg.loss.name!r} reads the model's {', '.join(sorted(missing))}, "
                         f"which {cfg.model.name!r} does not give: it needs an autoencoder "
                         "(elbo: vae; sparse_recon: vae or sae)")
    if cfg.optim.mix != "none" and (loss_fn.needs_pk_batches or not loss_fn.has_classes):
        raise ValueError(f"mix={cfg.optim.mix} needs a classification-style loss (one with class "
                         f"weights: softmax, focal, center, arcface, ...); {cfg.loss.name!r} "
                         "compares pairs of samples, whose labels a mix would blur")
    if cfg.optim.mix == "cutmix" and model.modality != "image":
        raise ValueError("mix=cutmix pastes image boxes; use mix=mixup for tabular data")
    if cfg.data.tta != "none" and model.modality != "image":
        raise ValueError(f"tta={cfg.data.tta} flips images; tabular data has no test-time "
                         "augmentation (use tta=none)")
    if cfg.optim.sam_rho > 0 and amp_dtype(cfg, device) is torch.float16:
        raise ValueError("sam_rho > 0 with float16 AMP is not supported (this GPU has no "
                         "bfloat16): use amp=off")


@dataclass
class Stepping:
    """What steps the weights: the optimizer (SAM and Lookahead inside when on), its per-step
    schedule, the AMP gradient scaler, and the parameters whose gradients are clipped."""

    opt: Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    trained: list[nn.Parameter]


def build_stepping(model: EmbeddingModel, loss_fn: EmbeddingLoss, aux: AuxiliaryLoss | None,
                   cfg: TrainConfig, train: Split, world: World, dtype: torch.dtype | None
                   ) -> Stepping:
    """AdamW over the model's, the loss's and the auxiliary terms' parameter groups, at the
    learning rate scaled for the world's size."""
    lr = cfg.optim.lr * world.lr_factor(cfg.optim.lr_scaling)
    groups = param_groups(model, loss_fn, cfg.optim.weight_decay, lr, cfg.optim.backbone_lr,
                          cfg.optim.lr_decay)
    if aux is not None:
        groups.append({"params": [p for p in aux.parameters() if p.requires_grad],
                       "weight_decay": cfg.optim.weight_decay, "lr": lr})
    opt = make_optimizer([g for g in groups if g["params"]], lr, cfg.optim.sam_rho,
                         cfg.optim.lookahead)
    scheduler = make_scheduler(opt.inner, cfg, steps_per_epoch(train, cfg, loss_fn, world))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)
    return Stepping(opt, scheduler, scaler, [p for g in groups for p in g["params"]])


@dataclass
class LoopState:
    """Everything an epoch changes and a checkpoint holds: the weights (and their moving
    average), the stepping, the mixing stream, the history and the best epoch's weights."""

    pair: nn.ModuleDict  # {"model": ..., "loss": ...}
    aux: AuxiliaryLoss | None
    ema: ModelEmaV3 | None
    stepping: Stepping
    mix_rng: np.random.Generator
    history: History = field(default_factory=History)
    best_state: dict[str, Any] | None = None
    since_best: int = 0
    step: int = 0
    first_epoch: int = 1

    @property
    def evaluated(self) -> nn.ModuleDict:
        """What is validated and kept: the moving average when on, else the weights."""
        return self.ema.module if self.ema is not None else self.pair

    def drop_heads(self) -> None:
        """Logits are not trained through the model: no head while training or saving."""
        self.pair["model"].set_head(None)
        self.evaluated["model"].set_head(None)

    def checkpoint(self, epoch: int) -> dict[str, Any]:
        self.drop_heads()
        st = self.stepping
        return {
            "format": CHECKPOINT_FORMAT, "epoch": epoch, "step": self.step,
            "since_best": self.since_best, "weights": self.pair.state_dict(),
            "best_weights": self.best_state,
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "aux": self.aux.state_dict() if self.aux is not None else None,
            "optimizer": st.opt.state_dict(), "scheduler": st.scheduler.state_dict(),
            "scaler": st.scaler.state_dict(), "history": dataclasses.asdict(self.history),
            "rng": rng_state(self.mix_rng),
        }

    def restore(self, resume: dict[str, Any]) -> None:
        """Continue after ``resume``'s epoch exactly as the uninterrupted run would have."""
        self.pair.load_state_dict(resume["weights"])
        if self.ema is not None:
            self.ema.module.load_state_dict(resume["ema"])
        if self.aux is not None:
            self.aux.load_state_dict(resume["aux"])
        self.stepping.opt.load_state_dict(resume["optimizer"])
        self.stepping.scheduler.load_state_dict(resume["scheduler"])
        self.stepping.scaler.load_state_dict(resume["scaler"])
        self.history = History(**resume["history"])
        self.best_state, self.since_best = resume["best_weights"], resume["since_best"]
        self.step = resume["step"]
        self.first_epoch = int(resume["epoch"]) + 1
        restore_rng(resume["rng"], self.mix_rng)


@dataclass
class EpochFeed:
    """Where an epoch's batches come from: the split (or its files cropped afresh with
    ``augment=photo``), the processes that decode a lazily read folder, and the batch
    augmentation."""

    split: Split
    x: Any
    workers: int
    augment: ImageAugment | None
    steps: int

    @classmethod
    def of(cls, train: Split, model: EmbeddingModel, cfg: TrainConfig, loss_fn: EmbeddingLoss,
           world: World) -> EpochFeed:
        image = model.modality == "image"
        x = (photo_view(train.x, cfg.data.hflip) if cfg.data.augment == "photo" and image
             else train.x)
        # under DDP the cores are shared by rank
        workers = (max(1, default_loader_workers() // world.size)
                   if cfg.data.loader_workers is None else cfg.data.loader_workers)
        return cls(train, x, workers, make_augment(cfg) if image else None,
                   steps_per_epoch(train, cfg, loss_fn, world))


def fit(
    model: EmbeddingModel,
    loss_fn: EmbeddingLoss,
    train: Split,
    val: Split,
    cfg: TrainConfig,
    device: torch.device,
    num_classes: int,
    on_epoch: EpochCallback | None = None,
    aux: AuxiliaryLoss | None = None,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
    world: World = World(),
) -> History:
    """Train, validate every epoch, keep the best epoch's weights (restored at the end).

    With ``ema_decay`` the moving average of model and loss weights is what is validated,
    kept and returned; with ``sam_rho`` every step takes a second pass at perturbed weights.
    ``on_checkpoint`` receives the loop's whole state after every epoch; ``resume`` (such a
    state) continues after its epoch exactly as the uninterrupted run would have.
    With a ``world`` of several processes the step runs inside DistributedDataParallel on
    each process's share of the batches, the training metrics are summed over the processes,
    and rank 0 validates and tells the others the result (only rank 0 passes callbacks).
    """
    check_methods(cfg, model, loss_fn, device)
    model.to(device)
    loss_fn.to(device)
    if cfg.optim.epochs == 0:
        return untrained(model, loss_fn, train, val, cfg, device, num_classes, on_epoch, world)
    check_monitor(cfg, val)
    if aux is not None:
        aux.to(device)
    dtype = amp_dtype(cfg, device)
    stepping = build_stepping(model, loss_fn, aux, cfg, train, world, dtype)
    model.set_head(None)  # logits are not trained through the model; skip them
    pair = nn.ModuleDict({"model": model, "loss": loss_fn})
    step_module = _step_module(pair, aux, cfg, train, dtype, device, world)
    # after DDP's wrap, which gives every process rank 0's weights
    state = LoopState(pair, aux, _moving_average(pair, cfg), stepping,
                      np.random.default_rng(cfg.training_seed))
    if resume is not None:
        state.restore(resume)
        log.info("resuming after epoch %d of %d", state.first_epoch - 1, cfg.optim.epochs)
    feed = EpochFeed.of(train, model, cfg, loss_fn, world)
    better = cfg.optim.monitor == "none" or higher_is_better(cfg.optim.monitor)
    for epoch in range(state.first_epoch, cfg.optim.epochs + 1):
        started = time.perf_counter()
        metrics = train_epoch(state, step_module, feed, cfg, epoch, device, world)
        world.sync_buffers(pair)
        if state.ema is not None:
            world.sync_buffers(state.ema.module)
        if len(val):
            metrics.update(world.broadcast(
                validate(state.evaluated["model"], state.evaluated["loss"], train, val, device,
                         num_classes, dtype, cfg.data.tta) if world.is_main else None))
        state.history.epochs.append(metrics)
        state.history.train_time_s += time.perf_counter() - started
        keep_if_best(state, cfg, monitored(cfg, metrics, epoch, len(val), num_classes), epoch,
                     better)
        if world.is_main:
            log.info("epoch %d/%d: %s", epoch, cfg.optim.epochs,
                     ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if on_checkpoint is not None:
            on_checkpoint(state.checkpoint(epoch))
        if cfg.optim.patience and state.since_best >= cfg.optim.patience:
            state.history.stopped_early = True
            log.info("early stop: no better %s for %d epochs", cfg.optim.monitor,
                     cfg.optim.patience)
            break
    return finish(state, cfg)


def untrained(model: EmbeddingModel, loss_fn: EmbeddingLoss, train: Split, val: Split,
              cfg: TrainConfig, device: torch.device, num_classes: int,
              on_epoch: EpochCallback | None, world: World) -> History:
    """``epochs=0``: nothing is trained; the starting weights are validated once (as epoch 0,
    with class prototypes for a head, the loss being untrained), so the run can be ranked
    beside trained ones."""
    history = History()
    started = time.perf_counter()
    if len(val) and world.is_main:
        history.untrained = validate(model, loss_fn, train, val, device, num_classes,
                                     amp_dtype(cfg, device), cfg.data.tta, prototypes=True)
        log.info("epochs=0: the starting weights, untrained: %s",
                 ", ".join(f"{k}={v:.4g}" for k, v in history.untrained.items()))
    model.set_head(None)
    history.train_time_s = time.perf_counter() - started
    if on_epoch is not None and history.untrained:
        on_epoch(0, history.untrained)
    return history


def check_monitor(cfg: TrainConfig, val: Split) -> None:
    if len(val) == 0 and cfg.optim.monitor != "none":
        raise ValueError(f"there is no validation split (val_fraction={cfg.data.val_fraction}) to "
                         f"pick the best epoch by {cfg.optim.monitor}: use monitor=none to keep "
                         "the last epoch, or a val_fraction > 0")


def _moving_average(pair: nn.ModuleDict, cfg: TrainConfig) -> ModelEmaV3 | None:
    if cfg.optim.ema_decay <= 0:
        return None
    return ModelEmaV3(pair, decay=cfg.optim.ema_decay, use_warmup=cfg.optim.ema_warmup,
                      warmup_power=EMA_WARMUP_POWER)


def _step_module(pair: nn.ModuleDict, aux: AuxiliaryLoss | None, cfg: TrainConfig,
                 train: Split, dtype: torch.dtype | None, device: torch.device,
                 world: World) -> nn.Module:
    """The training step, inside DistributedDataParallel with several processes."""
    step_module: nn.Module = TrainStep(pair, aux, dtype, device.type)
    if world.distributed:  # a frozen backbone gives no gradients for its first epochs
        step_module = wrap(step_module, world, device, find_unused=cfg.optim.freeze_epochs > 0
                           or _any_unused(step_module, train, cfg, pair["loss"], device, world))
    return step_module


def train_epoch(state: LoopState, step_module: nn.Module, feed: EpochFeed, cfg: TrainConfig,
                epoch: int, device: torch.device, world: World) -> dict[str, float]:
    """One pass over the training split; its metrics summed over every process's share."""
    model, loss_fn = state.pair["model"], state.pair["loss"]
    state.drop_heads()
    model.train()
    loss_fn.train()
    frozen = freeze_backbone(model, epoch <= cfg.optim.freeze_epochs)
    started, seen, total_loss, parts = time.perf_counter(), 0, 0.0, {}
    epoch_input = EpochInput(feed.x, batches(feed.split, cfg, loss_fn, epoch, world), device,
                             feed.workers, seed=cfg.training_seed * 1000 + epoch)
    bar = tqdm(epoch_input, total=feed.steps,
               desc=f"epoch {epoch}/{cfg.optim.epochs}", unit="batch", leave=False,
               dynamic_ncols=True, disable=not world.is_main)
    for idx, xb in bar:
        yb = feed.split.y[idx].to(device, non_blocking=True)
        if feed.augment is not None:
            xb = feed.augment(xb)
        mixed = mix_batch(xb, yb, cfg.optim.mix, cfg.optim.mix_alpha, state.mix_rng)
        loss, batch_parts = training_step(state, step_module, mixed, cfg, epoch)
        seen += len(idx)
        total_loss += loss.item() * len(idx)
        for name, value in batch_parts.items():
            parts[name] = parts.get(name, 0.0) + float(value) * len(idx)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    elapsed = time.perf_counter() - started
    # sample-weighted loss sums (and samples seen) over every process's share
    sums = world.sum({"train_loss": total_loss, "samples": seen,
                      **{f"train_loss_{k}": v for k, v in parts.items()}})
    seen = int(sums.pop("samples"))
    opt = state.stepping.opt
    metrics = {
        "train_loss": sums.pop("train_loss") / max(1, seen),
        "lr": opt.inner.param_groups[0]["lr"],
        "samples_per_s": seen / max(elapsed, 1e-9),
        "epoch_time_s": elapsed,
        # time the step waited for its input: near 0, the input keeps up with the model
        "data_wait_s": epoch_input.wait_s,
    }
    metrics.update({k: v / max(1, seen) for k, v in sums.items()})
    if cfg.fine_tuning or cfg.optim.backbone_lr != 1.0 or cfg.optim.freeze_epochs:
        metrics["lr_backbone"] = 0.0 if frozen else max(
            (g["lr"] for g in backbone_groups(opt.inner)), default=0.0)
    return metrics


def training_step(state: LoopState, step_module: nn.Module, mixed: MixedBatch,
                  cfg: TrainConfig, epoch: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """One optimizer step on a batch (two passes with SAM), then the schedule and the moving
    average; returns the batch's loss and its parts."""
    st, model = state.stepping, state.pair["model"]

    def forward_backward() -> tuple[torch.Tensor, dict]:
        loss, parts = step_module(mixed.x, mixed.y_a, mixed.y_b, mixed.lam)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{cfg.loss.name} loss became {loss.item()} at epoch {epoch}; "
                "lower lr or check the data"
            )
        st.scaler.scale(loss).backward()
        if cfg.optim.grad_centralization:
            centralize_gradients(model.parameters())
        return loss.detach(), parts

    st.opt.outer.zero_grad(set_to_none=True)
    loss, parts = forward_backward()
    if st.opt.sam is not None:  # second pass at w + rho * g / |g|, then step from w
        st.opt.sam.first_step(zero_grad=True)
        with frozen_norm_stats(model):
            forward_backward()
    if cfg.optim.grad_clip > 0:
        st.scaler.unscale_(st.opt.outer)
        nn.utils.clip_grad_norm_(st.trained, cfg.optim.grad_clip)
    if st.opt.sam is not None:
        st.opt.sam.second_step()
    else:
        st.scaler.step(st.opt.outer)
    st.scaler.update()
    st.scheduler.step()
    state.step += 1
    if state.ema is not None:
        state.ema.update(state.pair, step=state.step)
    return loss, parts


def keep_if_best(state: LoopState, cfg: TrainConfig, value: float, epoch: int,
                 better: bool) -> None:
    """Record the epoch as the best when its monitored value is; count the epochs since."""
    history = state.history
    strictly = history.best_epoch == 0 or (value > history.best_value if better
                                           else value < history.best_value)
    state.since_best = 0 if strictly else state.since_best + 1
    # Ties keep the later epoch (further along the schedule, usually better converged)
    # but do not reset the early-stopping patience.
    if strictly or value == history.best_value:
        history.best_epoch, history.best_value = epoch, value
        if cfg.optim.monitor != "none":  # else the last epoch is kept: no copy needed
            state.evaluated["model"].set_head(None)
            state.best_state = copy.deepcopy(
                {k: v.cpu() for k, v in state.evaluated.state_dict().items()})


def finish(state: LoopState, cfg: TrainConfig) -> History:
    """Thaw the backbone and load the kept weights (the best epoch's, or the last epoch's
    moving average) into the model and loss."""
    freeze_backbone(state.pair["model"], False)
    state.drop_heads()
    best_state = state.best_state
    if cfg.optim.monitor == "none" and state.ema is not None:
        best_state = state.ema.module.state_dict()  # the last epoch's average
    if best_state is not None:
        state.pair.load_state_dict(best_state)
    return state.history


def freeze_backbone(model: EmbeddingModel, frozen: bool) -> bool:
    """Freeze (or thaw) the backbone: no gradients, and its BatchNorm layers keep their
    running statistics, so the new neck and head learn on stable features first."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return False
    backbone.requires_grad_(not frozen)
    if frozen:
        for module in backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    return frozen


def _any_unused(step: TrainStep, train: Split, cfg: TrainConfig, loss_fn: EmbeddingLoss,
                device: torch.device, world: World) -> bool:
    """Whether one training step leaves parameters without a gradient (rank 0 tries a real
    first batch on a copy and tells the others)."""
    unused = None
    if world.is_main:
        idx = next(batches(train, cfg, loss_fn, 1))
        xb, yb = batch_to(train.x, idx, device), train.y[idx].to(device)
        unused = [n.removeprefix("pair.") for n in unused_parameters(step, xb, yb, yb, 1.0)]
        if unused:
            log.info("%d parameter tensors take no part in the loss (%s%s): DDP looks for "
                     "unused parameters every step", len(unused), ", ".join(unused[:3]),
                     ", ..." if len(unused) > 3 else "")
    return bool(world.broadcast(unused))


def monitored(cfg: TrainConfig, metrics: dict[str, float], epoch: int, val_samples: int,
              num_classes: int) -> float:
    """The value that picks the best epoch: the monitor metric, or the epoch itself for
    ``monitor=none`` (the last epoch is kept). A metric that is absent or NaN is an error
    that says what to change, rather than a silent 'best epoch 1'."""
    if cfg.optim.monitor == "none":
        return float(epoch)
    value = metrics.get(cfg.optim.monitor)
    if value is None:
        raise ValueError(f"monitor={cfg.optim.monitor!r} is not a validation metric; "
                         "choose none or "
                         f"one of: {', '.join(k for k in metrics if k.startswith('val_'))}")
    if math.isnan(value):
        raise ValueError(
            f"monitor={cfg.optim.monitor} is NaN at epoch {epoch}: the validation split "
            f"({val_samples} samples of {num_classes} classes) is too small for it (retrieval "
            "metrics need two samples of a class); raise val_fraction, use "
            "monitor=val_accuracy, or monitor=none to keep the last epoch")
    return value
