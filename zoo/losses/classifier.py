"""Losses on a plain linear classifier: softmax cross-entropy, focal, center.

The baselines the margin losses are measured against. The classifier is an ``nn.Linear``
on the normalised embedding; ``classifier()`` hands a copy of it to the exported model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.losses.registry import LOSSES
from zoo.losses.base import EmbeddingLoss


class LinearClassifierLoss(EmbeddingLoss):
    """A loss that trains an ``nn.Linear(D, C)`` classifier."""

    def __init__(self, num_classes: int, embedding_dim: int) -> None:
        super().__init__(num_classes, embedding_dim)
        self.fc = nn.Linear(embedding_dim, num_classes)

    def compute_logits(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.fc(embedding)

    def classifier(self) -> nn.Module:
        head = nn.Linear(self.embedding_dim, self.num_classes)
        head.load_state_dict(self.fc.state_dict())  # copies: later training leaves it alone
        return head.to(self.fc.weight.device)


class SoftmaxLoss(LinearClassifierLoss):
    """Cross-entropy on linear logits, with optional label smoothing."""

    def __init__(self, num_classes: int, embedding_dim: int, label_smoothing: float = 0.0) -> None:
        super().__init__(num_classes, embedding_dim)
        self.label_smoothing = label_smoothing

    def compute_loss(
        self, embedding: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None
    ) -> torch.Tensor:
        return F.cross_entropy(
            self.fc(embedding), labels, label_smoothing=self.label_smoothing
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, label_smoothing={self.label_smoothing}"


class FocalLoss(LinearClassifierLoss):
    """Focal loss (Lin et al. 2017): ``-(1 - p_t)^gamma log p_t``.

    Down-weights samples the classifier already gets right, so training time goes to the
    hard and rare ones; ``gamma = 0`` is plain cross-entropy.
    """

    def __init__(self, num_classes: int, embedding_dim: int, gamma: float = 2.0) -> None:
        super().__init__(num_classes, embedding_dim)
        self.gamma = gamma

    def compute_loss(
        self, embedding: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None
    ) -> torch.Tensor:
        log_p = F.log_softmax(self.fc(embedding), dim=1).gather(1, labels[:, None]).squeeze(1)
        p = log_p.exp()
        return (-((1.0 - p) ** self.gamma) * log_p).mean()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma}"


class CenterLoss(LinearClassifierLoss):
    """Softmax cross-entropy + ``center_weight`` * center loss (Wen et al., ECCV 2016).

    Cross-entropy separates the classes; the center term
    ``1/2 ||x_i - c_{y_i}||^2`` (mean over the batch) pulls each embedding to a learned
    center of its class, making classes compact, which retrieval rewards. The centers are a
    parameter trained by the same optimiser (instead of the paper's separate update rule).
    """

    def __init__(self, num_classes: int, embedding_dim: int, center_weight: float = 0.1) -> None:
        super().__init__(num_classes, embedding_dim)
        self.center_weight = center_weight
        # Zeros: the first gradient steps move every center towards its class mean.
        self.centers = nn.Parameter(torch.zeros(num_classes, embedding_dim))

    def compute_loss(
        self, embedding: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None
    ) -> torch.Tensor:
        ce = F.cross_entropy(self.fc(embedding), labels)
        center = 0.5 * (embedding - self.centers[labels]).pow(2).sum(dim=1).mean()
        self.last_components = {"softmax": float(ce.detach()), "center": float(center.detach())}
        return ce + self.center_weight * center

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, center_weight={self.center_weight}"


@LOSSES.register()
def softmax(num_classes: int, embedding_dim: int, label_smoothing: float = 0.0) -> EmbeddingLoss:
    """Softmax cross-entropy on a linear classifier (the baseline)."""
    return SoftmaxLoss(num_classes, embedding_dim, label_smoothing=label_smoothing)


@LOSSES.register()
def focal(num_classes: int, embedding_dim: int, gamma: float = 2.0) -> EmbeddingLoss:
    """Focal loss on a linear classifier: focuses on hard, misclassified samples."""
    return FocalLoss(num_classes, embedding_dim, gamma=gamma)


@LOSSES.register()
def center(num_classes: int, embedding_dim: int, center_weight: float = 0.1) -> EmbeddingLoss:
    """Softmax cross-entropy plus center loss: pulls each class to a compact center."""
    return CenterLoss(num_classes, embedding_dim, center_weight=center_weight)
