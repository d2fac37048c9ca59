"""Pair and triplet losses: triplet (+ miner), SupCon, NT-Xent (pytorch-metric-learning).

NT-Xent is pml's loss re-computed on the similarity matrix (see ``MatrixNTXentLoss``).

They compare embeddings within a batch and own no class weights, so they need several
samples per class in every batch (``needs_pk_batches``: the trainer then samples P classes
x K images), give no logits and no classifier: after training the trainer builds a cosine
head from class prototypes. All use cosine similarity, which on L2-normalised embeddings is
what the retrieval metrics and the prototype head measure.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.losses.generic_pair_loss import GenericPairLoss
from torch import nn

from zoo.losses.registry import LOSSES
from zoo.losses.base import EmbeddingLoss

MINERS = ("semihard", "batch_hard", "all")


class PairLoss(EmbeddingLoss):
    """A pml loss, optionally fed by a pml miner that picks the informative tuples."""

    needs_pk_batches = True

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        loss: nn.Module,
        mining: nn.Module | None = None,
        hparams: dict[str, object] | None = None,
    ) -> None:
        super().__init__(num_classes, embedding_dim)
        self.loss = loss
        self.mining = mining
        self.hparams = dict(hparams or {})
        for key, value in self.hparams.items():  # e.g. loss.margin, loss.miner (its name)
            setattr(self, key, value)

    def compute_loss(
        self, embedding: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None
    ) -> torch.Tensor:
        indices = self.mining(embedding, labels) if self.mining is not None else None
        return self.loss(embedding, labels, indices)

    def extra_repr(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.hparams.items())
        return f"{super().extra_repr()}, {params}"


def _triplet_miner(miner: str, margin: float) -> nn.Module | None:
    if miner == "semihard":
        # pml's "semihard": d(a, n) within margin of d(a, p) but not closer than the positive.
        return pml_miners.TripletMarginMiner(
            margin=margin, type_of_triplets="semihard", distance=CosineSimilarity()
        )
    if miner == "batch_hard":
        return pml_miners.BatchHardMiner(distance=CosineSimilarity())
    if miner == "all":
        return None  # pml's TripletMarginLoss then uses every valid triplet in the batch
    raise ValueError(f"unknown triplet miner {miner!r}; choose from: {', '.join(MINERS)}")


@LOSSES.register()
def triplet(
    num_classes: int, embedding_dim: int, margin: float = 0.2, miner: str = "semihard"
) -> EmbeddingLoss:
    """Triplet margin loss on cosine similarity with a miner (semihard, batch_hard, all)."""
    loss = pml_losses.TripletMarginLoss(margin=margin, distance=CosineSimilarity())
    return PairLoss(
        num_classes,
        embedding_dim,
        loss,
        _triplet_miner(miner, margin),
        {"margin": margin, "miner": miner},
    )


@LOSSES.register()
def supcon(num_classes: int, embedding_dim: int, temperature: float = 0.1) -> EmbeddingLoss:
    """Supervised contrastive loss (Khosla et al. 2020): all same-label pairs are positives."""
    loss = pml_losses.SupConLoss(temperature=temperature, distance=CosineSimilarity())
    return PairLoss(num_classes, embedding_dim, loss, hparams={"temperature": temperature})


class MatrixNTXentLoss(GenericPairLoss):
    """pml's ``NTXentLoss``, computed on the similarity matrix: same value, O(B^2) memory.

    pml's version builds a (positive pairs x negative pairs) matrix, about B^3 K / C
    elements: 0.3 s a step at B = 128 and 4.5 s at B = 256 on 2 CPU cores. Per positive pair
    ``(a, p)`` the loss is ``-log(e^{s_ap/t} / (e^{s_ap/t} + sum_n e^{s_an/t}))``
    ``= softplus(logsumexp_n(s_an/t) - s_ap/t)``, and the log-sum-exp over an anchor's
    negatives needs only the B x B matrix. Reduced like pml's (mean over positive pairs).
    """

    def __init__(self, temperature: float = 0.1, **kwargs: object) -> None:
        super().__init__(mat_based_loss=True, **kwargs)
        self.temperature = temperature
        self.add_to_recordable_attributes(list_of_names=["temperature"], is_stat=False)

    def _compute_loss(
        self, mat: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor
    ) -> dict:
        if not self.distance.is_inverted:  # a distance: smaller is more similar
            mat = -mat
        mat = mat / self.temperature
        a1, p = torch.nonzero(pos_mask, as_tuple=True)
        if len(a1) == 0 or not bool(neg_mask.any()):
            return self.zero_losses()
        # Finite fill (not -inf): an anchor without negatives then gives loss 0, grad 0, no NaN.
        neg = mat.masked_fill(neg_mask == 0, torch.finfo(mat.dtype).min)
        neg_lse = torch.logsumexp(neg, dim=1)
        losses = F.softplus(neg_lse[a1] - mat[a1, p])
        return {"loss": {"losses": losses, "indices": (a1, p), "reduction_type": "pos_pair"}}

    def get_default_distance(self) -> CosineSimilarity:
        return CosineSimilarity()


@LOSSES.register()
def ntxent(num_classes: int, embedding_dim: int, temperature: float = 0.1) -> EmbeddingLoss:
    """NT-Xent (InfoNCE) with labels: each same-label pair is a positive against the negatives."""
    loss = MatrixNTXentLoss(temperature=temperature, distance=CosineSimilarity())
    return PairLoss(num_classes, embedding_dim, loss, hparams={"temperature": temperature})
