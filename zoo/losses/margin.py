"""Additive-margin softmax losses on cosine logits: ArcFace, CosFace, Sub-center ArcFace,
AdaFace, CurricularFace.

Every one owns unit-norm class weights and trains ``scale * cos(theta)`` logits with a margin
on the target class; ``logits`` and ``classifier()`` give the same logits without the margin,
so the exported model classifies with a plain :class:`~zoo.models.heads.CosineClassifier`.

Defaults. Margins follow the papers (ArcFace 0.5 rad, CosFace 0.35, AdaFace 0.4,
CurricularFace 0.5). The scale is 30 rather than the papers' 64: those train on 10^4-10^5
identities, and the scale a softmax needs grows only like log(C) (AdaCos, Zhang et al.
2019), so a zoo that trains tens to hundreds of classes from scratch needs less; a smaller
scale also saturates the softmax later. Measured here (20 Gaussian classes, small MLP,
3 seeds): scales 16, 30 and 64 reach the same held-out accuracy (about 0.82 for every
margin loss), so 30 is a safe middle, not a tuned optimum; ``scale=64`` restores the papers.

ArcFace, CosFace and Sub-center ArcFace are pytorch-metric-learning's. Its quirks, handled
here: the ArcFace margin is given in DEGREES (we take radians and convert); the weight ``W`` is
``[D, C]`` (``[D, C * K]`` for sub-centers, columns ``c * K + k`` belong to class ``c``), so the
head gets ``W.t()``; ``cast_types`` casts ``W`` in place to the embedding dtype (we always pass
float32 so a bf16 batch cannot turn the weights bf16 for good); ``get_logits`` gives the
logits without margin (cosine * scale, max over sub-centers).

AdaFace and CurricularFace are written here in the same shape. They do not fit pml's
``LargeMarginSoftmaxLoss`` template cleanly: its ``modify_cosine_of_target_classes`` hook sees
only the target cosines, while AdaFace needs a per-sample margin from the feature norms and
CurricularFace re-weights the hard NON-target logits.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from torch import nn

from zoo.losses.registry import LOSSES
from zoo.losses.base import EmbeddingLoss
from zoo.models.heads import CosineClassifier

_ANGLE_EPS = 1e-7  # keeps acos' finite at cos = +-1

DEFAULT_SCALE = 30.0


class CosineMarginLoss(EmbeddingLoss):
    """Common part of the margin losses: cosine logits against ``[C * K, D]`` class weights."""

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: float,
        scale: float,
        subcenters: int = 1,
    ) -> None:
        super().__init__(num_classes, embedding_dim)
        self.margin = float(margin)
        self.scale = float(scale)
        self.subcenters = int(subcenters)

    def class_weights(self) -> torch.Tensor:
        """The class weights as ``[C * K, D]`` rows (not normalised)."""
        raise NotImplementedError

    def cosine(self, embedding: torch.Tensor) -> torch.Tensor:
        """``cos(embedding, W_c)``, ``[B, C]`` (max over sub-centers)."""
        cos = F.linear(F.normalize(embedding, dim=1), F.normalize(self.class_weights(), dim=1))
        if self.subcenters > 1:
            cos = cos.view(-1, self.num_classes, self.subcenters).amax(dim=2)
        return cos

    def compute_logits(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.cosine(embedding) * self.scale

    def classifier(self) -> nn.Module:
        return CosineClassifier.from_weights(
            self.class_weights(), scale=self.scale, subcenters=self.subcenters
        ).to(self.class_weights().device)

    def extra_repr(self) -> str:
        sub = f", subcenters={self.subcenters}" if self.subcenters > 1 else ""
        return f"{super().extra_repr()}, margin={self.margin}, scale={self.scale}{sub}"


# -- pytorch-metric-learning based ---------------------------------------------------------
class PmlMarginLoss(CosineMarginLoss):
    """Wraps a pml ``LargeMarginSoftmaxLoss`` subclass (weights ``W``: ``[D, C * K]``)."""

    def __init__(
        self,
        loss: pml_losses.LargeMarginSoftmaxLoss,
        num_classes: int,
        embedding_dim: int,
        margin: float,
        scale: float,
        subcenters: int = 1,
    ) -> None:
        super().__init__(num_classes, embedding_dim, margin, scale, subcenters)
        self.loss = loss

    def class_weights(self) -> torch.Tensor:
        return self.loss.W.t()

    def compute_loss(
        self, embedding: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None
    ) -> torch.Tensor:
        return self.loss(embedding, labels)

    def compute_logits(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.loss.get_logits(embedding)


@LOSSES.register()
def arcface(
    num_classes: int, embedding_dim: int, margin: float = 0.5, scale: float = DEFAULT_SCALE
) -> EmbeddingLoss:
    """ArcFace: additive angular margin, cos(theta + m) (margin in radians; pml)."""
    loss = pml_losses.ArcFaceLoss(
        num_classes=num_classes,
        embedding_size=embedding_dim,
        margin=math.degrees(margin),  # pml takes degrees
        scale=scale,
    )
    return PmlMarginLoss(loss, num_classes, embedding_dim, margin, scale)


@LOSSES.register()
def cosface(
    num_classes: int, embedding_dim: int, margin: float = 0.35, scale: float = DEFAULT_SCALE
) -> EmbeddingLoss:
    """CosFace: additive cosine margin, cos(theta) - m (pml)."""
    loss = pml_losses.CosFaceLoss(
        num_classes=num_classes, embedding_size=embedding_dim, margin=margin, scale=scale
    )
    return PmlMarginLoss(loss, num_classes, embedding_dim, margin, scale)


@LOSSES.register()
def subcenter_arcface(
    num_classes: int,
    embedding_dim: int,
    margin: float = 0.5,
    scale: float = DEFAULT_SCALE,
    subcenters: int = 3,
) -> EmbeddingLoss:
    """Sub-center ArcFace: K centers per class, robust to label noise (margin in radians; pml)."""
    loss = pml_losses.SubCenterArcFaceLoss(
        num_classes=num_classes,
        embedding_size=embedding_dim,
        margin=math.degrees(margin),
        scale=scale,
        sub_centers=subcenters,
    )
    return PmlMarginLoss(loss, num_classes, embedding_dim, margin, scale, subcenters)


# -- written here ---------------------------------------------------------------------------
class _OwnWeights(CosineMarginLoss):
    """Margin loss holding its own ``[C, D]`` weights (torch layout, not pml's)."""

    def __init__(
        self, num_classes: int, embedding_dim: int, margin: float, scale: float
    ) -> None:
        super().__init__(num_classes, embedding_dim, margin, scale)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight)  # only the direction matters

    def class_weights(self) -> torch.Tensor:
        return self.weight


