"""The model every zoo entry returns: backbone → embedding neck → (optional) classifier head.

``forward(x)`` returns ``{"embedding": [B, D] L2-normalised, "logits": [B, C]}`` (logits only
when the model knows its classes). In training mode the dict also carries ``norm``, the
length of the embedding before normalisation, which AdaFace uses as an image-quality proxy.
What the model is (preprocessing, class names, build and training recipe, lineage) rides on
the module as its ``record`` (``zoo.record.ModelRecord``), so a pickled model is
self-describing, like timm's ``pretrained_cfg``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo import names
from zoo.models.heads import CosineClassifier
from zoo.record import ModelRecord


class EmbeddingNeck(nn.Module):
    """Dropout → Linear → BatchNorm1d: the usual 'BN-neck' of face recognition models."""

    def __init__(self, in_features: int, embedding_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, embedding_dim, bias=False)
        self.bn = nn.BatchNorm1d(embedding_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(self.dropout(features)))


class PartNeck(nn.Module):
    """One Linear → BatchNorm embedding per grid cell, each L2-normalised, concatenated
    (the part-based model of PCB, Sun et al. 2018). Takes a grid-pooled map flattened as
    ``[B, C * P]`` (channel-major, as ``GridPooledBackbone`` gives it)."""

    def __init__(self, in_features: int, parts: int, embedding_dim: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if in_features % parts or embedding_dim % parts:
            raise ValueError(f"{parts} parts need the feature width ({in_features}) and "
                             f"embedding_dim ({embedding_dim}) to be multiples of {parts}")
        self.parts, self.channels = parts, in_features // parts
        self.dropout = nn.Dropout(dropout)
        width = embedding_dim // parts
        bound = 1 / self.channels ** 0.5  # nn.Linear's initialisation, per part
        self.weight = nn.Parameter(torch.empty(parts, self.channels, width).uniform_(-bound, bound))
        self.bn = nn.BatchNorm1d(embedding_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cells = self.dropout(features).view(features.shape[0], self.channels, self.parts)
        raw = self.bn(torch.einsum("bcp,pcd->bpd", cells, self.weight).flatten(1))
        return F.normalize(raw.view(features.shape[0], self.parts, -1), dim=2).flatten(1)

    def extra_repr(self) -> str:
        return f"parts={self.parts}, channels={self.channels}, width={self.weight.shape[2]}"


class EmbeddingModel(nn.Module):
    """A backbone with an embedding neck (``neck``: a family's own, e.g. a pretrained
    model's embedding layer) and a cosine classifier head."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        embedding_dim: int,
        num_classes: int = 0,
        dropout: float = 0.0,
        modality: str = "image",
        name: str = "",
        parts: int = 1,
        neck: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        if neck is None:
            neck = (PartNeck(feature_dim, parts, embedding_dim, dropout) if parts > 1
                    else EmbeddingNeck(feature_dim, embedding_dim, dropout))
        self.neck: nn.Module = neck
        self.head: nn.Module | None = (
            CosineClassifier(num_classes, embedding_dim) if num_classes > 0 else None
        )
        self.embedding_dim = embedding_dim
        self.modality = modality
        self.record = ModelRecord(model=name, embedding_dim=embedding_dim)

    @property
    def zoo_meta(self) -> dict[str, Any]:
        """The record's dict form (what files and metadata hold); read ``record`` instead."""
        return self.record.to_dict()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A module pickled before records existed carries its record's dict under
        ``names.RECORD_KEY``: read it as one."""
        meta = state.pop(names.RECORD_KEY, None)
        super().__setstate__(state)
        if meta is not None and "record" not in state:
            self.record = ModelRecord.from_dict(meta)

    @property
    def num_classes(self) -> int:
        return int(getattr(self.head, "num_classes", getattr(self.head, "out_features", 0)) or 0)

    def set_head(self, head: nn.Module | None) -> None:
        """Replace the classifier (e.g. with a trained loss's weights or class prototypes)."""
        self.head = head

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raw = self.neck(self.backbone(x))
        embedding = F.normalize(raw.float(), dim=1)
        out = {"embedding": embedding}
        if self.head is not None:
            out["logits"] = self.head(embedding).float()
        if self.training:
            out["norm"] = raw.float().norm(dim=1)
        return out
