"""Classifier heads: map an L2-normalised embedding to class logits.

Margin losses train the class weights; after training their weights are copied into a
standalone head (no margin at inference). Pair losses have no weights, so their head is
built from class prototypes (the mean training embedding of each class). Either way the
exported model classifies with the same small module. A part-based model (``parts=true``)
classifies with the mean of one head per part (``PartClassifier``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosineClassifier(nn.Module):
    """``scale * cos(embedding, W_c)``, max over ``subcenters`` per class."""

    def __init__(
        self, num_classes: int, embedding_dim: int, scale: float = 16.0, subcenters: int = 1
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.subcenters = subcenters
        self.weight = nn.Parameter(torch.randn(num_classes * subcenters, embedding_dim) * 0.01)
        self.register_buffer("scale", torch.tensor(float(scale)))

    @classmethod
    def from_weights(
        cls, weight: torch.Tensor, scale: float, subcenters: int = 1
    ) -> "CosineClassifier":
        """A head holding a detached copy of ``weight`` (``[C * K, D]``)."""
        rows, dim = weight.shape
        head = cls(rows // subcenters, dim, scale=scale, subcenters=subcenters)
        head.weight.data.copy_(weight.detach().float())
        return head

    @classmethod
    def from_prototypes(
        cls, embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int, scale: float = 16.0
    ) -> "CosineClassifier":
        """Class prototypes: the normalised mean embedding of each class."""
        protos = torch.zeros(num_classes, embeddings.shape[1], dtype=torch.float32)
        protos.index_add_(0, labels.long().cpu(), embeddings.detach().float().cpu())
        return cls.from_weights(F.normalize(protos, dim=1), scale=scale)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(embedding.float(), dim=1), F.normalize(self.weight, dim=1))
        if self.subcenters > 1:
            cos = cos.view(-1, self.num_classes, self.subcenters).amax(dim=2)
        return cos * self.scale

    def extra_repr(self) -> str:
        return f"classes={self.num_classes}, subcenters={self.subcenters}"


def split_parts(embedding: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """``[B, P * d]`` → P unit-norm ``[B, d]`` parts."""
    return [F.normalize(p, dim=1) for p in embedding.chunk(parts, dim=1)]


class PartClassifier(nn.Module):
    """The mean of the parts' heads; with cosine heads, ``scale * mean(cos)`` (one scale, so
    the trainer's temperature calibration applies to it as to any cosine head)."""

    def __init__(self, heads: list[nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.num_classes = int(getattr(heads[0], "num_classes",
                                       getattr(heads[0], "out_features", 0)))
        if all(isinstance(h, CosineClassifier) for h in heads):
            self.register_buffer("scale", heads[0].scale.detach().clone())
            for head in heads:
                head.scale.fill_(1.0)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        parts = split_parts(embedding.float(), len(self.heads))
        logits = torch.stack([head(p) for head, p in zip(self.heads, parts)]).mean(0)
        return logits * self.scale if hasattr(self, "scale") else logits