class AdaFaceLoss(_OwnWeights):
    """AdaFace (Kim et al., CVPR 2022): the margin adapts to image quality.

    The feature norm (before L2 normalisation) is a proxy for quality. It is standardised
    with batch statistics tracked by EMA and scaled by ``h`` to ``s in [-1, 1]``; the target
    logit becomes ``cos(theta - m * s) - (m + m * s)``: high-norm (easy) samples get an
    ArcFace-like angular margin, low-norm (hard) ones a smaller, CosFace-like one, so
    unrecognisable samples are not over-fitted. Follows the authors' reference code.
    """

    uses_norms = True

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: float = 0.4,
        h: float = 0.333,
        t_alpha: float = 0.01,
        scale: float = DEFAULT_SCALE,
        eps: float = 1e-3,
    ) -> None:
        super().__init__(num_classes, embedding_dim, margin, scale)
        self.h = h
        self.t_alpha = t_alpha
        self.eps = eps
        # Initial values of the reference implementation.
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    def margin_scaler(self, norms: torch.Tensor) -> torch.Tensor:
        """``s = clip(h * (norm - mean) / (std + eps), -1, 1)``; updates the EMA in training."""
        safe = norms.detach().float().clamp(0.001, 100.0)
        if self.training:
            with torch.no_grad():
                mean = safe.mean()
                std = safe.std() if safe.numel() > 1 else torch.zeros_like(mean)
                self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * mean)
                self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * std)
        scaler = (safe - self.batch_mean) / (self.batch_std + self.eps)
        return (scaler * self.h).clamp(-1.0, 1.0)

    def compute_loss(
        self, embedding: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None
    ) -> torch.Tensor:
        if norms is None:
            norms = torch.ones(embedding.shape[0], device=embedding.device)
        s = self.margin_scaler(norms)
        cos = self.cosine(embedding)
        target = cos.gather(1, labels[:, None]).squeeze(1)
        theta = torch.acos(target.clamp(-1 + _ANGLE_EPS, 1 - _ANGLE_EPS))
        theta_m = (theta - self.margin * s).clamp(self.eps, math.pi - self.eps)
        target_m = torch.cos(theta_m) - (self.margin + self.margin * s)
        logits = cos.scatter(1, labels[:, None], target_m[:, None]) * self.scale
        return F.cross_entropy(logits, labels)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, h={self.h}, t_alpha={self.t_alpha}"


