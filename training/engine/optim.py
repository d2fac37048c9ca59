"""The optimiser of a run: AdamW, optionally inside Lookahead and SAM (pytorch-optimizer).

``Optimizer.inner`` is the AdamW that really updates the weights: learning-rate schedules
attach to it, because SAM and Lookahead call its ``step`` from their own.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from pytorch_optimizer import SAM, Lookahead
from pytorch_optimizer.optimizer.gradient_centralization import centralize_gradient
from torch import nn

LOOKAHEAD_K = 5
LOOKAHEAD_ALPHA = 0.5


@dataclass
class Optimizer:
    """What the loop steps (``outer``), the AdamW inside it, and SAM when on."""

    outer: torch.optim.Optimizer
    inner: torch.optim.AdamW
    sam: SAM | None = None
    lookahead: Lookahead | None = None

    def state_dict(self) -> dict:
        """What outlives a step: AdamW's moments, and Lookahead's slow weights when on (SAM's
        perturbation only lives inside a step)."""
        return (self.lookahead or self.inner).state_dict()

    def load_state_dict(self, state: dict) -> None:
        (self.lookahead or self.inner).load_state_dict(state)


def make_optimizer(groups: list[dict], lr: float, sam_rho: float = 0.0,
                   lookahead: bool = False) -> Optimizer:
    """AdamW over ``groups``; Lookahead around it and SAM around that when asked."""
    made: dict[str, torch.optim.Optimizer] = {}

    def base(param_groups: list[dict], **kw) -> torch.optim.Optimizer:
        made["inner"] = torch.optim.AdamW(param_groups, **kw)
        if not lookahead:
            return made["inner"]
        made["lookahead"] = Lookahead(made["inner"], k=LOOKAHEAD_K, alpha=LOOKAHEAD_ALPHA)
        return made["lookahead"]

    if sam_rho > 0:
        sam = SAM(groups, base, rho=sam_rho, lr=lr)
        return Optimizer(sam, made["inner"], sam, made.get("lookahead"))
    outer = base(groups, lr=lr)
    return Optimizer(outer, made["inner"], lookahead=made.get("lookahead"))


def centralize_gradients(params: Iterable[nn.Parameter]) -> None:
    """Gradient centralisation: each weight gradient of 2+ dimensions loses its mean over
    all but the output dimension (biases and norms are left alone)."""
    grads = [p.grad for p in params if p.grad is not None and p.grad.ndim > 1]
    if grads:
        centralize_gradient(grads, gc_conv_only=False)


@contextlib.contextmanager
def frozen_norm_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm keeps its running statistics (SAM's second pass sees perturbed weights and
    the same batch: counting it twice would skew them)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
