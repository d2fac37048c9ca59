"""The one interface every loss implements.

A loss is called as ``loss(embedding, labels, norms=None)`` on L2-normalised embeddings and
returns a scalar. Losses that own class weights also give class logits without the margin
(``logits``) and a standalone head for the exported model (``classifier``); pair losses give
neither, and the trainer builds a head from class prototypes instead.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class EmbeddingLoss(nn.Module):
    """Base class: float32 computation, optional logits and classifier head.

    Subclasses implement ``compute_loss`` (and ``compute_logits`` / ``classifier`` when they
    own class weights). ``forward`` and ``logits`` cast to float32 and switch autocast off
    first, because margin logits (``scale * cos(theta + m)``, ``acos`` near 1) overflow or turn
    NaN in fp16/bf16.
    """

    #: The trainer must feed class-balanced P x K batches (pair losses need positives).
    needs_pk_batches: ClassVar[bool] = False
    #: ``forward`` uses ``norms`` (the feature norm before L2 normalisation).
    uses_norms: ClassVar[bool] = False
    #: The model's training outputs ``forward`` reads through ``compute_output_loss`` instead
    #: of the embedding (an autoencoder's ``reconstruction``, ...); empty for most losses.
    needs_outputs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, num_classes: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        #: Parts of the last loss value, for losses that are a sum of parts; {} otherwise.
        self.last_components: dict[str, float] = {}

    def forward(
        self,
        embedding: torch.Tensor,
        labels: torch.Tensor,
        norms: torch.Tensor | None = None,
        outputs: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Scalar loss of a batch of L2-normalised embeddings ``[B, D]`` with labels ``[B]``
        (``outputs``: the model's whole output dict, for losses that ``needs_outputs``)."""
        with torch.autocast(embedding.device.type, enabled=False):
            if self.needs_outputs:
                return self.compute_output_loss(outputs or {})
            return self.compute_loss(
                embedding.float(),
                labels.long(),
                None if norms is None else norms.float(),
            )

    @property
    def reads_outputs(self) -> frozenset[str]:
        """The model outputs this loss (or a term of it) reads besides the embedding."""
        return self.needs_outputs

    @property
    def has_classes(self) -> bool:
        """Whether the loss owns class weights (gives logits and a classifier head)."""
        return type(self).classifier is not EmbeddingLoss.classifier

    def logits(self, embedding: torch.Tensor) -> torch.Tensor | None:
        """Class logits ``[B, C]`` without the margin, or None for losses without classes."""
        with torch.autocast(embedding.device.type, enabled=False):
            return self.compute_logits(embedding.float())

    def classifier(self) -> nn.Module | None:
        """A standalone head with a detached copy of the class weights (None: no weights).

        ``classifier()(embedding)`` equals ``logits(embedding)``.
        """
        return None

    # -- to implement --------------------------------------------------------------------
    def compute_loss(
        self, embedding: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None
    ) -> torch.Tensor:
        """The loss on float32 inputs, autocast off."""
        raise NotImplementedError

    def compute_logits(self, embedding: torch.Tensor) -> torch.Tensor | None:
        """Logits without margin on float32 inputs, autocast off; None when no classes."""
        return None

    def compute_output_loss(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss from the model's outputs, for losses that ``needs_outputs``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"classes={self.num_classes}, dim={self.embedding_dim}"
