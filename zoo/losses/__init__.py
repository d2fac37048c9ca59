"""Every loss behind one interface: ``create_loss(name, num_classes, embedding_dim, **kw)``.

Losses register themselves with ``@LOSSES.register()`` on a factory function named after
the loss (timm style). ``create_loss`` passes each factory only the keyword arguments it
accepts, so a sweep can hand the same ``margin=...`` to every loss.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any

# Importing the families registers them (they import LOSSES from zoo.losses.registry).
from zoo.losses import margin, pair, classifier, reconstruction  # noqa: F401  (this order)
from zoo.losses.base import EmbeddingLoss
from zoo.losses.combined import CombinedLoss, parse_loss_spec
from zoo.losses.parts import PartLoss
from zoo.losses.registry import LOSSES

log = logging.getLogger(__name__)


def check_loss(spec: str) -> list[tuple[str, float]]:
    """The terms of a loss name or ``a+b:0.3`` spec, each checked to exist (an unknown name
    raises :class:`zoo.registry.UnknownNameError` listing the choices)."""
    terms = parse_loss_spec(spec)
    for name, _ in terms:
        LOSSES.get(name)
    return terms


def needed_outputs(spec: str) -> frozenset[str]:
    """The model outputs a loss spec reads besides the embedding (its terms' union)."""
    return frozenset().union(*(getattr(LOSSES.get(term).factory, "needs_outputs", frozenset())
                               for term, _ in check_loss(spec)))


def loss_parameters(spec: str) -> set[str]:
    """The keyword parameters the loss (each term of a combined one) takes."""
    names: set[str] = set()
    for term, _ in check_loss(spec):
        names |= set(inspect.signature(LOSSES.get(term).factory).parameters)
    return names


def create_loss(name: str, num_classes: int, embedding_dim: int, parts: int = 1,
                **kw: Any) -> EmbeddingLoss:
    """Build loss ``name`` (or a weighted sum, ``triplet+center:0.3``); kwargs that are None
    or that a loss does not take are dropped. ``parts > 1``: the loss of a part-based
    embedding, one loss of width ``embedding_dim / parts`` per part (``PartLoss``).

    Unknown names raise :class:`zoo.registry.UnknownNameError` listing the choices.
    """
    terms = check_loss(name)
    if len(terms) > 1 or terms[0][1] != 1.0:
        losses = {term: create_loss(term, num_classes, embedding_dim, parts, **kw)
                  for term, _ in terms}
        return CombinedLoss(losses, dict(terms))
    if parts > 1:
        if embedding_dim % parts:
            raise ValueError(f"embedding_dim={embedding_dim} does not split into {parts} "
                             "equal parts")
        return PartLoss([create_loss(name, num_classes, embedding_dim // parts, **kw)
                         for _ in range(parts)])
    entry = LOSSES.get(name)
    params = inspect.signature(entry.factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted: dict[str, Any] = {}
    for key, value in kw.items():
        if value is None:
            continue
        if takes_any or key in params:
            accepted[key] = value
        else:
            log.debug("loss %r takes no %r; ignoring %s=%r", name, key, key, value)
    return entry.factory(num_classes=num_classes, embedding_dim=embedding_dim, **accepted)


__all__ = ["LOSSES", "create_loss", "check_loss", "needed_outputs", "CombinedLoss", "EmbeddingLoss",
           "PartLoss"]
