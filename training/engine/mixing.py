"""MixUp and CutMix for losses that take hard labels.

timm's ``Mixup`` mixes one-hot targets, which margin losses (ArcFace & co.) cannot take; here
the batch is mixed and the loss is the same mix of the loss on either label,
``lam * L(e, y_a) + (1 - lam) * L(e, y_b)``, which equals cross-entropy on mixed targets for
softmax and extends to every loss with class weights. The CutMix box comes from timm.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from timm.data.mixup import cutmix_bbox_and_lam

MODES = ("none", "mixup", "cutmix")


@dataclass
class MixedBatch:
    """Inputs mixed with a permutation of themselves; ``lam`` is the share of ``y_a``."""

    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: float


def mix_batch(x: torch.Tensor, y: torch.Tensor, mode: str, alpha: float,
              rng: np.random.Generator) -> MixedBatch:
    """Mix ``x`` with ``x[perm]``: blend the pixels (mixup) or paste a box (cutmix).

    For cutmix, ``lam`` is corrected to the area that really stayed from ``x``.
    """
    if mode not in MODES:
        raise ValueError(f"mix={mode!r} is not one of {', '.join(MODES)}")
    if mode == "none" or len(x) < 2:
        return MixedBatch(x, y, y, 1.0)
    lam = float(rng.beta(alpha, alpha))
    perm = torch.as_tensor(rng.permutation(len(x)), device=x.device)
    if mode == "mixup":
        return MixedBatch(lam * x + (1 - lam) * x[perm], y, y[perm], lam)
    if x.dim() != 4:
        raise ValueError(f"mix=cutmix needs images [B, C, H, W], got shape {tuple(x.shape)}; "
                         "use mix=mixup for tabular rows")
    (top, bottom, left, right), lam = cutmix_bbox_and_lam(x.shape, lam, correct_lam=True)
    mixed = x.clone()
    mixed[:, :, top:bottom, left:right] = x[perm][:, :, top:bottom, left:right]
    return MixedBatch(mixed, y, y[perm], float(lam))
