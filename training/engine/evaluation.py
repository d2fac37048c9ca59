"""Embedding a split and the per-epoch validation: the trained loss's classifier (or class
prototypes), accuracy and retrieval on the validation split, and temperature calibration."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.data import Split, batch_to
from zoo.losses import EmbeddingLoss
from zoo.metrics import evaluate
from zoo.models import CosineClassifier, EmbeddingModel


@torch.no_grad()
def embed(
    model: nn.Module, x: Any, device: torch.device, batch_size: int = 256,
    dtype: torch.dtype | None = None, tta: str = "none",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Embeddings (and logits, if the model has a head) of a whole split, on the CPU.

    ``tta="flip"``: each image and its mirror image are embedded; the embedding is the
    normalised sum of both and the logits their mean.
    """
    model.eval()
    embs, logits = [], []
    for start in range(0, len(x), batch_size):
        xb = batch_to(x, torch.arange(start, min(start + batch_size, len(x))), device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(xb)
            emb = out["embedding"].float()
            logit = out["logits"].float() if "logits" in out else None
            if tta == "flip":
                flipped = model(torch.flip(xb, dims=[-1]))
                emb = F.normalize(emb + flipped["embedding"].float(), dim=1)
                if logit is not None:
                    logit = (logit + flipped["logits"].float()) / 2
            elif tta != "none":
                raise ValueError(f"tta={tta!r} is not one of none, flip")
        embs.append(emb.cpu())
        if logit is not None:
            logits.append(logit.cpu())
    return torch.cat(embs), (torch.cat(logits) if logits else None)


def build_head(
    model: EmbeddingModel, loss_fn: EmbeddingLoss, train: Split, device: torch.device,
    num_classes: int, tta: str = "none", prototypes: bool = False,
) -> nn.Module:
    """The trained loss's classifier, or class prototypes for pair losses (and with
    ``prototypes``: a loss that was never trained, ``epochs=0``)."""
    head = None if prototypes else loss_fn.classifier()
    if head is not None:
        return head
    model.set_head(None)
    train_emb, _ = embed(model, train.x, device, tta=tta)
    return CosineClassifier.from_prototypes(train_emb, train.y, num_classes)


def calibrate_scale(head: nn.Module, emb: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Temperature scaling of a cosine head on validation data (lowest NLL on a log grid).

    Only the scale changes, so predictions stay the same while probabilities become honest.
    Any head with a ``scale`` buffer qualifies (cosine heads, and part-based ones).
    """
    if not isinstance(getattr(head, "scale", None), torch.Tensor) or len(labels) == 0:
        return None
    with torch.no_grad():
        head.scale.fill_(1.0)
        cos = head(emb)
        grid = torch.logspace(0, math.log10(128), 60)
        nll = torch.stack([F.cross_entropy(cos * s, labels) for s in grid])
        best = float(grid[int(nll.argmin())])
        head.scale.fill_(best)
    return best


def validate(
    model: EmbeddingModel, loss_fn: EmbeddingLoss, train: Split, val: Split,
    device: torch.device, num_classes: int, dtype: torch.dtype | None, tta: str = "none",
    prototypes: bool = False,
) -> dict[str, float]:
    """Cheap per-epoch validation: accuracy and retrieval, no clustering or pair sweeps."""
    model.set_head(build_head(model, loss_fn, train, device, num_classes, tta,
                              prototypes).to(device))
    emb, logits = embed(model, val.x, device, dtype=dtype, tta=tta)
    return evaluate(emb, val.y, logits, prefix="val_", clustering=False, verification=False)
