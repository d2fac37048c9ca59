"""Weighted sums of losses: ``triplet+center:0.3`` trains on ``triplet + 0.3 * center``.

A spec is ``name[:weight]`` terms joined by ``+`` (weight 1 when left out). The sum feeds
P x K batches when any term needs them, and classifies with the first term that owns class
weights. Each term's own (unweighted) value is kept in ``last_components`` for the logs.
"""
from __future__ import annotations

import torch
from torch import nn

from zoo.losses.base import EmbeddingLoss


def parse_loss_spec(spec: str) -> list[tuple[str, float]]:
    """``"triplet+center:0.3"`` → ``[("triplet", 1.0), ("center", 0.3)]``; a plain name gives
    one term. Names are not checked here (``zoo.losses.check_loss`` does)."""
    terms: list[tuple[str, float]] = []
    for raw in spec.split("+"):
        name, sep, weight_text = raw.strip().partition(":")
        name = name.strip()
        if not name:
            raise ValueError(f"loss {spec!r} has an empty term; write e.g. triplet+center:0.3")
        try:
            weight = float(weight_text) if sep else 1.0
        except ValueError:
            raise ValueError(f"loss {spec!r}: weight {weight_text!r} of {name!r} is not a "
                             "number") from None
        if not weight > 0:
            raise ValueError(f"loss {spec!r}: weight of {name!r} must be > 0, got {weight}")
        terms.append((name, weight))
    names = [name for name, _ in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"loss {spec!r} names a loss twice; give one term a weight instead")
    return terms


class CombinedLoss(EmbeddingLoss):
    """``sum(weight_i * loss_i)`` over named terms."""

    def __init__(self, terms: dict[str, EmbeddingLoss], weights: dict[str, float]) -> None:
        first = next(iter(terms.values()))
        super().__init__(first.num_classes, first.embedding_dim)
        self.terms = nn.ModuleDict(terms)
        self.weights = dict(weights)
        self.needs_pk_batches = any(t.needs_pk_batches for t in terms.values())
        self.uses_norms = any(t.uses_norms for t in terms.values())
        self.outputs: dict[str, torch.Tensor] | None = None

    def _classifying_term(self) -> EmbeddingLoss | None:
        """The first term that owns class weights."""
        return next((t for t in self.terms.values() if t.has_classes), None)

    @property
    def has_classes(self) -> bool:
        return self._classifying_term() is not None

    @property
    def reads_outputs(self) -> frozenset[str]:
        return frozenset().union(*(t.reads_outputs for t in self.terms.values()))

    def forward(self, embedding: torch.Tensor, labels: torch.Tensor,
                norms: torch.Tensor | None = None,
                outputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        self.outputs = outputs  # for the terms that read the model's outputs
        try:
            return super().forward(embedding, labels, norms)
        finally:
            self.outputs = None

    def compute_loss(self, embedding: torch.Tensor, labels: torch.Tensor,
                     norms: torch.Tensor | None) -> torch.Tensor:
        total = embedding.new_zeros(())
        components = {}
        for name, term in self.terms.items():
            value = term(embedding, labels, norms if term.uses_norms else None, self.outputs)
            components[name] = float(value.detach())
            total = total + self.weights[name] * value
        self.last_components = components
        return total

    def compute_logits(self, embedding: torch.Tensor) -> torch.Tensor | None:
        term = self._classifying_term()
        return None if term is None else term.logits(embedding)

    def classifier(self) -> nn.Module | None:
        term = self._classifying_term()
        return None if term is None else term.classifier()

    def extra_repr(self) -> str:
        return " + ".join(f"{w:g} * {n}" for n, w in self.weights.items())