class CurricularFaceLoss(_OwnWeights):
    """CurricularFace (Huang et al., CVPR 2020): ArcFace plus a curriculum on hard negatives.

    A negative class ``j`` is hard when ``cos(theta_j) > cos(theta_y + m)``; its logit becomes
    ``cos_j * (t + cos_j)``, where ``t`` is an EMA of the mean target cosine. Early on ``t`` is
    small and hard negatives are down-weighted (easy samples first); as ``t`` grows they weigh
    more. Follows the authors' reference code (incl. the ``cos - m sin m`` fallback past
    ``pi - m``).
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: float = 0.5,
        scale: float = DEFAULT_SCALE,
        t_alpha: float = 0.01,
    ) -> None:
        super().__init__(num_classes, embedding_dim, margin, scale)
        self.t_alpha = t_alpha
        self.register_buffer("t", torch.tensor(0.0))

    def compute_loss(
        self, embedding: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None
    ) -> torch.Tensor:
        m = self.margin
        cos = self.cosine(embedding).clamp(-1.0, 1.0)
        target = cos.gather(1, labels[:, None])  # [B, 1]
        theta = torch.acos(target.clamp(-1 + _ANGLE_EPS, 1 - _ANGLE_EPS))
        cos_theta_m = torch.cos(theta + m)
        # Past pi - m, cos(theta + m) is no longer decreasing in theta: use a linear penalty.
        final_target = torch.where(
            target > math.cos(math.pi - m), cos_theta_m, target - math.sin(math.pi - m) * m
        )
        if self.training:
            with torch.no_grad():
                self.t.mul_(1 - self.t_alpha).add_(self.t_alpha * target.mean())
        hard = cos > cos_theta_m
        logits = torch.where(hard, cos * (self.t + cos), cos)
        logits = logits.scatter(1, labels[:, None], final_target) * self.scale
        return F.cross_entropy(logits, labels)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, t_alpha={self.t_alpha}"


@LOSSES.register()
def adaface(
    num_classes: int,
    embedding_dim: int,
    margin: float = 0.4,
    h: float = 0.333,
    t_alpha: float = 0.01,
    scale: float = DEFAULT_SCALE,
) -> EmbeddingLoss:
    """AdaFace: margin adapted per sample from the feature norm (image quality)."""
    return AdaFaceLoss(num_classes, embedding_dim, margin=margin, h=h, t_alpha=t_alpha, scale=scale)


@LOSSES.register()
def curricularface(
    num_classes: int,
    embedding_dim: int,
    margin: float = 0.5,
    scale: float = DEFAULT_SCALE,
    t_alpha: float = 0.01,
) -> EmbeddingLoss:
    """CurricularFace: ArcFace margin plus adaptive weighting of hard negatives (margin in radians).
    """
    return CurricularFaceLoss(
        num_classes, embedding_dim, margin=margin, scale=scale, t_alpha=t_alpha
    )
