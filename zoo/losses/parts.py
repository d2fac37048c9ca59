"""The same loss on every part of a part-based embedding (PCB, Sun et al., ECCV 2018).

A part-based model (``parts=true``: one embedding per grid cell, see
``zoo.models.embedding.PartNeck``) embeds an image as P unit-norm parts concatenated and
scaled by 1/√P. Each part gets a loss of its own, with its own class weights, and the
loss is their mean: every cell must tell the identities apart by itself, so no single region
(the hair, the background) carries the embedding. Classifying averages the parts' logits.
"""
from __future__ import annotations

import torch
from torch import nn

from zoo.losses.base import EmbeddingLoss
# The heads live with the model's other heads; imported here under their old home too, which
# modules pickled before the move name.
from zoo.models.heads import PartClassifier, split_parts

__all__ = ["PartClassifier", "PartLoss", "split_parts"]


class PartLoss(EmbeddingLoss):
    """``mean_p loss_p(part_p)`` over the parts of the embedding."""

    def __init__(self, terms: list[EmbeddingLoss]) -> None:
        first = terms[0]
        if first.needs_outputs:
            raise ValueError(f"{type(first).__name__} reconstructs a whole input, which no part "
                             "does; use parts=false")
        if first.uses_norms:
            raise ValueError(f"{type(first).__name__} reads the embedding's length before "
                             "normalisation, which a part-based embedding does not have; "
                             "use another loss or parts=false")
        super().__init__(first.num_classes, first.embedding_dim * len(terms))
        self.terms = nn.ModuleList(terms)
        self.needs_pk_batches = first.needs_pk_batches

    @property
    def has_classes(self) -> bool:
        return self.terms[0].has_classes

    def compute_loss(self, embedding: torch.Tensor, labels: torch.Tensor,
                     norms: torch.Tensor | None) -> torch.Tensor:
        parts = split_parts(embedding, len(self.terms))
        return torch.stack([term(p, labels) for term, p in zip(self.terms, parts)]).mean()

    def compute_logits(self, embedding: torch.Tensor) -> torch.Tensor | None:
        if not self.has_classes:
            return None
        parts = split_parts(embedding, len(self.terms))
        return torch.stack([t.logits(p) for t, p in zip(self.terms, parts)]).mean(0)

    def classifier(self) -> nn.Module | None:
        if not self.has_classes:
            return None
        return PartClassifier([term.classifier() for term in self.terms])

    def extra_repr(self) -> str:
        return f"parts={len(self.terms)}"
