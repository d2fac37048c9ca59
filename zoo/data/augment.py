"""Batch-wise image augmentation on tensors, on whatever device the batch lives.

One random affine per sample (rotation, scale, translation, optional horizontal flip) is
applied with a single ``affine_grid``/``grid_sample``, then optional random erasing; no PIL
round trip, so it runs on the GPU beside the model. Random parameters are drawn on the CPU
generator, so ``torch.manual_seed`` gives the same augmentation on any device.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

PRESETS: dict[str, dict[str, Any]] = {
    "none": dict(strength=0.0),
    # flipped digits are other digits (or nonsense): no flip
    "digits": dict(rotation=12.0, scale=(0.9, 1.1), translate=0.1, hflip=False, erase_prob=0.0),
    # faces are roughly mirror-symmetric; erasing mimics occlusion (glasses, hands)
    "faces": dict(rotation=10.0, scale=(0.9, 1.1), translate=0.08, hflip=True, erase_prob=0.25),
    "default": dict(rotation=10.0, scale=(0.9, 1.1), translate=0.1, hflip=False, erase_prob=0.0),
}


class ImageAugment(nn.Module):
    """Random affine + optional flip + optional erasing for ``[B, C, H, W]``; identity in eval.

    ``strength`` scales rotation, translation, the scale range's distance from 1 and the
    erasing probability (0 switches everything off). Inputs are normalised, so pixels that
    come from outside the image repeat the border and erased boxes are 0 (the mean).
    """

    def __init__(
        self,
        rotation: float = 10.0,
        scale: tuple[float, float] = (0.9, 1.1),
        translate: float = 0.1,
        hflip: bool = False,
        erase_prob: float = 0.0,
        erase_area: tuple[float, float] = (0.02, 0.2),
        strength: float = 1.0,
        padding_mode: str = "border",
    ) -> None:
        super().__init__()
        if strength < 0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        self.rotation = float(rotation)
        self.scale = (float(scale[0]), float(scale[1]))
        self.translate = float(translate)
        self.hflip = bool(hflip)
        self.erase_prob = float(erase_prob)
        self.erase_area = (float(erase_area[0]), float(erase_area[1]))
        self.strength = float(strength)
        self.padding_mode = padding_mode

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ImageAugment":
        """``digits`` (no flip), ``faces`` (flip + erasing), ``default`` or ``none``."""
        if name not in PRESETS:
            raise ValueError(f"unknown augmentation preset {name!r}; choose from {list(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def extra_repr(self) -> str:
        return (
            f"rotation={self.rotation}, scale={self.scale}, translate={self.translate}, "
            f"hflip={self.hflip}, erase_prob={self.erase_prob}, strength={self.strength}"
        )

    def _theta(self, b: int, h: int, w: int) -> torch.Tensor:
        """Per-sample 2x3 matrices (output -> input coordinates in [-1, 1])."""
        s = self.strength
        u = torch.rand(b, 5)  # angle, scale, tx, ty, flip
        angle = (u[:, 0] * 2 - 1) * math.radians(self.rotation * s)
        lo, hi = (1 + (self.scale[0] - 1) * s, 1 + (self.scale[1] - 1) * s)
        zoom = lo + u[:, 1] * (hi - lo)
        shift = (u[:, 2:4] * 2 - 1) * (2 * self.translate * s)  # fraction of size -> [-1, 1]
        flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if self.hflip else torch.ones(b)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.zeros(b, 2, 3)
        # rotation in pixel space: correct the off-diagonal terms for the aspect ratio
        theta[:, 0, 0] = cos * flip
        theta[:, 0, 1] = -sin * (h / w)
        theta[:, 1, 0] = sin * (w / h) * flip
        theta[:, 1, 1] = cos
        theta[:, :, 2] = shift
        return theta

    def _erase_mask(self, b: int, h: int, w: int) -> torch.Tensor:
        """``[B, 1, H, W]`` True inside each sample's erased box (none for most samples)."""
        u = torch.rand(b, 5)  # apply, area, log-aspect, top, left
        apply = u[:, 0] < min(1.0, self.erase_prob * self.strength)
        area = (self.erase_area[0] + u[:, 1] * (self.erase_area[1] - self.erase_area[0])) * h * w
        aspect = torch.exp((u[:, 2] * 2 - 1) * math.log(3.0))
        bh = (area * aspect).sqrt().clamp(1, h)
        bw = (area / aspect).sqrt().clamp(1, w)
        top = u[:, 3] * (h - bh)
        left = u[:, 4] * (w - bw)
        rows = torch.arange(h).view(1, h, 1)
        cols = torch.arange(w).view(1, 1, w)
        inside = (
            (rows >= top.view(b, 1, 1)) & (rows < (top + bh).view(b, 1, 1))
            & (cols >= left.view(b, 1, 1)) & (cols < (left + bw).view(b, 1, 1))
        )
        return (inside & apply.view(b, 1, 1)).unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.strength == 0 or x.numel() == 0:
            return x
        if x.dim() != 4:
            raise ValueError(f"ImageAugment expects [B, C, H, W], got shape {tuple(x.shape)}")
        b, _, h, w = x.shape
        theta = self._theta(b, h, w).to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode=self.padding_mode,
                            align_corners=False)
        if self.erase_prob > 0:
            mask = self._erase_mask(b, h, w).to(x.device)
            out = out.masked_fill(mask, 0.0)
        return out
