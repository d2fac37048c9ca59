"""One training step as a module: the model, its loss and any auxiliary terms, whose forward
is the step's loss (what DistributedDataParallel wraps)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class AuxiliaryLoss(nn.Module):
    """Extra loss terms that need the input batch, not only the embedding (distillation).

    ``forward(x, out)`` returns each term's unweighted value; ``weights`` scales them into
    the loss. Its parameters (a projection, say) are trained with the model.
    """

    weights: dict[str, float]

    def forward(self, x: torch.Tensor, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class TrainStep(nn.Module):
    """The model, its loss and any auxiliary terms as one module whose forward is a training
    step's loss: what DistributedDataParallel wraps, so the gradients of all of them (a
    margin loss's class weights too) are averaged over the processes."""

    def __init__(self, pair: nn.ModuleDict, aux: AuxiliaryLoss | None,
                 dtype: torch.dtype | None, device_type: str) -> None:
        super().__init__()
        self.pair, self.aux = pair, aux
        self.dtype, self.device_type = dtype, device_type

    def forward(self, x: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor,
                lam: float) -> tuple[torch.Tensor, dict[str, Any]]:
        model, loss_fn = self.pair["model"], self.pair["loss"]
        with torch.autocast(self.device_type, dtype=self.dtype or torch.float32,
                            enabled=self.dtype is not None):
            out = model(x)
        norms = out["norm"] if loss_fn.uses_norms else None
        emb = out["embedding"].float()
        loss = lam * loss_fn(emb, y_a, norms=norms, outputs=out)
        parts = {k: lam * v for k, v in loss_fn.last_components.items()}
        if lam < 1:
            loss = loss + (1 - lam) * loss_fn(emb, y_b, norms=norms, outputs=out)
            for k, v in loss_fn.last_components.items():
                parts[k] = parts.get(k, 0.0) + (1 - lam) * v
        if self.aux is not None:
            for name, value in self.aux(x, out).items():
                loss = loss + self.aux.weights[name] * value
                parts[name] = float(value.detach())
        return loss, parts
